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

from data.io import write_parquet
from data.schema import RESERVED, UNK_INDEX


class Vocab:
    def __init__(self, name: str, ids: pa.Array | None = None):
        self.name = name
        self.ids = ids if ids is not None else pa.array(RESERVED, pa.string())
        if self.ids[: len(RESERVED)].to_pylist() != list(RESERVED):
            raise ValueError(f"vocabulary {name!r} does not start with the reserved {RESERVED}")

    def __len__(self) -> int:
        return len(self.ids)

    def extend(self, values: pa.Array) -> int:
        """Append the values not yet known, in order of first appearance; return how many."""
        uniq = pc.unique(values.drop_null())
        new = uniq.filter(pc.invert(pc.is_in(uniq, value_set=self.ids)))
        if len(new):
            self.ids = pa.concat_arrays([self.ids, new.cast(pa.string())])
        return len(new)

    def lookup(self, values: pa.Array) -> np.ndarray:
        """Indices of `values` (int32); ids not in the vocabulary map to the unknown slot."""
        encoded = _dictionary(values)
        index = pc.fill_null(pc.index_in(encoded.dictionary, value_set=self.ids), UNK_INDEX)
        out = pc.fill_null(pc.take(index, encoded.indices), UNK_INDEX)
        return out.to_numpy(zero_copy_only=False).astype(np.int32)

    def encode(self, values: pa.Array) -> np.ndarray:
        """Extend with the unseen values (in order of first appearance), then look all of them
        up. One hash pass over the vocabulary per call, one per distinct value."""
        encoded = _dictionary(values)
        index = pc.fill_null(pc.index_in(encoded.dictionary, value_set=self.ids), -1)
        index = index.to_numpy().astype(np.int64)
        used = pc.unique(encoded.indices.drop_null()).to_numpy()  # first-appearance order
        new = used[index[used] < 0]
        if len(new):
            index[new] = len(self) + np.arange(len(new))
            fresh = encoded.dictionary.take(pa.array(new)).cast(pa.string())
            self.ids = pa.concat_arrays([self.ids, fresh])
        rows = encoded.indices.to_numpy(zero_copy_only=False)
        return index[rows].astype(np.int32)

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
    def load_or_new(cls, name: str, folder: Path | None) -> Vocab:
        path = folder / f"{name}.parquet" if folder else None
        return cls.load(name, path) if path and path.exists() else cls(name)


def _dictionary(values: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if pa.types.is_dictionary(values.type):
        return values
    return pc.dictionary_encode(values)
