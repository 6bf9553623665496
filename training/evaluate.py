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
) -> np.ndarray:
    """[len(users), k] creator indices, best first, with each user's `exclude` row masked and
    the reserved slots (0 = pad, 1 = unknown) never recommended. `scorer(users)` returns the
    [b, C] score block of a chunk of users (EmbeddingScorer, or a model's own, e.g. EASE^R)."""
    chunk = max(1, max_scores // scorer.num_creators)
    out = np.empty((len(users), k), dtype=np.int64)
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
        out[start : start + len(batch)] = scores.topk(k, dim=1).indices.cpu().numpy()
    return out


def metrics(
    recommended: np.ndarray,  # [U, K] from top_k, rows aligned with `users`
    test: Interactions,
    users: np.ndarray,
    popularity: np.ndarray,  # [C] train interactions per creator
    cold_threshold: int = 5,
) -> dict[str, float]:
    """recall, NDCG, MRR and hit rate at K over users, plus catalog coverage, the average
    popularity of what is recommended, and recall on cold creators (≤ cold_threshold train
    interactions), over the users who have such test creators."""
    k = recommended.shape[1]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recall, ndcg, mrr, hit, cold = [], [], [], [], []
    for row, u in zip(recommended, users, strict=True):
        truth = test.row(u)
        hits = np.isin(row, truth)
        recall.append(hits.sum() / len(truth))
        ndcg.append((discounts * hits).sum() / discounts[: min(k, len(truth))].sum())
        mrr.append(1.0 / (np.argmax(hits) + 1) if hits.any() else 0.0)
        hit.append(float(hits.any()))
        cold_truth = truth[popularity[truth] <= cold_threshold]
        if len(cold_truth):
            cold.append(np.isin(row, cold_truth).sum() / len(cold_truth))
    catalog = int((popularity >= 0).sum()) - 2  # all creators but the reserved slots
    return {
        f"recall@{k}": float(np.mean(recall)),
        f"ndcg@{k}": float(np.mean(ndcg)),
        f"mrr@{k}": float(np.mean(mrr)),
        f"hit_rate@{k}": float(np.mean(hit)),
        f"coverage@{k}": len(np.unique(recommended)) / max(catalog, 1),
        f"avg_popularity@{k}": float(popularity[recommended].mean()),
        f"cold_recall@{k}": float(np.mean(cold)) if cold else float("nan"),
        "evaluated_users": len(users),
        "cold_users": len(cold),
    }


def evaluate(
    scorer,
    train: Interactions,
    test: Interactions,
    popularity: np.ndarray,
    k: int = 20,
    max_scores: int = 1 << 26,
) -> dict[str, float]:
    """Exact full-corpus evaluation of every user with at least one test creator."""
    users = np.flatnonzero(test.lengths() > 0)
    recommended = top_k(scorer, train, k, users, max_scores)
    return metrics(recommended, test, users, popularity)
