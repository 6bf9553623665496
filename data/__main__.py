"""Command line: `python -m data prepare|manifest|generate`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data import config, manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="raw source → validated shards, tables and manifest")
    p.add_argument("--config", required=True, help="a YAML file in configs/data/")
    p.add_argument("--output", help="output folder (default: the config's `output`)")
    config.add_override_argument(p, "shards.record_size=512")
    p.add_argument("--no-progress", action="store_true")

    m = sub.add_parser("manifest", help="print a prepared dataset's manifest summary")
    m.add_argument("folder")
    m.add_argument("--verify", action="store_true", help="recompute and check every checksum")
    m.add_argument("--json", action="store_true", help="print the whole manifest as JSON")

    g = sub.add_parser("generate", help="write the synthetic source as raw CSV logs")
    g.add_argument("--config", required=True, help="a data config whose source is synthetic")
    g.add_argument("--output", required=True, help="folder for interactions/creators/users files")
    g.add_argument("--format", choices=["csv", "parquet"], default="csv")

    args = parser.parse_args(argv)
    if args.command == "prepare":
        from data.prepare import prepare

        overrides = args.set + ([f"output={args.output}"] if args.output else [])
        cfg = config.load(args.config, overrides)
        out = prepare(cfg, progress=not args.no_progress)
        print(manifest.summary(manifest.load(out)))
        print(f"wrote {out}")
    elif args.command == "manifest":
        m = manifest.load(args.folder, verify=args.verify)
        if args.json:
            import json

            print(json.dumps(m, indent=2))
        else:
            print(manifest.summary(m))
            if args.verify:
                print(f"  verified      all {len(m['files'])} checksums match")
    elif args.command == "generate":
        from data.sources import build
        from data.sources.files import write_parquet_logs, write_raw_logs

        cfg = config.load(args.config)
        write = write_raw_logs if args.format == "csv" else write_parquet_logs
        rows = write(build(cfg.source), Path(args.output))
        print(f"wrote {args.format} logs to {args.output}: {rows}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
