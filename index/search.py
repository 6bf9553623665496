"""Search with exclusions: the top k rows of an index per query, never a banned one.

A fan must never be shown a creator they already follow, asked to exclude, or their own
account, and must still get k answers whenever the corpus has k others. Filtering after an
ANN search would return fewer; so the search over-fetches, k·`OVERFETCH` plus the number of
banned rows, in one batched call (`overfetch`), and `complete` drops the banned rows of each
query; a query still short asks the index again alone, twice as deep each time, and falls back
to exact scores over the stored vectors `xb` once the index has no more to give (its probed
cells exhausted). `filtered_search` is the two together; tests/index/test_search.py checks it
against brute force.

Faiss's vocabulary: `xq` [nq, d] queries, `xb` [nb, d] the indexed vectors (row i = faiss id
i), `D`/`I` scores and ids (-1 where an index has fewer than asked), `banned` one set of rows
per query. A Python set, not an array: a request bans a few dozen rows, and membership tests
over an answer of a few dozen ids are the hot loop; np.isin took 34 µs a request there, 5× a
set's (1 M creators, batches of 16: 131 against 87 µs a request for the whole pipeline).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import faiss
import numpy as np

OVERFETCH = 2.0
"""The first search asks for k·OVERFETCH + the query's banned rows."""


def overfetch(
    index: faiss.Index,
    xq: np.ndarray,
    ks: Sequence[int],
    banned: Sequence[Collection[int]],
    overfetch: float = OVERFETCH,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One search for every query, deep enough for the most demanding: (D, I, depth asked)."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    depth = max(int(k * overfetch) + len(b) for k, b in zip(ks, banned, strict=True))
    depth = min(index.ntotal, max(depth, 1))
    D, I = index.search(xq, depth)  # noqa: E741
    return D, I, depth


def complete(
    index: faiss.Index,
    q: np.ndarray,
    D: np.ndarray,
    I: np.ndarray,  # noqa: E741
    k: int,
    banned: set[int],
    xb: np.ndarray,
    need: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The first k unbanned (rows, scores) of one query's answer D, I [depth]; deeper searches,
    then exact scores, when that leaves it short of what the corpus allows. With `need` < k,
    fewer than k are enough once the probed cells are exhausted, as long as `need` came back
    (a rank stage's candidates: it wants k to choose from, but only a request's k must come
    back, and exact scores over the whole corpus cost more than the ranking)."""
    want = max(min(k, index.ntotal - len(banned)), 0)
    need = want if need is None else min(need, want)
    rows, scores = unbanned(D, I, banned, want)
    depth = len(I)
    while len(rows) < want:
        if depth >= index.ntotal or (I < 0).any():  # the probed cells are exhausted
            return (rows, scores) if len(rows) >= need else exact(xb, q, want, banned)
        depth = min(index.ntotal, depth * 2)
        D, I = index.search(np.ascontiguousarray(q[None, :], dtype=np.float32), depth)  # noqa: E741
        D, I = D[0], I[0]  # noqa: E741
        rows, scores = unbanned(D, I, banned, want)
    return rows, scores


def unbanned(
    D: np.ndarray,
    I: np.ndarray,  # noqa: E741
    banned: set[int],
    want: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The first `want` (rows, scores) of one answer that are real (>= 0) and not banned."""
    rows, scores = [], []
    for i, d in zip(I.tolist(), D.tolist(), strict=True):
        if len(rows) == want:
            break
        if i >= 0 and i not in banned:
            rows.append(i)
            scores.append(d)
    return np.asarray(rows, dtype=np.int64), np.asarray(scores, dtype=np.float32)


def exact(
    xb: np.ndarray, q: np.ndarray, want: int, banned: set[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The top `want` unbanned rows by exact inner product of q with every row of xb."""
    scores = np.asarray(xb @ q, dtype=np.float32)
    if banned:
        scores[list(banned)] = -np.inf
    if want <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    top = np.argpartition(-scores, want - 1)[:want]
    top = top[np.argsort(-scores[top], kind="stable")]
    return top.astype(np.int64), scores[top]


def filtered_search(
    index: faiss.Index,
    xq: np.ndarray,
    ks: Sequence[int],
    banned: Sequence[Collection[int]],
    xb: np.ndarray,
    overfetch_factor: float = OVERFETCH,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query, the top k (rows, scores) of the index that are not in its banned rows (a set,
    or any collection of rows, e.g. an array)."""
    banned = [
        b if isinstance(b, set) else set(np.asarray(b, dtype=np.int64).tolist()) for b in banned
    ]
    D, I, _ = overfetch(index, xq, ks, banned, overfetch_factor)  # noqa: E741
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    return [complete(index, xq[i], D[i], I[i], k, banned[i], xb) for i, k in enumerate(ks)]
