"""Small data builders shared by the data tests."""

from __future__ import annotations

from pathlib import Path

from common import config
from data.config import PrepareConfig

REFERENCE_TIME = "2026-01-01T00:00:00Z"


def synthetic_config(out: Path, **overrides) -> PrepareConfig:
    raw = {
        "name": "test_synthetic",
        "output": str(out),
        "source": {
            "kind": "synthetic",
            "num_events": 40_000,
            "num_users": 1_500,
            "num_creators": 300,
            "seed": 7,
            "batch_size": 10_000,
        },
        "split": {"kind": "time", "test_fraction": 0.15},
        "features": {"history_length": 8},
        "shards": {"record_size": 32, "num_shards": 8},
        "buckets": 4,
        "reference_time": REFERENCE_TIME,
    }
    for key, value in overrides.items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return config.load(PrepareConfig, values=raw)
