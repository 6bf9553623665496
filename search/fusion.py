"""Fusing the retrievers' lists into one (creator search, issue 16). Each retriever gives its
candidates best first, with its own scores (BM25, cosine, the user tower's inner product):
scales that cannot be added as they are. Two ways to put them together:

- reciprocal-rank fusion (Cormack et al., 2009): a creator scores Σ w_r / (c + rank_r), rank
  1-based in each list that has it; only ranks count, so no scale matters;
- weighted score fusion: each list's scores min-max normalised to [0, 1] over its own
  candidates (0 where a list lacks the creator), then Σ w_r · score_r.

The method and its constants (c, the weights) come from config, chosen on a validation split.
Ties go to the creator that stands higher in the first list having it (then by row), so a
fused list is the same on every run.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

Ranked = tuple[np.ndarray, np.ndarray]
"""(rows, scores) of one retriever, best first."""


def rrf(lists: Mapping[str, Ranked], c: float = 60.0, weights: Mapping[str, float] | None = None):
    """[(row, fused score)] best first: Σ over lists of weight / (c + rank)."""
    fused: dict[int, float] = {}
    for name, (rows, _) in lists.items():
        w = 1.0 if weights is None else weights.get(name, 0.0)
        for rank, row in enumerate(rows.tolist(), start=1):
            fused[row] = fused.get(row, 0.0) + w / (c + rank)
    return _ordered(fused, lists)


def weighted(lists: Mapping[str, Ranked], weights: Mapping[str, float]):
    """[(row, fused score)] best first: Σ over lists of weight · min-max normalised score."""
    fused: dict[int, float] = {}
    for name, (rows, scores) in lists.items():
        w = weights.get(name, 0.0)
        for row, score in zip(rows.tolist(), _minmax(scores).tolist(), strict=True):
            fused[row] = fused.get(row, 0.0) + w * score
    return _ordered(fused, lists)


def by_method(lists: Mapping[str, Ranked], method: str, c: float, weights: Mapping[str, float]):
    """[(row, fused score)] best first, by `method`: rrf (with c) or weighted."""
    return rrf(lists, c, weights) if method == "rrf" else weighted(lists, weights)


def ranks(lists: Mapping[str, Ranked]) -> dict[int, dict[str, int]]:
    """Each candidate's 1-based rank in every list that has it: why it stands where it does."""
    out: dict[int, dict[str, int]] = {}
    for name, (rows, _) in lists.items():
        for rank, row in enumerate(rows.tolist(), start=1):
            out.setdefault(row, {})[name] = rank
    return out


def _minmax(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    if len(scores) == 0:
        return scores
    lo, hi = scores.min(), scores.max()
    return np.ones_like(scores) if hi == lo else (scores - lo) / (hi - lo)


def _ordered(fused: dict[int, float], lists: Mapping[str, Ranked]) -> list[tuple[int, float]]:
    first: dict[int, tuple[int, int]] = {}
    for i, (rows, _) in enumerate(lists.values()):
        for rank, row in enumerate(rows.tolist()):
            first.setdefault(row, (i, rank))
    return sorted(fused.items(), key=lambda kv: (-kv[1], first[kv[0]], kv[0]))
