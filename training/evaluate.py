"""Full-corpus, exact evaluation: every creator scored for every evaluated user.

The protocol behind the published Gowalla figures: score all creators, drop the user's training
creators from the ranking, take the top K, and average recall@K (hits / |test creators|) and
NDCG@K over test users. Users are processed in chunks so users × creators never sits in memory at
once (a 100 K × 1 M score matrix would be 400 GB); on GPU when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

EVAL_SPLIT = "test"
"""The split each epoch's evaluation scores when the dataset has no validation split carved
from train (data split.validation_fraction; with one, "validation"); every evaluation record
names it."""
SELECTION_METRIC = "recall@20"
"""The validation metric that chooses: the checkpoint a training run keeps (`checkpoint.monitor`
is `val/` + this) and every peer's setting in benchmarks/quality.py."""
EVALUATIONS = "evaluations"
"""The checkpoint key under which training keeps its evaluations, epoch by epoch (the index
records them in its manifest for the explorer's health view)."""
TRAINED_AT = "trained_at"
"""The checkpoint key under which training records when it saved the checkpoint's weights (ISO
8601, UTC): the end of the training they hold. The index copies it into its manifest's `model`
entry, where serving reads the model's age."""


@dataclass
class Interactions:
    """Per-user creator lists as CSR: creators of user u are indices[indptr[u]:indptr[u+1]]."""

    indptr: np.ndarray  # [num_users + 1] int64
    indices: np.ndarray  # [nnz] int64

    @classmethod
    def from_pairs(cls, users: np.ndarray, creators: np.ndarray, num_users: int) -> Interactions:
        """CSR of the distinct (user, creator) pairs: a repeated pair counts once."""
        keys = np.unique(users.astype(np.int64) * (int(creators.max(initial=0)) + 1) + creators)
        users, creators = np.divmod(keys, int(creators.max(initial=0)) + 1)
        counts = np.bincount(users, minlength=num_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(indptr, creators.astype(np.int64))

    @classmethod
    def union(cls, a: Interactions, b: Interactions) -> Interactions:
        """Every pair of either (train and validation: what a fan is known to like at test)."""
        users = [np.repeat(np.arange(len(x.indptr) - 1), x.lengths()) for x in (a, b)]
        return cls.from_pairs(np.concatenate(users), np.concatenate([a.indices, b.indices]),
                              len(a.indptr) - 1)  # fmt: skip

    def row(self, u: int) -> np.ndarray:
        return self.indices[self.indptr[u] : self.indptr[u + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class EmbeddingScorer:
    """Scores as dot products of user and creator vectors (towers, ALS, BPR)."""

    def __init__(self, user_emb, creator_emb, device: torch.device | None = None):
        self.device = device or default_device()
        self.users = torch.as_tensor(user_emb, dtype=torch.float32)
        self.creators = torch.as_tensor(creator_emb, dtype=torch.float32).to(self.device)
        self.num_creators = self.creators.shape[0]

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        return self.users[torch.as_tensor(users)].to(self.device) @ self.creators.T  # [b, C]


def top_k(
    scorer,
    exclude: Interactions,
    k: int,
    users: np.ndarray,
    max_scores: int = 1 << 26,
    with_scores: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """[len(users), k] creator indices, best first, with each user's `exclude` row masked and
    the reserved slots (0 = pad, 1 = unknown) never recommended. `scorer(users)` returns the
    [b, C] score block of a chunk of users (EmbeddingScorer, or a model's own, e.g. EASE^R).
    with_scores: also their [len(users), k] float32 scores (a rank stage's candidates)."""
    chunk = max(1, max_scores // scorer.num_creators)
    out = np.empty((len(users), k), dtype=np.int64)
    values = np.empty((len(users), k), dtype=np.float32)
    for start in range(0, len(users), chunk):
        batch = users[start : start + chunk]
        scores = scorer(batch)  # [b, C]
        device = scores.device
        scores[:, :2] = -torch.inf
        rows = np.repeat(np.arange(len(batch)), exclude.lengths()[batch])
        cols = np.concatenate([exclude.row(u) for u in batch]) if len(rows) else rows
        scores[
            torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)
        ] = -torch.inf
        best = scores.topk(k, dim=1)
        out[start : start + len(batch)] = best.indices.cpu().numpy()
        values[start : start + len(batch)] = best.values.float().cpu().numpy()
    return (out, values) if with_scores else out


SUMMED = ("recall", "ndcg", "mrr", "hit_rate", "cold_recall")


def metric_sums(
    recommended: np.ndarray,  # [U, K] from top_k, rows aligned with `users`
    test: Interactions,
    users: np.ndarray,
    popularity: np.ndarray,  # [C] train interactions per creator
    ks: tuple[int, ...] = (20,),
    cold_threshold: int = 5,
) -> dict[str, np.ndarray]:
    """Per-K sums over a block of users, mergeable by addition (across chunks and ranks).

    Keys: `<metric>@<k>` sums for SUMMED, `users`, `cold_users`, `popularity@<k>` (sum of the
    recommended creators' popularity) and `counts@<k>` ([C] how often each creator was shown).
    """
    out: dict[str, np.ndarray] = {"users": np.float64(len(users)), "cold_users": np.float64(0)}
    hits_all = np.zeros(recommended.shape, dtype=bool)
    cold_all = np.zeros(recommended.shape, dtype=bool)
    n_truth = np.zeros(len(users))
    n_cold = np.zeros(len(users))
    for i, u in enumerate(users):
        truth = test.row(u)
        hits_all[i] = np.isin(recommended[i], truth)
        cold_truth = truth[popularity[truth] <= cold_threshold]
        cold_all[i] = np.isin(recommended[i], cold_truth)
        n_truth[i], n_cold[i] = len(truth), len(cold_truth)
    has_cold = n_cold > 0
    out["cold_users"] = np.float64(has_cold.sum())
    for k in ks:
        hits = hits_all[:, :k]
        first = np.where(hits.any(1), 1.0 / (hits.argmax(1) + 1), 0.0)
        out[f"recall@{k}"] = (hits.sum(1) / n_truth).sum()
        out[f"ndcg@{k}"] = _ndcg_rows(hits, n_truth).sum()
        out[f"mrr@{k}"] = first.sum()
        out[f"hit_rate@{k}"] = hits.any(1).sum(dtype=np.float64)
        out[f"cold_recall@{k}"] = (cold_all[has_cold, :k].sum(1) / n_cold[has_cold]).sum()
        out[f"popularity@{k}"] = popularity[recommended[:, :k]].sum(dtype=np.float64)
        out[f"counts@{k}"] = np.bincount(
            recommended[:, :k].ravel(), minlength=len(popularity)
        ).astype(np.float64)
    return out


def _ndcg_rows(hits: np.ndarray, n_truth: np.ndarray) -> np.ndarray:
    """Each row's binary NDCG at K = hits' width, the ideal list holding min(truth, K) hits."""
    k = hits.shape[1]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.minimum(n_truth, k).astype(np.int64) - 1]
    return (hits * discounts).sum(1) / ideal


def ndcg_per_user(recommended: np.ndarray, test: Interactions, users: np.ndarray) -> np.ndarray:
    """[U] each user's NDCG at K = recommended's width, for paired comparisons of two lists
    (the mean is `metrics`' ndcg@K)."""
    hits = np.stack([np.isin(recommended[i], test.row(u)) for i, u in enumerate(users)])
    return _ndcg_rows(hits, test.lengths()[users])


def merge_sums(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: a[key] + b[key] for key in a}


def finalize(sums: dict[str, np.ndarray], ks: tuple[int, ...] = (20,)) -> dict[str, float]:
    """Sums → recall, NDCG, MRR and hit rate at K averaged over users, catalog coverage, the
    average popularity of what is recommended, and recall on cold creators (averaged over the
    users who have cold test creators)."""
    users, cold_users = float(sums["users"]), float(sums["cold_users"])
    out: dict[str, float] = {}
    for k in ks:
        for name in SUMMED:
            denom = cold_users if name == "cold_recall" else users
            out[f"{name}@{k}"] = float(sums[f"{name}@{k}"]) / denom if denom else float("nan")
        catalog = len(sums[f"counts@{k}"]) - 2  # all creators but the reserved slots
        out[f"coverage@{k}"] = int((sums[f"counts@{k}"] > 0).sum()) / max(catalog, 1)
        out[f"avg_popularity@{k}"] = float(sums[f"popularity@{k}"]) / max(users * k, 1)
    out["evaluated_users"] = int(users)
    out["cold_users"] = int(cold_users)
    return out


def metrics(
    recommended: np.ndarray,
    test: Interactions,
    users: np.ndarray,
    popularity: np.ndarray,
    cold_threshold: int = 5,
    ks: tuple[int, ...] | None = None,
) -> dict[str, float]:
    """All metrics of `finalize` for one block of recommendations (K = its width by default)."""
    ks = ks or (recommended.shape[1],)
    return finalize(metric_sums(recommended, test, users, popularity, ks, cold_threshold), ks)


def evaluate(
    scorer,
    train: Interactions,
    test: Interactions,
    popularity: np.ndarray,
    k: int | tuple[int, ...] = 20,
    max_scores: int = 1 << 26,
) -> dict[str, float]:
    """Exact full-corpus evaluation of every user with at least one test creator, at one K or
    several (one ranking at the largest)."""
    ks = (k,) if isinstance(k, int) else tuple(k)
    users = np.flatnonzero(test.lengths() > 0)
    recommended = top_k(scorer, train, max(ks), users, max_scores)
    return metrics(recommended, test, users, popularity, ks=ks)
