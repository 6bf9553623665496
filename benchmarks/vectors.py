"""Synthetic creator vectors shaped like trained ones, for the index benchmarks: numpy only, so a
machine without faiss (a lent GPU whose image lacks it) can make the same corpus.

    xb = clustered(1_000_000, 64, 1_000_000, seed=1)     # the corpus
    xq = clustered(10_000, 64, 1_000_000, seed=2)        # queries from the same structure
"""

from __future__ import annotations

import numpy as np


def clustered(n: int, d: int, corpus: int, seed: int, spread: float = 0.5) -> np.ndarray:
    """n unit vectors shaped like trained creator embeddings: topics (one per 500 creators of
    the corpus) of sub-communities (one per 20) of creators, in a d/2-dim subspace, with a
    shared mean direction and a little full-rank noise. Calibrated on the Last.fm towers'
    embeddings: 80 % of the variance in about a third of the dimensions, a mean vector of norm
    ~0.4, a few close neighbours per query and then a steep fall-off, and a similar recall
    against nprobe curve. Isotropic Gaussian blobs instead make every within-blob neighbour
    equally close, which no trained model produces and which no 4-bit code can rank. The
    structure depends on `corpus` only, so queries (another seed) come from the corpus's."""
    rank, subs = max(2, d // 2), max(1, corpus // 20)
    g = np.random.default_rng(0)
    topics = g.standard_normal((max(1, corpus // 500), rank)).astype(np.float32)
    centres = topics[g.integers(0, len(topics), subs)]
    centres += g.standard_normal((subs, rank)).astype(np.float32)
    basis = np.linalg.qr(g.standard_normal((d, rank)))[0].T.astype(np.float32)  # [rank, d]
    mean = g.standard_normal(d).astype(np.float32)
    mean *= 0.4 / np.linalg.norm(mean)
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 262_144):  # in blocks: the peak stays near the output's size
        m = min(262_144, n - s)
        z = centres[rng.integers(0, subs, m)] + spread * rng.standard_normal((m, rank), np.float32)
        block = z @ basis
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[s : s + m] = block + 0.05 * rng.standard_normal((m, d), np.float32) + mean
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x
