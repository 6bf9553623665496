"""Re-ordering a ranked list for what accuracy alone does not see: variety (MMR) and a category mix
that matches the fan's history (calibration), each with one trade-off constant, and the figures
that measure both.

- `mmr`: maximal marginal relevance (Carbonell & Goldstein, SIGIR 1998). Greedily picks
  argmax_i (1 − λ)·s_i − λ·max_{j ∈ S} cos(v_i, v_j), S the creators already picked, s the
  list's scores scaled to [0, 1] (so λ trades like for like with a cosine), v the creator tower
  embeddings. λ = 0 is the ranked order.
- `calibrate`: Steck, "Calibrated Recommendations" (RecSys 2018). Greedily picks the creator that
  maximises (1 − λ)·Σ_{i ∈ S} s_i − λ·C_KL(p, q̃(S)), where p(g) is the fan's history's category
  mix, q(g) the list's (each creator one category, each position weighted alike) and
  q̃ = (1 − α)·q + α·p with α = 0.01 (the paper's smoothing, so KL stays finite).
  λ = 0 is the ranked order.

Figures over a set of lists (`list_figures`): intra-list diversity (mean pairwise 1 − cos of the
list's embeddings; Ziegler et al., WWW 2005), calibration KL (C_KL(p, q̃) as above, mean over
fans with a history), and catalog coverage (share of the catalog in at least one list).
"""

from __future__ import annotations

import numpy as np

ALPHA = 0.01
"""Steck's smoothing of the list's category mix towards the history's."""


def unit_scores(scores: np.ndarray) -> np.ndarray:
    """A list's scores scaled to [0, 1] (all equal: all 1)."""
    s = np.asarray(scores, np.float64)
    span = s.max() - s.min() if len(s) else 0.0
    return (s - s.min()) / span if span > 0 else np.ones_like(s)


def mmr(scores: np.ndarray, vectors: np.ndarray, k: int, lam: float) -> np.ndarray:
    """Positions of the k picked, in order, from a list of scores [n] and unit vectors [n, d]."""
    n = len(scores)
    k = min(k, n)
    if lam <= 0 or n == 0:
        return np.argsort(-np.asarray(scores), kind="stable")[:k]
    rel = (1 - lam) * unit_scores(scores)
    sims = vectors @ vectors.T
    nearest = np.full(n, -np.inf)  # max cosine to the picked; -inf: nothing picked yet
    free = np.ones(n, bool)
    picked = []
    for _ in range(k):
        gain = rel - lam * np.where(np.isfinite(nearest), nearest, 0.0)
        gain[~free] = -np.inf
        best = int(np.argmax(gain))
        picked.append(best)
        free[best] = False
        nearest = np.maximum(nearest, sims[best])
    return np.asarray(picked, np.int64)


def history_mix(categories: np.ndarray, num_categories: int) -> np.ndarray:
    """p(g): the share of a fan's history in each category [num_categories]."""
    counts = np.bincount(categories, minlength=num_categories).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def kl(p: np.ndarray, q: np.ndarray, alpha: float = ALPHA) -> float:
    """C_KL(p, q̃) = Σ_g p(g) log(p(g) / q̃(g)), q̃ = (1 − α)·q + α·p, over g with p(g) > 0."""
    q = (1 - alpha) * q + alpha * p
    on = p > 0
    return float((p[on] * np.log(p[on] / q[on])).sum())


def calibrate(scores, categories, p: np.ndarray, k: int, lam: float) -> np.ndarray:
    """Positions of the k picked, in order, from a list of scores [n] and each creator's
    category [n], for a fan whose history mix is p [num_categories]."""
    n = len(scores)
    k = min(k, n)
    if lam <= 0 or n == 0 or p.sum() == 0:
        return np.argsort(-np.asarray(scores), kind="stable")[:k]
    rel, on = unit_scores(scores), p > 0
    counts, free = np.zeros(len(p)), np.ones(n, bool)
    picked, total = [], 0.0
    for size in range(1, k + 1):
        # q̃ of the list without the candidate, over the new size; adding a creator of category
        # g raises q̃(g) alone by (1 - α) / size, so each candidate's KL is one term's change
        base = (1 - ALPHA) * counts / size + ALPHA * p  # > 0 wherever p > 0
        terms = np.where(on, p * np.log(np.where(on, p, 1.0) / np.where(on, base, 1.0)), 0.0)
        g = categories
        after = p[g] * np.log(np.where(on[g], p[g], 1.0) / (base[g] + (1 - ALPHA) / size))
        divergence = terms.sum() + np.where(on[g], after - terms[g], 0.0)
        objective = (1 - lam) * (total + rel) - lam * divergence
        objective[~free] = -np.inf
        best = int(np.argmax(objective))
        picked.append(best)
        free[best] = False
        counts[categories[best]] += 1
        total += rel[best]
    return np.asarray(picked, np.int64)


def intra_list_diversity(vectors: np.ndarray) -> float:
    """Mean over the list's pairs of 1 − cos (unit vectors [k, d]); 0 for fewer than 2."""
    k = len(vectors)
    if k < 2:
        return 0.0
    sims = vectors @ vectors.T
    return float((k * (k - 1) - (sims.sum() - np.trace(sims))) / (k * (k - 1)))


def list_figures(lists, vectors, categories, histories, num_creators: int) -> dict:
    """Mean intra-list diversity, mean calibration KL (fans with a history) and catalog
    coverage of `lists` (creator indices [k] each), given unit `vectors` [C, d], `categories`
    [C] and each fan's history's category mix (`histories`, [G] each)."""
    ild = [intra_list_diversity(vectors[row]) for row in lists]
    g = len(histories[0]) if len(histories) else 0
    kls = [kl(p, history_mix(categories[row], g)) for row, p in zip(lists, histories, strict=True)
           if p.sum() > 0]  # fmt: skip
    seen = np.unique(np.concatenate([np.asarray(r) for r in lists])) if len(lists) else []
    return {"intra_list_diversity": float(np.mean(ild)) if ild else 0.0,
            "calibration_kl": float(np.mean(kls)) if kls else 0.0,
            "coverage": len(seen) / num_creators}  # fmt: skip
