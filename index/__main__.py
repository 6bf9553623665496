"""Command line: `python -m index rebuild|export|export-onnx|show`.

    python -m index rebuild --config configs/index/gowalla.yaml [--recall_target 0.98] [--dry-run]
    python -m index rebuild --config ... --allow_drift true   # publish past the drift thresholds
    python -m index export --checkpoint CKPT_OR_RUN_DIR [--data DIR] --output DIR
    python -m index export-onnx --checkpoint CKPT_OR_RUN_DIR [--data DIR] --output FILE.onnx
    python -m index show STORE [--version V] [--verify] [--json]

Every field of the rebuild config is a flag (`--field VALUE`, as training's LightningCLI). Exit
codes (common.errors): 0 published or up to date, 2 bad config, 3 missing input, 4 validation
failed or drift from the current version past the config's `drift` thresholds (nothing
published; index.drift), 5 build error (nothing published), 6 another rebuild is running.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jsonargparse import ArgumentParser

from common import config, errors
from common.logs import setup_logging
from index.config import IndexConfig


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m index", description=__doc__, exit_on_error=False)
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subcommands(dest="command")

    r = ArgumentParser(description="export, build, tune, validate and publish if inputs changed")
    config.add_config_arguments(r, IndexConfig)
    r.add_argument("--dry-run", action="store_true", help="say what would happen; change nothing")
    sub.add_subcommand("rebuild", r, help="export, build, tune, validate and publish")

    e = ArgumentParser(description="every creator's embedding and id, with a manifest")
    _model_arguments(e, "export folder (replaced atomically)")
    e.add_argument("--queries", type=int, default=2000, help="real user vectors to include")
    e.add_argument("--seed", type=int, default=0)
    sub.add_subcommand("export", e, help="every creator's embedding and id, with a manifest")

    o = ArgumentParser(description="the user tower as ONNX, parity with torch checked")
    _model_arguments(o, "the .onnx file to write")
    sub.add_subcommand("export-onnx", o, help="the user tower as ONNX (as every version has it)")

    s = ArgumentParser(description="the current (or a named) version of an index store")
    s.add_argument("store", help="the store root (a config's `store`)")
    s.add_argument("--version", help="a version name (default: current)")
    s.add_argument("--verify", action="store_true", help="load it: checksums, counts, faiss")
    s.add_argument("--json", action="store_true", help="print the whole manifest")
    sub.add_subcommand("show", s, help="the current (or a named) version of an index store")
    return parser


def _model_arguments(parser: ArgumentParser, output: str) -> None:
    parser.add_argument("--checkpoint", required=True, help="a .ckpt file or a training run folder")
    parser.add_argument("--data", help="prepared dataset (default: the one it was trained on)")
    parser.add_argument("--output", required=True, help=output)


def _rebuild(args) -> int:
    from index import rebuild

    result = rebuild.run(config.build(IndexConfig, args), dry_run=args.dry_run, wandb=True)
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


def _export_onnx(args) -> int:
    from index.user_tower import export_from_checkpoint

    m = export_from_checkpoint(args.checkpoint, args.output, args.data)
    inputs = ", ".join(f"{k} {v['shape']}" for k, v in m["inputs"].items())
    print(
        f"exported the user tower of model {m['model']['version'][:12]} to {args.output}: "
        f"{inputs} → embedding [-1, {m['dim']}], parity "
        f"{max(m['parity']['max_abs_diff'].values()):.2g}"
    )
    return errors.OK


def _show(args) -> int:
    from index import store
    from index.drift import summary_line
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
        + (f"\n  {summary_line(m['drift'])}" if "drift" in m else "")
        + ("\n  verified: checksums, counts, model" if args.verify else "")
    )
    return errors.OK


COMMANDS = {"rebuild": _rebuild, "export": _export, "export-onnx": _export_onnx, "show": _show}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = config.parse_args(_parser(), argv)
    except errors.ConfigError as e:
        return errors.report("index", config.command_of(argv, COMMANDS), e)
    setup_logging(args.quiet)
    try:
        return COMMANDS[args.command](args[args.command])
    except Exception as e:  # the rebuild job reports its own; these are config and input errors
        return errors.report("index", args.command, e)


if __name__ == "__main__":
    sys.exit(main())
