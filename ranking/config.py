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
    als_factors: int = 64
    """ALS's factors for the `als_score` feature (ranking.collab), fit on the training window
    when the ranker is trained; 0 = no ALS (the column is 0). Set the ALS settings to those
    `benchmarks/quality.py` chose on validation for the dataset."""
    als_regularization: float = 10.0
    als_alpha: float = 10.0
    als_iterations: int = 15

    def __post_init__(self):
        if self.candidates < 20:
            raise ConfigError(f"--candidates={self.candidates}: use >= 20 (NDCG@20 chooses)")
        if self.fit_fans < 0:
            raise ConfigError(f"--fit_fans={self.fit_fans}: use >= 0 (0 = every fan)")
        if self.als_factors < 0 or self.als_iterations < 1 or self.als_alpha <= 0:
            raise ConfigError(
                f"--als_factors={self.als_factors} --als_iterations={self.als_iterations} "
                f"--als_alpha={self.als_alpha}: use factors >= 0 (0 = off), iterations >= 1 "
                f"and alpha > 0"
            )
