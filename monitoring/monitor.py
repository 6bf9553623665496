"""The relevance monitor's run: the answer log → figures per window and version → alerts →
a report (JSON, self-contained HTML with plots) and the same figures in W&B.

    python -m monitoring run --config configs/monitoring/synthetic_demo.yaml

Each answer is measured against the catalog of the index version that served it, so a log that
spans a swap gives one row per (window, version). A figure outside its configured `alerts`
bound in any row is a breach: a line each, printed and leading the report, and the command
exits 4. The report is `<out>/report.html` beside `<out>/monitor.json`; `REPORT_JSON` is the
name the monitoring room serves to the explorer (monitoring.room).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from common.errors import ConfigError, MissingInputError
from common.io import write_json
from common.report import log_to_wandb
from monitoring import metrics, plots
from monitoring.answers import STAGES, Answers, read
from monitoring.catalog import Catalog
from monitoring.config import MonitorConfig

log = logging.getLogger(__name__)

REPORT_JSON = "monitor.json"
REPORT_HTML = "report.html"
LATENCY = tuple(f"{stage}_p99_seconds" for stage in STAGES)
"""Per-stage p99 of the answers' own timings, beside metrics.FIGURES in every row."""


def out_dir(cfg: MonitorConfig) -> Path:
    """Where a config's report goes: `out`, else a `monitor` folder beside the answer log."""
    return Path(cfg.out) if cfg.out else Path(cfg.log).parent / "monitor"


def run(cfg: MonitorConfig) -> dict:
    """Measure the log, write the report; the result says what was written and breached."""
    check_alert_names(cfg)
    answers = _routed(read(cfg.log), cfg)
    starts = np.floor(answers.ts / cfg.window_seconds) * cfg.window_seconds
    rows, catalogs = [], {}
    for version in sorted(set(answers.index_version.tolist()), key=str):
        catalogs[version] = catalog = _catalog(cfg, version)
        of_version = answers.index_version == version
        for start in np.unique(starts[of_version]):
            part = answers.take(of_version & (starts == start))
            rows.append(_row(cfg, part, catalog, float(start)))
            log.info("monitor: window %s, %s: %d answers", rows[-1]["window_start"], version,
                     len(part))  # fmt: skip
    result = {
        "name": cfg.name, "log": str(cfg.log), "torn_batches": answers.torn,
        "window": cfg.window, "rows": rows, "breaches": breaches(rows, cfg),
        "alerts": {"min": cfg.alerts.min, "max": cfg.alerts.max},
        "made_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    _write(cfg, result, answers, catalogs)
    return result


def _routed(answers: Answers, cfg: MonitorConfig) -> Answers:
    answers = answers.take(np.isin(answers.route.astype(str), cfg.routes))
    if not len(answers):
        raise MissingInputError(
            f"{cfg.log} holds no answers of the routes {cfg.routes}: set the service's "
            f"`answer_log.path` to it (and `answer_log.sample` > 0) and send it traffic"
        )
    return answers


def _catalog(cfg: MonitorConfig, version: str) -> Catalog:
    catalog = Catalog.from_version(cfg.index, version, later_split=cfg.later.split)
    if cfg.later.path:
        catalog.later = catalog.interactions(*_later_file(Path(cfg.later.path)))
    return catalog


def _later_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`user_id, creator_id, ts` from parquet or CSV; ts in epoch seconds or ISO 8601."""
    if not path.is_file():
        raise MissingInputError(f"--later.path={path} does not exist: give a parquet or CSV file")
    table = pq.read_table(path) if path.suffix == ".parquet" else pcsv.read_csv(path)
    missing = {"user_id", "creator_id", "ts"} - set(table.column_names)
    if missing:
        raise ConfigError(
            f"--later.path={path} lacks columns {sorted(missing)}: give user_id, creator_id, ts"
        )
    ts = table["ts"].to_numpy(zero_copy_only=False)
    if ts.dtype.kind == "M":
        ts = ts.astype("datetime64[ms]").astype(np.int64) / 1e3
    elif ts.dtype.kind not in "fiu":
        ts = np.array([dt.datetime.fromisoformat(str(t)).timestamp() for t in ts])
    users = table["user_id"].to_numpy(zero_copy_only=False).astype(str)
    return users, table["creator_id"].to_numpy(zero_copy_only=False).astype(str), ts


def _row(cfg: MonitorConfig, part: Answers, catalog: Catalog, start: float) -> dict:
    figures = metrics.compute(
        part, catalog, new_days=cfg.new_days, head_share=cfg.head_share, pairs=cfg.pairs,
        seed=cfg.seed,
    )  # fmt: skip
    models, counts = np.unique(part.model_version.astype(str), return_counts=True)
    return {
        "window_start": _iso(start), "window_end": _iso(start + cfg.window_seconds),
        "index_version": catalog.version, "model_version": str(models[counts.argmax()]),
        **figures, **stage_p99(part),
    }  # fmt: skip


def stage_p99(part: Answers) -> dict[str, float]:
    """Each stage's p99 over the answers it timed (NaN: the stage never ran in the window)."""
    out = {}
    for stage, name in zip(STAGES, LATENCY, strict=True):
        seconds = part.timings.get(stage, np.empty(0))
        seconds = seconds[np.isfinite(seconds)]
        out[name] = float(np.quantile(seconds, 0.99)) if len(seconds) else math.nan
    return out


def check_alert_names(cfg: MonitorConfig) -> None:
    known = set(metrics.FIGURES) | set(LATENCY)
    unknown = sorted((set(cfg.alerts.min) | set(cfg.alerts.max)) - known)
    if unknown:
        raise ConfigError(
            f"--alerts names {unknown}, which the monitor does not measure; use any of "
            f"{sorted(known)}"
        )


def breaches(rows: list[dict], cfg: MonitorConfig) -> list[str]:
    """One line per figure outside its bound in a row; a NaN figure (nothing to measure in
    that window) is not a breach."""
    lines = []
    for row in rows:
        where = f"window {row['window_start']}, {row['index_version']}"
        for name, low in sorted(cfg.alerts.min.items()):
            if row[name] < low:
                lines.append(f"{where}: {name} {row[name]:.4g} < min {low:.4g} "
                             f"(by {low - row[name]:.4g})")  # fmt: skip
        for name, high in sorted(cfg.alerts.max.items()):
            if row[name] > high:
                lines.append(f"{where}: {name} {row[name]:.4g} > max {high:.4g} "
                             f"(by {row[name] - high:.4g})")  # fmt: skip
    return lines


def _write(cfg: MonitorConfig, result: dict, answers: Answers, catalogs: dict) -> None:
    folder = out_dir(cfg)
    write_json(folder / REPORT_JSON, _json_safe(result))
    plots.report(cfg, result, answers, catalogs).write(folder / REPORT_HTML)
    if cfg.wandb:
        last = result["rows"][-1]
        log_to_wandb(
            {k: v for k, v in last.items() if isinstance(v, float)}, folder, "monitor",
            name=f"{cfg.name}-{last['window_start']}", project=cfg.wandb_project,
            config={"log": str(cfg.log), "window": cfg.window, "breaches": len(result["breaches"])},
        )  # fmt: skip


def _json_safe(value):
    """NaN → null: the report JSON is strict (a browser's JSON.parse refuses NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")
