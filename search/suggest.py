"""Name completion at query time: what a fan has typed so far → the most popular creators whose
name, from one of its words on, starts with it (index.suggest wrote the keys).

    suggest = Suggest(version_folder / store.SUGGEST)
    suggest.complete("clara ink", n=8)   # [(faiss row, popularity), ...], most popular first

The typed prefix is a contiguous range of the sorted keys (two binary searches). A short
prefix's range holds most of the catalog ("t": every name with a word starting with t), so the
most popular in it are not found by sorting the range: a max segment tree over the keys'
popularity answers "the most popular in [lo, hi)" in O(log E), and the best n come off a heap
of sub-ranges (split around each one taken), O(n log E) whatever the range's size.
"""

from __future__ import annotations

import heapq
from pathlib import Path

import numpy as np

from common.errors import MissingInputError
from index import suggest as built


class Suggest:
    def __init__(self, folder: Path):
        folder = Path(folder)
        if not (folder / built.KEYS).exists():
            raise MissingInputError(
                f"no name completion at {folder}: the version was built before search; rebuild "
                f"it (`python -m index rebuild --config ...`)"
            )
        self.keys, self.rows, self.popularity = (
            np.load(folder / name, mmap_mode="r", allow_pickle=False)
            for name in (built.KEYS, built.ROWS, built.POPULARITY)
        )
        # each key's creator's popularity, and its rank when popularity ties (lower row first)
        self.score = np.asarray(self.popularity, np.int64)[self.rows] * (len(self.popularity) + 1)
        self.score += len(self.popularity) - np.asarray(self.rows, np.int64)
        self.size, self.tree = _max_tree(self.score)

    def complete(self, typed: str, n: int) -> list[tuple[int, int]]:
        """Up to n (row, popularity), most popular first, each creator once."""
        prefix = built.key(typed)
        if typed[-1:].isspace() and prefix:
            prefix += b" "  # a finished word: "ink " is not "inkwell"
        lo = int(np.searchsorted(self.keys, prefix, side="left"))
        hi = int(np.searchsorted(self.keys, prefix + b"\xff", side="left"))
        out, seen, heap = [], set(), []
        self._push(heap, lo, hi)
        while heap and len(out) < n:
            _, at, left, right = heapq.heappop(heap)
            row = int(self.rows[at])
            if row not in seen:
                seen.add(row)
                out.append((row, int(self.popularity[row])))
            self._push(heap, left, at)
            self._push(heap, at + 1, right)
        return out

    def _push(self, heap: list, lo: int, hi: int) -> None:
        if lo < hi:
            at = self._best(lo, hi)
            heapq.heappush(heap, (-int(self.score[at]), at, lo, hi))

    def _best(self, lo: int, hi: int) -> int:
        """The key position of highest score in [lo, hi) (bottom-up segment tree walk)."""
        best, tree, score = -1, self.tree, self.score
        lo, hi = lo + self.size, hi + self.size
        while lo < hi:
            if lo & 1:
                best = _better(best, int(tree[lo]), score)
                lo += 1
            if hi & 1:
                hi -= 1
                best = _better(best, int(tree[hi]), score)
            lo, hi = lo >> 1, hi >> 1
        return best


def _better(a: int, b: int, score: np.ndarray) -> int:
    if a < 0:
        return b
    if b < 0:
        return a
    return a if score[a] >= score[b] else b


def _max_tree(score: np.ndarray) -> tuple[int, np.ndarray]:
    """A segment tree of key positions: node i holds the position of the highest score under
    it (leaves at size + position; -1 past the end), built level by level in numpy."""
    size = 1 << max(int(len(score) - 1).bit_length(), 0)
    tree = np.full(2 * size, -1, np.int64)
    tree[size : size + len(score)] = np.arange(len(score))
    padded = np.append(np.asarray(score, np.int64), np.int64(-1))  # -1 → the pad's score
    level = size
    while level > 1:
        left, right = tree[level : 2 * level : 2], tree[level + 1 : 2 * level : 2]
        take_left = padded[left] >= padded[right]
        tree[level // 2 : level] = np.where(take_left, left, right)
        level //= 2
    return size, tree
