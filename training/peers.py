"""Peers on the same split, through the same evaluator: popularity, implicit's ALS, BPR and
ItemKNN, and EASE^R. Each takes the training pairs as a CSR user×creator matrix and gives a scorer
for `training.evaluate.top_k` / `evaluate`.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from training.evaluate import EmbeddingScorer, Interactions, default_device


def interaction_matrix(train: Interactions, num_creators: int) -> sp.csr_matrix:
    """Binary user × creator matrix of the training pairs (float32)."""
    data = np.ones(len(train.indices), dtype=np.float32)
    return sp.csr_matrix(
        (data, train.indices, train.indptr), shape=(len(train.indptr) - 1, num_creators)
    )


def fit_popularity(x: sp.csr_matrix, device: torch.device | None = None) -> EmbeddingScorer:
    """Every user gets the creators with the most training interactions (a rank-1 scorer)."""
    counts = np.asarray(x.sum(axis=0)).ravel()
    return EmbeddingScorer(np.ones((x.shape[0], 1)), np.log1p(counts)[:, None], device)


def fit_als(
    x: sp.csr_matrix,
    factors: int = 128,
    regularization: float = 0.01,
    alpha: float = 1.0,
    iterations: int = 15,
    seed: int = 0,
    device: torch.device | None = None,
) -> EmbeddingScorer:
    """implicit's iALS (CPU build), factors as a dot-product scorer."""
    model = als_model(x, factors, regularization, alpha, iterations, seed)
    return EmbeddingScorer(model.user_factors, model.item_factors, device)


def als_model(x: sp.csr_matrix, factors=128, regularization=0.01, alpha=1.0, iterations=15,
              seed=0):  # fmt: skip
    """implicit's fitted AlternatingLeastSquares on user × creator `x` (the ranker keeps its
    creator factors, ranking.collab)."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit parallelises itself; BLAS threads fight it
        model = AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            random_state=seed,
        )
        model.fit(x, show_progress=False)
    return model


def fit_bpr(
    x: sp.csr_matrix,
    factors: int = 128,
    learning_rate: float = 0.01,
    regularization: float = 0.01,
    iterations: int = 100,
    seed: int = 0,
    device: torch.device | None = None,
) -> EmbeddingScorer:
    """implicit's BPR; its factors carry the item bias as an extra column."""
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    model = BayesianPersonalizedRanking(
        factors=factors,
        learning_rate=learning_rate,
        regularization=regularization,
        iterations=iterations,
        random_state=seed,
    )
    model.fit(x, show_progress=False)
    return EmbeddingScorer(model.user_factors, model.item_factors, device)


class EaseScorer:
    """EASE^R (Steck, 2019): B = I − P·diag(1/diag(P)), P = (XᵀX + λI)⁻¹, zero diagonal;
    scores = X_u B. A dense C×C matrix: memory and an O(C³) inverse bound its catalog size."""

    def __init__(self, x: sp.csr_matrix, lam: float = 500.0, device: torch.device | None = None):
        self.device = device or default_device()
        self.x = x
        self.num_creators = x.shape[1]
        gram = torch.as_tensor((x.T @ x).toarray(), dtype=torch.float64, device=self.device)
        gram += lam * torch.eye(self.num_creators, dtype=torch.float64, device=self.device)
        p = torch.linalg.inv(gram)
        b = -p / torch.diagonal(p)[None, :]
        b.fill_diagonal_(0.0)
        self.b = b.float()  # [C, C]

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        rows = torch.as_tensor(self.x[users].toarray(), device=self.device)  # [b, C]
        return rows @ self.b


class ItemKnnScorer:
    """ItemKNN (implicit's nearest neighbours): each creator keeps its K most similar creators by
    the cosine of their fans (`weighting="cosine"`) or of BM25-weighted fans (`"bm25"`, which
    discounts the most active fans); a fan's score for a creator sums its similarity to the fan's
    training creators, scores = X_u S. S is sparse [C, C], K entries a row."""

    def __init__(self, x: sp.csr_matrix, k: int = 100, weighting: str = "cosine",
                 device: torch.device | None = None):  # fmt: skip
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

        models = {"cosine": CosineRecommender, "bm25": BM25Recommender}
        if weighting not in models:
            raise ValueError(f"ItemKNN weighting {weighting!r}: use cosine or bm25")
        model = models[weighting](K=k, num_threads=0)
        with warnings.catch_warnings():  # its cosine normalises to COO and warns it converts
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            model.fit(x, show_progress=False)
        self.device = device or default_device()
        self.x, self.similarity = x, model.similarity.astype(np.float32).tocsr()
        self.num_creators = x.shape[1]

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        scores = (self.x[users] @ self.similarity).toarray()  # [b, C]
        return torch.as_tensor(scores, device=self.device)
