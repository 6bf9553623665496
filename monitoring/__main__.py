"""Command line: `python -m monitoring run | log`.

    python -m monitoring run --config configs/monitoring/synthetic_demo.yaml [--window 30m]
    python -m monitoring log --path artifacts/serving/synthetic_demo/answers.arrows \
        [--last 20] [--user_id fan_0042]     # the answer log as JSON lines, for people and jq

Every field of the config is a flag. Exit codes (common.errors): 0 written and no breach,
2 bad config, 3 no answer log (or no answers of the routes), 4 written with a breach (a line
each on stdout), 5 a failure. The live thresholds of the same config become Prometheus rules
with `python -m monitoring.live --config …` (monitoring.live).
"""

from __future__ import annotations

import json
import sys
from collections import deque

from jsonargparse import ArgumentParser

from common import config, errors
from common.logs import setup_logging
from monitoring.config import MonitorConfig


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m monitoring", description=__doc__, exit_on_error=False)
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subcommands(dest="command")
    r = ArgumentParser(description="measure the answer log per window; report; alert")
    config.add_config_arguments(r, MonitorConfig)
    sub.add_subcommand("run", r, help="figures per window and version, alerts and a report")
    show = ArgumentParser(description="print logged answers as JSON lines, oldest first")
    show.add_argument("--path", required=True, help="the service's answer_log.path")
    show.add_argument("--last", type=int, default=None, help="only the last N (of the fan)")
    show.add_argument("--user_id", default=None, help="only this fan's answers")
    sub.add_subcommand("log", show, help="the answer log as JSON lines")
    return parser


def _run(args) -> int:
    from monitoring import monitor

    cfg = config.build(MonitorConfig, args)
    result = monitor.run(cfg)
    last = result["rows"][-1]
    print(
        f"monitor {cfg.name}: {sum(r['answers'] for r in result['rows']):.0f} answers in "
        f"{len(result['rows'])} window(s); latest ({last['window_start']}, "
        f"{last['index_version']}): coverage {last['coverage']:.3f}, Gini {last['gini']:.3f}, "
        f"long-tail share {last['long_tail_share']:.3f}, personalisation "
        f"{last['personalisation']:.3f}, online recall {last['online_recall']:.3f} → "
        f"{monitor.out_dir(cfg) / monitor.REPORT_HTML}"
    )
    for line in result["breaches"]:
        print(f"BREACH {line}")
    return errors.VALIDATION_FAILED if result["breaches"] else errors.OK


def _log(args) -> int:
    from monitoring.answers import read_records

    records = read_records(args.path)
    if args.user_id is not None:
        records = (r for r in records if r["request"].get("user_id") == args.user_id)
    if args.last is not None:
        records = deque(records, maxlen=max(args.last, 0))
    for r in records:
        print(json.dumps(r, separators=(",", ":")))
    return errors.OK


COMMANDS = {"run": _run, "log": _log}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = config.parse_args(_parser(), argv)
    except errors.ConfigError as e:
        return errors.report("monitoring", config.command_of(argv, COMMANDS), e)
    setup_logging(args.quiet)
    try:
        return COMMANDS[args.command](args[args.command])
    except Exception as e:
        return errors.report("monitoring", args.command, e)


if __name__ == "__main__":
    sys.exit(main())
