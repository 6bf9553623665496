"""Typed configuration of `python -m ranking train`, loaded from `configs/ranking/*.yaml` by the
common loader (common.config): every field is a flag (`--candidates 300`)."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import ConfigError


@dataclass
class RankingConfig:
    """Which published index version the ranker is trained for, and how."""

    name: str
    index: str
    """The index store (`python -m index rebuild`'s `store`) whose version's towers give the
    candidates."""
    store: str
    """Where rankers are kept (ranking.store): a folder per index version."""
    version: str | None = None
    """The index version; None = the store's current one."""
    candidates: int = 200
    """N: the retrieval candidates the ranker orders. The service re-ranks the same N
    (serving's `rank.candidates` must match; it is read from the ranker's manifest)."""
    fit_fans: int = 0
    """Learn from a seeded sample of this many validation fans (0 = all of them)."""
    recent_days: float = 30.0
    """What the `growth` feature calls recent (ranking.features.Window)."""
    seed: int = 0

    def __post_init__(self):
        if self.candidates < 20:
            raise ConfigError(f"--candidates={self.candidates}: use >= 20 (NDCG@20 chooses)")
        if self.fit_fans < 0:
            raise ConfigError(f"--fit_fans={self.fit_fans}: use >= 0 (0 = every fan)")
