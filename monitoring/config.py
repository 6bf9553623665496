"""Typed configuration of `python -m monitoring run`, loaded from `configs/monitoring/*.yaml` by
the common loader (common.config): every field is a flag (`--window 30m`, `--alerts.max
'{gini: 0.9}'`).

One file holds both kinds of threshold, so a team changes a limit in one place: `alerts` are
what the relevance monitor checks over the answer log, window by window; `live` are the
service's live-metric limits that ship as Prometheus alerting rules (monitoring.live).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from common.errors import ConfigError
from monitoring.live import LiveThresholds

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def span_seconds(text: str, flag: str) -> float:
    """'90s', '30m', '1h', '7d' → seconds; anything else is a ConfigError naming `flag`."""
    match = _SPAN.match(text.strip())
    if not match or float(match[1]) <= 0:
        raise ConfigError(f"{flag}={text!r}: give a positive span like '30m', '1h' or '1d'")
    return float(match[1]) * _SECONDS[match[2]]


@dataclass
class Alerts:
    """Limits on the monitor's figures (monitoring.metrics.FIGURES names them): a figure under
    its `min` or over its `max` in any window is a breach: one line each, and the run exits 4."""

    min: dict[str, float] = field(default_factory=dict)
    max: dict[str, float] = field(default_factory=dict)


@dataclass
class Later:
    """Where the online recall proxy's later interactions come from."""

    split: str | None = None
    """A split of the served version's prepared dataset (e.g. `test`) whose pairs count as
    interactions made after every logged answer; None = no later interactions."""
    path: str | None = None
    """Or a parquet/CSV file of `user_id, creator_id, ts` (ts in seconds or ISO 8601): each pair
    counts against the lists served to that fan before its ts."""

    def __post_init__(self):
        if self.split and self.path:
            raise ConfigError(
                f"--later.split={self.split} and --later.path={self.path}: give one of the two"
            )


@dataclass
class MonitorConfig:
    """What the relevance monitor reads, how it windows it, and what it calls a breach."""

    name: str
    log: str
    """The service's answer log (serving's `answer_log.path`); its rotated files are read too."""
    index: str
    """The index store whose versions the log names: each answer is measured against the
    catalog of the version that served it."""
    out: str | None = None
    """Where the report goes; None = a `monitor` folder beside the log."""
    window: str = "1h"
    """Figures per window of this span ('30m', '1h', '1d'), by the answers' timestamps."""
    routes: list[str] = field(default_factory=lambda: ["recommend"])
    """The answer log's routes whose lists are measured."""
    new_days: float = 30.0
    """A creator first seen within this many days of an answer counts as new."""
    head_share: float = 0.2
    """The short head: the most popular creators that make this share of interactions."""
    pairs: int = 10_000
    """Seeded pairs of lists that the personalisation figure compares."""
    later: Later = field(default_factory=Later)
    alerts: Alerts = field(default_factory=Alerts)
    live: LiveThresholds = field(default_factory=LiveThresholds)
    wandb: bool = True
    """Log the latest window's figures to W&B: offline under `out` unless WANDB_MODE says
    otherwise (as training does)."""
    wandb_project: str = "towerline-monitor"
    seed: int = 0

    def __post_init__(self):
        self.window_seconds = span_seconds(self.window, "--window")
        if not 0.0 < self.head_share < 1.0:
            raise ConfigError(f"--head_share={self.head_share}: use a share in (0, 1), e.g. 0.2")
        if self.new_days <= 0 or self.pairs < 1:
            raise ConfigError(
                f"--new_days={self.new_days}, --pairs={self.pairs}: use new_days > 0, pairs >= 1"
            )
        if not self.routes:
            raise ConfigError("--routes=[]: name at least one route, e.g. [recommend]")
