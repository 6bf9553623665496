"""Typed configuration of `python -m data prepare`, loaded from `configs/data/*.yaml` by the
common loader (common.config): every field is a flag, `--split.test_fraction 0.2`, and errors
name the flag to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.errors import ConfigError
from data.schema import EVENT_TYPES

SPLIT_KINDS = ("time", "per_user", "given")
# Shard counts must divide evenly across every launch size we support, so that each rank of a
# 1, 2, 4 or 8-process run reads the same number of batches (uneven counts hang DDP).
SUPPORTED_WORLD_SIZES = (1, 2, 4, 8)


@dataclass
class SplitConfig:
    kind: str = "time"
    """time: one global cut by time; per_user: a random fraction of each user's creators;
    given: the dataset's own split column (LightGCN)."""
    test_fraction: float = 0.1
    """time: the fraction of positive events (by time) after the cut; per_user: of each user's."""
    validation_fraction: float = 0.0
    """The share of train carved out for validation (model selection never reads test), by the
    test split's rule: time: train's last positive events before the test cut; per_user and
    given: a seeded share of each user's train pairs (given: of the source's train lines).
    0 = no validation split."""
    min_train_per_user: int = 1
    """per_user (and the validation carve-out): users with fewer positives keep them all in
    train."""
    seed: int = 0

    def __post_init__(self):
        if self.kind not in SPLIT_KINDS:
            raise ConfigError(f"--split.kind={self.kind!r} is not one of {SPLIT_KINDS}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"--split.test_fraction={self.test_fraction} must be in (0, 1)")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(
                f"--split.validation_fraction={self.validation_fraction} must be in [0, 1) "
                f"(a share of train; 0 = none)"
            )


@dataclass
class EventsConfig:
    positive: dict[str, float] = field(
        default_factory=lambda: {
            "follow": 1.0,
            "free_membership": 1.5,
            "paid_membership": 3.0,
            "purchase": 2.0,
            "like": 0.5,
        }
    )
    """Event types that make a (fan, creator) pair a positive, with the example weight of each.
    A pair's weight is the largest weight among its events; its time is its first positive event."""
    min_value: float | None = None
    """Ignore positive events whose value is below this (e.g. ratings below 4)."""

    def __post_init__(self):
        unknown = sorted(set(self.positive) - set(EVENT_TYPES))
        if unknown:
            raise ConfigError(
                f"--events.positive names unknown event types {unknown}; known: {list(EVENT_TYPES)}"
            )
        if not self.positive:
            raise ConfigError("--events.positive is empty: name at least one event type")


@dataclass
class FeaturesConfig:
    history_length: int = 20
    """Creators in each example's user history (the last N before the example's time)."""
    user_history_length: int | None = None
    """Creators kept per user in the user table: the history a request (and user-batch
    training) sees. None = history_length. Longer than history_length costs the table, not
    the shards."""
    max_tags: int = 5
    """Tags kept per creator in the feature table."""
    text_encoder: str | None = None
    """Embed each creator's text (name, category, tags, description) into
    tables/creator_text.npy for the creator tower: all-MiniLM-L6-v2 (bundled, offline) or a
    local sentence-transformers folder. None = no text features."""
    text_batch_size: int = 256

    def __post_init__(self):
        if self.history_length < 1:
            raise ConfigError(f"--features.history_length={self.history_length} must be >= 1")
        if self.user_history_length is not None and self.user_history_length < 1:
            raise ConfigError(
                f"--features.user_history_length={self.user_history_length} must be >= 1 "
                f"(or left out to use history_length)"
            )

    @property
    def user_history(self) -> int:
        return self.user_history_length or self.history_length


@dataclass
class ShardsConfig:
    record_size: int = 256
    """Examples per record: shards hold pre-batched records; a training batch is k records."""
    num_shards: int = 8
    """Must be a multiple of 8 so 1, 2, 4 and 8 ranks all get equal shares."""
    seed: int = 0

    def __post_init__(self):
        if self.record_size < 1:
            raise ConfigError(f"--shards.record_size={self.record_size} must be >= 1")
        lcm = max(SUPPORTED_WORLD_SIZES)
        if self.num_shards < lcm or self.num_shards % lcm:
            raise ConfigError(
                f"--shards.num_shards={self.num_shards} must be a positive multiple of {lcm} so "
                f"every rank of a {SUPPORTED_WORLD_SIZES} launch reads the same number of batches"
            )


@dataclass
class PrepareConfig:
    name: str
    source: dict[str, Any]
    """`kind` (synthetic | csv | lastfm | movielens | lightgcn) and that source's parameters."""
    output: str = ""
    split: SplitConfig = field(default_factory=SplitConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    buckets: int = 16
    """User buckets spilled to disk between passes; memory holds one bucket at a time."""
    chunk_rows: int = 1_000_000
    """Smallest number of rows validated and encoded at a time in the streaming pass (small
    source batches are grouped up to it)."""
    spill_above_rows: int = 20_000_000
    """Sources larger than this spill between passes to temp files (memory stays bounded by a
    bucket); smaller ones keep the passes' data in memory."""
    reference_time: str | None = None
    """ISO time used as 'now' for the future-timestamp check; default: the wall clock."""
    vocab_from: str | None = None
    """A previous prepared dataset whose vocabularies are extended (default: `output` if it
    exists), so existing ids keep their indices across rebuilds."""

    def __post_init__(self):
        if "kind" not in self.source:
            raise ConfigError("--source.kind is missing: one of synthetic, csv, lastfm, ...")
        if self.buckets < 1:
            raise ConfigError(f"--buckets={self.buckets} must be >= 1")
