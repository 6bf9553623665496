"""The rank stage's collaborative feature: implicit ALS's score of a (fan, candidate) pair, with
the fan's factors folded in from what the fan follows now.

The towers and ALS learn different things from the same pairs (on Last.fm each alone is about
as good as the other), and the ranker gains most from the one score it lacks: ALS's score
lifted the validation-chosen ranker from +2.9 % to +5.9 % NDCG@20 on Last.fm's test
(BENCHMARKS.md, issue 17). Only the creators' factors are kept. A fan's factors are solved from
the fan's followed creators at scoring time, the way implicit's `recalculate_user` does:

    x_u = (YᵀY + λI + (α − 1)·Y_hᵀY_h)⁻¹ · α·Σ_h y_h      (h: the fan's creators)

so a fan who followed someone a minute ago is scored on it, a fan the fit never saw gets
factors, and training and serving compute the feature the same way. The solve is f × f per fan
(f = 64–256), a fraction of a millisecond; no fan table is held anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from common.io import save_npy

ITEMS = "als_items.npy"
"""The creators' factors [C, f] float32 in a ranker's folder (ranking.store)."""


@dataclass
class Als:
    """ALS's creator factors and the constants its fold-in needs."""

    items: np.ndarray  # [C, f] float32, by creator index
    regularization: float
    alpha: float

    def __post_init__(self):
        y = self.items.astype(np.float64)
        self.gram = y.T @ y + self.regularization * np.eye(y.shape[1])  # YᵀY + λI, once

    @property
    def factors(self) -> int:
        return self.items.shape[1]

    def fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        """Each fan's factors [B, f] from the fan's creators (`history` [B, C], 0/1): the
        least-squares solve ALS's own user step makes; 0 for a fan who follows no one."""
        history = sp.csr_matrix(history)
        out = np.zeros((history.shape[0], self.factors), np.float64)
        for i in range(history.shape[0]):
            followed = history.indices[history.indptr[i] : history.indptr[i + 1]]
            followed = followed[followed < len(self.items)]
            if len(followed) == 0:
                continue
            y = self.items[followed].astype(np.float64)  # [h, f]
            a = self.gram + (self.alpha - 1.0) * (y.T @ y)
            out[i] = np.linalg.solve(a, self.alpha * y.sum(0))
        return out

    def score(self, history: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        """ALS's score [B, N] of each fan's candidates (creator indices [B, N]); a creator the
        factors do not cover (added after the fit) scores 0."""
        users = self.fold_in(history).astype(np.float32)
        known = candidates < len(self.items)
        rows = self.items[np.where(known, candidates, 0)]  # [B, N, f]
        return np.where(known, np.einsum("bf,bnf->bn", users, rows), 0.0).astype(np.float32)

    def save(self, folder: str | Path) -> dict:
        """Write the creators' factors into `folder`; the manifest entry that loads them."""
        save_npy(Path(folder) / ITEMS, np.ascontiguousarray(self.items, np.float32))
        return {"file": ITEMS, "factors": self.factors,
                "regularization": self.regularization, "alpha": self.alpha}  # fmt: skip

    @classmethod
    def load(cls, folder: str | Path, entry: dict) -> Als:
        items = np.load(Path(folder) / entry["file"], allow_pickle=False)
        return cls(np.ascontiguousarray(items, np.float32), entry["regularization"],
                   entry["alpha"])  # fmt: skip
