"""Command line: `python -m ranking train|show`.

    python -m ranking train --config configs/ranking/synthetic_demo.yaml [--candidates 300]
    python -m ranking show STORE --version INDEX_VERSION

Every field of the train config is a flag. Exit codes (common.errors): 0 saved, 2 bad config,
3 missing input (no index version, no validation split), 5 a failure while training.
"""

from __future__ import annotations

import json
import sys

from jsonargparse import ArgumentParser

from common import config, errors
from common.logs import setup_logging
from ranking.config import RankingConfig


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m ranking", description=__doc__, exit_on_error=False)
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subcommands(dest="command")
    t = ArgumentParser(description="train, export and save the ranker of an index version")
    config.add_config_arguments(t, RankingConfig)
    sub.add_subcommand("train", t, help="the ranker of an index version (validation-chosen)")
    s = ArgumentParser(description="the manifest of an index version's ranker")
    s.add_argument("store", help="the ranking store (a config's `store`)")
    s.add_argument("--version", required=True, help="the index version")
    sub.add_subcommand("show", s, help="the manifest of an index version's ranker")
    return parser


def _train(args) -> int:
    from ranking import train

    result = train.run(config.build(RankingConfig, args))
    chosen = result["chosen"]
    print(
        f"ranker for {result['index_version']}: {chosen['chosen']} over the top "
        f"{result['candidates']}, NDCG@20 on {chosen['stop_fans']} held-out validation fans "
        f"{chosen['stop_ndcg@20']:.4f} (retrieval order {chosen['stop_ndcg@20_retrieval']:.4f}) "
        f"→ {result['folder']}"
    )
    return errors.OK


def _show(args) -> int:
    from ranking import store

    folder = store.find(args.store, args.version)
    if folder is None:
        raise errors.MissingInputError(f"{args.store} has no ranker for {args.version}")
    print(json.dumps(store.read_manifest(folder), indent=1))
    return errors.OK


COMMANDS = {"train": _train, "show": _show}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = config.parse_args(_parser(), argv)
    except errors.ConfigError as e:
        return errors.report("ranking", config.command_of(argv, COMMANDS), e)
    setup_logging(args.quiet)
    try:
        return COMMANDS[args.command](args[args.command])
    except Exception as e:
        return errors.report("ranking", args.command, e)


if __name__ == "__main__":
    sys.exit(main())
