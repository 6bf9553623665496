"""A vectorised open-addressing hash table from 128-bit id fingerprints to vocabulary indices.

Looking ids up in a vocabulary of millions is the hottest step of prepare. Arrow's hash kernels
rebuild a table of the whole vocabulary on every call and miss cache on every probe once it
holds a few hundred thousand strings (measured 2-3x slower than everything else in a chunk).
Here each id is fingerprinted once per row (two independent 64-bit string hashes, computed in
bulk by polars) and looked up in flat numpy arrays with linear probing, one vectorised pass per
probe step. Two ids match when both hashes match: a false match needs a 128-bit collision.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

_EMPTY = np.uint64(2**64 - 1)  # value of a free slot
_SEEDS = (0x5EED0001, 0x5EED0002)
_LOAD = 4  # capacity ≥ 4 × size: about 1.2 probes per lookup


def fingerprint(ids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes of each string (nulls hash like any other value)."""
    series = pl.from_arrow(ids)
    if series.dtype != pl.String:
        series = series.cast(pl.String)
    return tuple(series.hash(seed=s).to_numpy() for s in _SEEDS)


class HashIndex:
    """Fingerprint → value map; values are vocabulary indices (non-negative)."""

    def __init__(self, capacity: int = 1 << 10):
        self._alloc(capacity)
        self.size = 0

    def _alloc(self, capacity: int) -> None:
        capacity = 1 << max(10, int(capacity - 1).bit_length())
        self.mask = np.uint64(capacity - 1)
        # One row per slot, (hash1, hash2, value): a probe reads one cache line, not three.
        self.table = np.zeros((capacity, 3), dtype=np.uint64)
        self.table[:, 2] = _EMPTY

    def __len__(self) -> int:
        return self.size

    def insert(self, h1: np.ndarray, h2: np.ndarray, values: np.ndarray) -> None:
        """Add fingerprints (assumed absent) with their values; grows to keep the load low."""
        if _LOAD * (self.size + len(h1)) > len(self.table):
            self._grow(_LOAD * (self.size + len(h1)))
        values = values.astype(np.uint64)
        pending = np.arange(len(h1))
        slot = h1 & self.mask
        while len(pending):
            s = slot[pending]
            free = self.table[s, 2] == _EMPTY
            # Several pending keys may want the same free slot: the first of each wins it.
            cand, cand_slot = pending[free], s[free]
            taken_slots, first = np.unique(cand_slot, return_index=True)
            winners = cand[first]
            self.table[taken_slots] = np.stack([h1[winners], h2[winners], values[winners]], 1)
            placed = np.zeros(len(h1), dtype=bool)
            placed[winners] = True
            pending = pending[~placed[pending]]
            slot[pending] = (slot[pending] + np.uint64(1)) & self.mask
        self.size += len(h1)

    def lookup(self, h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
        """Value of each fingerprint as int32, -1 where absent."""
        # np.take with intp indices: measured 3.5x faster than fancy-indexing the 2-D table.
        slot = (h1 & self.mask).view(np.int64)  # masked below 2**63: a free reinterpretation
        rows = np.take(self.table, slot, axis=0)  # [n, 3]: the first probe, all queries at once
        hit = (rows[:, 0] == h1) & (rows[:, 1] == h2)
        out = np.where(hit, rows[:, 2], np.uint64(2**32 - 1)).astype(np.uint32).view(np.int32)
        pending = np.flatnonzero(~hit & (rows[:, 2] != _EMPTY))
        slot = (slot[pending] + 1) & int(self.mask)
        while len(pending):  # rare: linear probing past occupied slots
            rows = np.take(self.table, slot, axis=0)
            hit = (rows[:, 0] == h1[pending]) & (rows[:, 1] == h2[pending])
            out[pending[hit]] = rows[hit, 2]
            more = ~hit & (rows[:, 2] != _EMPTY)
            pending, slot = pending[more], (slot[more] + 1) & int(self.mask)
        return out

    def _grow(self, capacity: int) -> None:
        live = self.table[self.table[:, 2] != _EMPTY]
        self._alloc(capacity)
        self.size = 0
        if len(live):
            self.insert(live[:, 0], live[:, 1], live[:, 2])
