"""Id vocabularies that stay stable across rebuilds.

Index 0 is padding and 1 is unknown in every vocabulary. A rebuild starts from the previous
vocabulary and only appends: ids seen before keep their index, so a trained model's embedding rows
stay valid, and new ids (in order of first appearance) get the next free indices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.io import write_parquet
from data.contract import RESERVED, UNK
from data.hashindex import HashIndex, fingerprint
from data.tables import vocab_file
from data.validate import contiguous

_ARROW_LOOKUP_UP_TO = 100_000


class Vocab:
    def __init__(self, name: str, ids: pa.Array | None = None):
        self.name = name
        self.ids = ids if ids is not None else pa.array(RESERVED, pa.string())
        self._hash_index: HashIndex | None = None
        if self.ids[: len(RESERVED)].to_pylist() != list(RESERVED):
            raise ValueError(f"vocabulary {name!r} does not start with the reserved {RESERVED}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def _index(self) -> HashIndex:
        """Fingerprint index of the ids, built on first use and kept up to date on append."""
        if self._hash_index is None:
            self._hash_index = HashIndex(4 * len(self.ids))
            self._hash_index.insert(*fingerprint(self.ids), np.arange(len(self.ids)))
        return self._hash_index

    def _append(self, fresh: pa.Array) -> None:
        start = len(self.ids)
        self.ids = pa.concat_arrays([self.ids, fresh.cast(pa.string())])
        if self._hash_index is not None:
            self._hash_index.insert(*fingerprint(fresh), np.arange(start, len(self.ids)))

    def index_of(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Index of each value (int32), -1 where not in the vocabulary.

        A small vocabulary's Arrow hash table stays in cache and is cheapest to rebuild and
        probe per call; past that, one fingerprint and about one probe of a persistent flat
        table per row (data.hashindex) was measured 2-3x faster."""
        if len(self.ids) <= _ARROW_LOOKUP_UP_TO:
            return (
                pc.fill_null(pc.index_in(values, value_set=self.ids), -1)
                .to_numpy()
                .astype(np.int32)
            )
        return self._index.lookup(*fingerprint(values))

    def extend(self, values: pa.Array) -> int:
        """Append the values not yet known, in order of first appearance; return how many."""
        uniq = pc.unique(values.drop_null())
        new = uniq.filter(pa.array(self.index_of(uniq) < 0))
        if len(new):
            self._append(new)
        return len(new)

    def lookup(self, values: pa.Array) -> np.ndarray:
        """Indices of `values` (int32); ids not in the vocabulary map to the unknown slot."""
        index = self.index_of(values)
        return np.where(index < 0, UNK, index).astype(np.int32)

    def assign(self, values: pa.Array, index: np.ndarray) -> np.ndarray:
        """Complete a lookup: rows with index -1 hold ids not yet known, which are appended in
        order of first appearance and given their new indices."""
        index = np.asarray(index, dtype=np.int32).copy()
        new = np.flatnonzero(index < 0)
        if len(new):
            ids = contiguous(values).take(pa.array(new))
            ids = ids.dictionary.take(ids.indices) if pa.types.is_dictionary(ids.type) else ids
            fresh = pc.unique(ids).cast(pa.string())  # first-appearance order
            start = len(self)
            self._append(fresh)
            index[new] = start + pc.index_in(ids, value_set=fresh).to_numpy()
        return index

    def table(self) -> pa.Table:
        return pa.table({"index": pa.array(np.arange(len(self), dtype=np.int32)), "id": self.ids})

    def save(self, path: str | Path) -> None:
        write_parquet(path, self.table())

    @classmethod
    def load(cls, name: str, path: str | Path) -> Vocab:
        table = pq.read_table(path)
        index = table.column("index").to_numpy()
        if not np.array_equal(index, np.arange(len(index))):
            raise ValueError(f"vocabulary {path} has gaps or is out of order; rebuild it")
        return cls(name, table.column("id").combine_chunks())

    @classmethod
    def load_or_new(cls, name: str, dataset: Path | None) -> Vocab:
        """The vocabulary of a prepared dataset, or a new one (only the reserved slots)."""
        path = dataset / vocab_file(name) if dataset else None
        return cls.load(name, path) if path and path.exists() else cls(name)
