"""Command line: `python -m data prepare|manifest|generate`.

    python -m data prepare --config configs/data/lastfm.yaml [--output DIR] [--buckets 8]
    python -m data manifest DIR [--verify] [--json]
    python -m data generate --config configs/data/synthetic_demo.yaml --output DIR [--format csv]

Every field of the data config is a flag (`--section.field VALUE`, as training's LightningCLI);
exit codes as in common.errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jsonargparse import ArgumentParser

from common import config, errors
from data import manifest
from data.config import PrepareConfig


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m data", description=__doc__, exit_on_error=False)
    sub = parser.add_subcommands(dest="command")

    p = ArgumentParser(description="raw source → validated shards, tables and manifest")
    config.add_config_arguments(p, PrepareConfig)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub.add_subcommand("prepare", p, help="raw source → validated shards, tables and manifest")

    m = ArgumentParser(description="a prepared dataset's manifest")
    m.add_argument("folder", help="a prepared dataset")
    m.add_argument("--verify", action="store_true", help="recompute and check every checksum")
    m.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    sub.add_subcommand("manifest", m, help="print a prepared dataset's manifest summary")

    g = ArgumentParser(description="the synthetic source written out as raw logs")
    g.add_argument("--config", required=True, help="a data config whose source is synthetic")
    g.add_argument("--output", required=True, help="folder for interactions/creators/users files")
    g.add_argument("--format", choices=["csv", "parquet"], default="csv")
    sub.add_subcommand("generate", g, help="write the synthetic source as raw CSV logs")
    return parser


def _prepare(args) -> int:
    from data.prepare import prepare

    out = prepare(config.build(PrepareConfig, args), progress=not args.no_progress)
    print(manifest.summary(manifest.load(out)))
    print(f"wrote {out}")
    return errors.OK


def _manifest(args) -> int:
    m = manifest.load(args.folder, verify=args.verify)
    if args.json:
        print(json.dumps(m, indent=2))
        return errors.OK
    print(manifest.summary(m))
    if args.verify:
        print(f"  verified      all {len(m['files'])} checksums match")
    return errors.OK


def _generate(args) -> int:
    from data.sources import build
    from data.sources.files import write_parquet_logs, write_raw_logs

    cfg = config.load(PrepareConfig, args.config)
    write = write_raw_logs if args.format == "csv" else write_parquet_logs
    rows = write(build(cfg.source), Path(args.output))
    print(f"wrote {args.format} logs to {args.output}: {rows}")
    return errors.OK


COMMANDS = {"prepare": _prepare, "manifest": _manifest, "generate": _generate}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = config.parse_args(_parser(), argv)
    except errors.ConfigError as e:
        return errors.report("data", config.command_of(argv, COMMANDS), e)
    try:
        return COMMANDS[args.command](args[args.command])
    except errors.StageError as e:
        return errors.report("data", args.command, e)


if __name__ == "__main__":
    sys.exit(main())
