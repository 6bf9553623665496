"""Command line: `python -m serving up|down|try|export-onnx|triton|materialise`.

python -m serving materialise --data artifacts/data/synthetic_demo --output DIR [--redis URL]
python -m serving export-onnx --checkpoint RUN_OR_CKPT --output DIR
python -m serving triton --repository DIR              # a real Triton server, until Ctrl-C
python -m serving up --config configs/serving/synthetic_demo.yaml [--detach]
python -m serving try --config configs/serving/synthetic_demo.yaml   # a few real answers
python -m serving down --config configs/serving/synthetic_demo.yaml
"""

from __future__ import annotations

import argparse
import sys

from data.config import add_override_argument, setup_logging


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a YAML file in configs/serving/")
    add_override_argument(p, "port=9000 --set encoder=onnx")


def _parser() -> argparse.ArgumentParser:
    from serving import export, features, triton

    parser = argparse.ArgumentParser(
        prog="python -m serving", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    u = sub.add_parser("up", help="feature store + user tower (Triton) + HTTP service")
    _config_args(u)
    u.add_argument("--detach", action="store_true", help="run in the background; return when ready")
    u.add_argument("--wait", type=float, default=180.0, help="seconds to wait for ready (--detach)")

    d = sub.add_parser("down", help="stop a service started with up --detach")
    _config_args(d)

    t = sub.add_parser("try", help="ask a running service for a few real users' recommendations")
    _config_args(t)
    t.add_argument("--users", type=int, default=3, help="how many users with a history to show")
    t.add_argument("-k", type=int, default=5)

    export.add_export_arguments(sub.add_parser("export-onnx", help="the user tower as ONNX"))
    triton.add_triton_arguments(sub.add_parser("triton", help="run a real Triton server"))
    features.add_materialise_arguments(
        sub.add_parser("materialise", help="the online feature store from a prepared dataset")
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.quiet)
    try:
        if args.command in ("up", "down", "try"):
            from serving import config, server
            from serving.demo import try_service

            cfg = config.load(args.config, args.set)
            if args.command == "down":
                return server.down(cfg)
            if args.command == "try":
                return try_service(cfg, args.users, args.k)
            if args.detach:
                return server.detach(args.config, args.set, cfg, args.wait)
            return server.up(cfg)
        from serving import export, features, triton

        command = {
            "export-onnx": export.cli_export,
            "triton": triton.cli_triton,
            "materialise": features.cli_materialise,
        }[args.command]
        return command(args)
    except Exception as e:
        from index import errors

        return errors.report("serving", args.command, e)


if __name__ == "__main__":
    sys.exit(main())
