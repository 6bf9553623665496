"""Typed configuration of `python -m index rebuild`, loaded from `configs/index/*.yaml` by the
common loader (common.config): every field is a flag, `--recall_target 0.98`, and errors name
the flag to change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from common.errors import ConfigError
from index.build import DEFAULT_FACTORY, METRICS
from index.store import QUERY_PRECISIONS as PRECISIONS
from index.tune import K_FACTOR, NPROBE


@dataclass
class DriftConfig:
    """Drift between the current version and the new one (index.drift), measured before
    publishing. A build past any threshold set here is not published (exit 4) unless the job
    runs with `--allow_drift true`; a threshold left null is not checked."""

    enabled: bool = True
    """Measure drift (and write drift.json and drift.html into each new version)."""
    k: int = 10
    """Neighbours and list length the overlaps and rank correlation are taken at."""
    fans: int = 1000
    """Fans (a seeded sample with training pairs) whose lists both versions answer."""
    creators: int = 2000
    """Creators (a seeded sample of those both hold) whose neighbours are compared."""
    two_sample_creators: int = 4000
    """Creators (a seeded sample) in the two-sample test: half train the classifier, half test."""
    max_cosine_shift: float | None = None
    """Highest mean 1 − cos(R·old, new) after orthogonal Procrustes alignment."""
    min_neighbour_overlap: float | None = None
    """Lowest mean share of a creator's k nearest creators that both versions share."""
    min_list_overlap: float | None = None
    """Lowest mean share of a fan's top k that both versions share."""
    min_rank_correlation: float | None = None
    """Lowest mean Kendall's tau-b of a fan's two lists (over their union; -1 to 1)."""
    max_popularity_shift: float | None = None
    """Highest |change| of the mean catalog popularity percentile of the listed creators."""
    max_two_sample_auc: float | None = None
    """Highest ROC-AUC of the classifier telling old (aligned) from new vectors (0.5 = same)."""
    wandb: bool = True
    """`python -m index rebuild` logs the figures to W&B under <store>/wandb (offline unless
    WANDB_MODE says otherwise)."""

    def __post_init__(self):
        for name in ("k", "fans", "creators", "two_sample_creators"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--drift.{name}={getattr(self, name)} must be >= 1")
        for name, (low, high) in DRIFT_RANGES.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ConfigError(
                    f"--drift.{name}={value} must be in [{low}, {high}] (or null: not checked)"
                )


DRIFT_RANGES = {
    "max_cosine_shift": (0.0, 2.0),
    "min_neighbour_overlap": (0.0, 1.0),
    "min_list_overlap": (0.0, 1.0),
    "min_rank_correlation": (-1.0, 1.0),
    "max_popularity_shift": (0.0, 1.0),
    "max_two_sample_auc": (0.0, 1.0),
}
"""What each drift threshold can be: the range of its figure."""


@dataclass
class IndexConfig:
    """The rebuild job: which checkpoint and catalog, which faiss index, how it is tuned, where
    versions are kept."""

    name: str
    checkpoint: str
    """A .ckpt file, or a training run folder: the newest `last.ckpt` anywhere under it."""
    store: str
    """Root of the versioned store: `versions/<version>/` folders and the `current` pointer."""
    data: str | None = None
    """The creator catalog, a prepared dataset folder; None = the dataset the checkpoint was
    trained on (its recorded data_dir). A later prepare of that dataset (vocab_from) adds
    creators the towers encode from content alone."""
    factory: str = DEFAULT_FACTORY
    """faiss factory string; `{nlist}` and `{m}` are filled in from the corpus (index.build)."""
    metric: str = "inner_product"
    """Must be the metric the embeddings were trained for (inner_product); anything else is
    refused."""
    nlist: int | None = None
    """IVF cells for `{nlist}`; None = the power of two nearest 4·sqrt(creators)."""
    pq_m: int | None = None
    """Product-quantizer codes per vector for `{m}`; None = dim / 2, or for an odd dim one code
    per the fewest dimensions that divide it (1,025 → 205; index.build.default_pq_m)."""
    k: int = 10
    """Recall is measured at this cut-off (recall@k against exact search)."""
    recall_target: float = 0.95
    """Tuning picks the fastest setting whose recall@k reaches this."""
    recall_floor: float = 0.90
    """A build whose best recall@k is below this is not published (exit code 4)."""
    tuning_users: int = 2000
    """Real users (a seeded sample with training pairs) whose vectors are the tuning queries."""
    nprobe: list[int] = field(default_factory=lambda: list(NPROBE))
    """IVF cells visited per query: the values the sweep tries."""
    k_factor: list[int] = field(default_factory=lambda: list(K_FACTOR))
    """Re-rank depth (candidates = k_factor × k) values the sweep tries, for a `RFlat` stage."""
    repeats: int = 2
    """Timed runs per setting; the fastest counts (the first pays for cold caches)."""
    keep: int = 3
    """Versions kept in the store, newest first; the current one is never removed."""
    incremental: bool = True
    """With the same model and only creators appended to the catalog, add them to a copy of the
    current index (no IVF retraining) instead of building from scratch."""
    incremental_max_fraction: float = 0.25
    """Above this many new creators per indexed creator, rebuild instead: the IVF cells were
    trained without them and would drift out of balance."""
    map_points: int = 50_000
    """Creators on the version's map (index.projection: a 2-D UMAP of a sample stratified by
    popularity and category, for the relevance explorer); 0 = no map."""
    semantic: bool = True
    """Build creator search's semantic retriever (index.semantic) when the catalog has text
    vectors: a text index and the query encoder (~90 MB, linked from a per-machine cache)."""
    query_precision: str = "fp32"
    """The query encoder's weights: fp32 as exported, or int8 (onnxruntime's dynamic
    quantization, per channel: ~3× faster on a CPU; index.query_encoder.quantize). A CPU
    choice: a GPU Triton runs the fp32 graph. Chosen by benchmarks/query_encoder_speed.py."""
    use_gpu: bool | None = None
    """None = use a GPU when faiss sees one."""
    seed: int = 0
    drift: DriftConfig = field(default_factory=DriftConfig)
    """Drift against the current version, and the thresholds that stop a publish."""
    allow_drift: bool = False
    """Publish even past the drift thresholds (the breaches are recorded in the version)."""

    def __post_init__(self):
        empty = [name for name in ("name", "checkpoint", "store") if not getattr(self, name)]
        if empty:
            raise ConfigError(f"an index config needs {empty} (--{empty[0]} ...)")
        if self.metric not in METRICS:
            raise ConfigError(f"--metric={self.metric!r} is not one of {sorted(METRICS)}")
        if not 0.0 < self.recall_floor <= self.recall_target <= 1.0:
            raise ConfigError(
                f"--recall_floor={self.recall_floor}, --recall_target={self.recall_target}: need "
                f"0 < recall_floor <= recall_target <= 1"
            )
        for name in ("k", "tuning_users", "keep", "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name}={getattr(self, name)} must be >= 1")
        for name in ("nprobe", "k_factor"):
            values = getattr(self, name)
            if not values or min(values) < 1:
                raise ConfigError(f"--{name}={values} must be a non-empty list of values >= 1")
        if self.incremental_max_fraction <= 0:
            raise ConfigError(
                f"--incremental_max_fraction={self.incremental_max_fraction} must be > 0 "
                f"(or --incremental false)"
            )
        if self.query_precision not in PRECISIONS:
            raise ConfigError(
                f"--query_precision={self.query_precision!r}: use one of {PRECISIONS}"
            )
        if not self.factory.strip():
            raise ConfigError(f"--factory={self.factory!r} is empty; default: {DEFAULT_FACTORY}")


# What a built index depends on besides the model and the catalog: a change to any of these
# makes the current version stale. Paths, retention, the device and the drift gate do not change
# the artifact.
BUILD_FIELDS = (
    "factory", "metric", "nlist", "pq_m", "k", "recall_target", "recall_floor",
    "tuning_users", "nprobe", "k_factor", "seed", "map_points", "semantic",
    "query_precision",
)  # fmt: skip


def build_settings(cfg: IndexConfig) -> dict:
    return {name: getattr(cfg, name) for name in BUILD_FIELDS}


def settings_sha256(cfg: IndexConfig) -> str:
    return hashlib.sha256(json.dumps(build_settings(cfg), sort_keys=True).encode()).hexdigest()
