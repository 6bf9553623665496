"""Command line: `python -m index rebuild|export|show`.

Exit codes (index.errors): 0 published or up to date, 2 bad config, 3 missing input,
4 validation failed (nothing published), 5 build error (nothing published), 6 another rebuild
is running.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data.config import add_override_argument, setup_logging
from index import errors


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m index", description=__doc__)
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser(
        "rebuild", help="export, build, tune, validate and publish if inputs changed"
    )
    r.add_argument("--config", required=True, help="a YAML file in configs/index/")
    add_override_argument(r, "recall_target=0.98")
    r.add_argument("--dry-run", action="store_true", help="say what would happen; change nothing")

    e = sub.add_parser("export", help="every creator's embedding and id, with a manifest")
    e.add_argument("--checkpoint", required=True, help="a .ckpt file or a training run folder")
    e.add_argument("--data", help="prepared dataset (default: the one the checkpoint trained on)")
    e.add_argument("--output", required=True, help="export folder (replaced atomically)")
    e.add_argument("--queries", type=int, default=2000, help="real user vectors to include")
    e.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("show", help="the current (or a named) version of an index store")
    s.add_argument("store", help="the store root (a config's `store`)")
    s.add_argument("--version", help="a version name (default: current)")
    s.add_argument("--verify", action="store_true", help="load it: checksums, counts, faiss")
    s.add_argument("--json", action="store_true", help="print the whole manifest")
    return parser


def _rebuild(args) -> int:
    from index import config, rebuild

    cfg = config.load(args.config, args.set)
    result = rebuild.run(cfg, dry_run=args.dry_run)
    print(result.summary)
    return result.code


def _export(args) -> int:
    from index import export
    from index.rebuild import load_inputs

    trained, found = load_inputs(args.checkpoint, args.data)
    m = export.export_to(trained, found, Path(args.output), queries=args.queries, seed=args.seed)
    export.validate(m, expected_count=len(found))
    print(
        f"exported {m['count']:,} creators × {m['dim']} (model {m['model']['version'][:12]}, "
        f"fingerprint {m['fingerprint']['sha256'][:12]}) to {args.output}"
    )
    return errors.OK


def _show(args) -> int:
    from index import store
    from index.tune import param_string

    if args.verify:
        m = store.load(args.store, version=args.version, use_gpu=False).manifest
    else:
        m = store.read_manifest(Path(args.store), args.version)
    if args.json:
        print(json.dumps(m, indent=2))
        return errors.OK
    t, idx = m["tuning"], m["index"]
    print(
        f"{m['version']}  {idx['mode']}  {m['count']:,} creators × {m['dim']}  {idx['factory']}\n"
        f"  model {m['model']['version'][:12]}  catalog {m['inputs']['catalog_sha256'][:12]}  "
        f"fingerprint {m['fingerprint']['sha256'][:12]}\n"
        f"  recall@{t['k']} {t['chosen']['recall']:.4f} at "
        f"{param_string(t['chosen']['params']) or 'defaults'}, "
        f"{t['chosen']['qps']:,.0f} q/s ({t['speedup_vs_exact']:.1f}× exact)"
        + ("\n  verified: checksums, counts, model" if args.verify else "")
    )
    return errors.OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.quiet)
    command = {"rebuild": _rebuild, "export": _export, "show": _show}[args.command]
    try:
        return command(args)
    except Exception as e:  # the rebuild job reports its own; these are config and input errors
        return errors.report("index", args.command, e)


if __name__ == "__main__":
    sys.exit(main())
