"""Command line: `python -m serving up|down|try|materialise|triton|repository`.

python -m serving up --config configs/serving/synthetic_demo.yaml [--encoder onnx] [--detach]
python -m serving try --config configs/serving/synthetic_demo.yaml   # a few real answers
python -m serving down --config configs/serving/synthetic_demo.yaml
python -m serving materialise --data artifacts/data/synthetic_demo --output DIR [--redis URL]
python -m serving triton --repository DIR              # a real Triton server, until Ctrl-C
python -m serving repository --onnx user_tower.onnx --output DIR   # Triton model repositories

Every field of the serving config is a flag (`--field VALUE`, `--triton.protocol http`, as
training's LightningCLI). Exit codes as in common.errors.
"""

from __future__ import annotations

import json
import sys

from jsonargparse import ArgumentParser

from common import config, errors
from common.logs import setup_logging
from serving.config import ServingConfig


def _config_parser(description: str) -> ArgumentParser:
    p = ArgumentParser(description=description)
    config.add_config_arguments(p, ServingConfig)
    return p


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m serving", description=__doc__, exit_on_error=False)
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subcommands(dest="command")
    sub.add_subcommand(
        "up", _up_parser(), help="feature store + user tower (Triton) + HTTP service"
    )
    sub.add_subcommand("down", _config_parser("stop a service started with up --detach"))
    sub.add_subcommand("try", _try_parser())
    sub.add_subcommand("materialise", _materialise_parser())
    sub.add_subcommand("triton", _triton_parser())
    sub.add_subcommand("repository", _repository_parser())
    return parser


def _up_parser() -> ArgumentParser:
    """`up`: the serving config, and whether to run in the background."""
    u = _config_parser("feature store + user tower (Triton) + HTTP service")
    u.add_argument("--detach", action="store_true", help="run in the background; return when ready")
    u.add_argument("--wait", type=float, default=180.0, help="seconds to wait for ready (--detach)")
    return u


def _try_parser() -> ArgumentParser:
    """`try`: the serving config, and how many answers to show and send."""
    t = _config_parser("ask a running service for a few real users' recommendations")
    t.add_argument("--users", type=int, default=3, help="how many users with a history to show")
    t.add_argument("-k", type=int, default=5)
    t.add_argument("--traffic", type=int, default=0,
                   help="then this many more fans' /recommend (k 10), quietly: traffic for the "
                   "answer log the relevance monitor reads")  # fmt: skip
    return t


def _materialise_parser() -> ArgumentParser:
    """`materialise`: its arguments are serving.features.materialise's."""
    from serving.features.materialise import add_materialise_arguments

    m = ArgumentParser(description="the online feature store from a prepared dataset")
    add_materialise_arguments(m)
    return m


def _triton_parser() -> ArgumentParser:
    """`triton`: its arguments are serving.triton.server's."""
    from serving.triton.server import add_triton_arguments

    s = ArgumentParser(description="run a real Triton server")
    add_triton_arguments(s)
    return s


def _repository_parser() -> ArgumentParser:
    """`repository`: the ONNX tower and where to write its repositories."""
    r = ArgumentParser(description="Triton model repositories (production, local) of an ONNX tower")
    r.add_argument("--onnx", required=True, help="a user tower, e.g. a version's user_tower.onnx")
    r.add_argument("--output", required=True, help="root of the repositories (replaced)")
    return r


def _service(command: str, args) -> int:
    from serving import service
    from serving.demo import try_service

    cfg = config.build(ServingConfig, args)
    if command == "down":
        return service.down(cfg)
    if command == "try":
        return try_service(cfg, args.users, args.k, args.traffic)
    return service.detach(cfg, args.wait) if args.detach else service.up(cfg)


def _repository(args) -> int:
    from serving.triton.repository import write_repositories

    print(json.dumps(write_repositories(args.onnx, args.output), indent=2))
    return errors.OK


COMMANDS = ("up", "down", "try", "materialise", "triton", "repository")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = config.parse_args(_parser(), argv)
    except errors.ConfigError as e:
        return errors.report("serving", config.command_of(argv, COMMANDS), e)
    setup_logging(args.quiet)
    command, sub = args.command, args[args.command]
    try:
        if command in ("up", "down", "try"):
            return _service(command, sub)
        if command == "materialise":
            from serving.features.materialise import cli_materialise

            return cli_materialise(sub)
        if command == "triton":
            from serving.triton.server import cli_triton

            return cli_triton(sub)
        return _repository(sub)
    except Exception as e:
        return errors.report("serving", command, e)


if __name__ == "__main__":
    sys.exit(main())
