"""The records that pass between data.prepare's passes: the encoded events spilled to buckets by
user, the pairs written per split, the examples dealt to shards, and the spill that holds
events or examples between passes (Arrow IPC files, or memory when the data is small).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from data import features

EVENTS = pa.schema(
    [
        ("row", pa.int64()),
        ("user", pa.int32()),
        ("creator", pa.int32()),
        ("event", pa.int8()),
        ("ts", pa.int64()),
        ("value", pa.float32()),
        ("split", pa.int8()),
    ]
)
"""An encoded event as the first pass spills it to its user's bucket."""
PAIRS = pa.schema(
    [
        ("user_idx", pa.int32()),
        ("creator_idx", pa.int32()),
        ("ts", pa.int64()),
        ("weight", pa.float32()),
    ]
)


def pairs_table(p: features.Pairs) -> pa.Table:
    return pa.table([p.user, p.creator, p.ts, p.weight], schema=PAIRS)


def chunks(batches, rows: int):
    """Regroup a source's batches (or tables) into tables of at least `rows` rows; one already
    that large passes through uncopied."""
    pending, size = [], 0
    for batch in batches:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        if not pending and table.num_rows >= rows:
            yield table
            continue
        pending.append(table)
        size += table.num_rows
        if size >= rows:
            yield pa.concat_tables(pending).combine_chunks()
            pending, size = [], 0
    if pending:
        yield pa.concat_tables(pending).combine_chunks()


class Spill:
    """Numbered partitions of record batches between passes: Arrow IPC files in a folder, or,
    with `folder=None` (data that fits comfortably in memory), lists of batches in memory,
    which spares writing, mapping and unlinking hundreds of MB."""

    def __init__(self, folder: Path | None, schema: pa.Schema, parts: int):
        self.folder, self.schema = folder, schema
        if folder is None:
            self._batches: list[list | None] = [[] for _ in range(parts)]
        else:
            folder.mkdir(parents=True)
            self._writers = [pa.ipc.new_file(self._path(i), schema) for i in range(parts)]

    def _path(self, i: int) -> Path:
        return self.folder / f"{i:05d}.arrow"

    def write(self, i: int, batch: pa.RecordBatch) -> None:
        if self.folder is None:
            self._batches[i].append(batch)
        else:
            self._writers[i].write_batch(batch)

    def read(self, i: int, keep: bool = False) -> pa.Table:
        """Partition i as a table; unless `keep`, its memory is released once read."""
        if self.folder is None:
            table = pa.Table.from_batches(self._batches[i], schema=self.schema)
            if not keep:
                self._batches[i] = None
            return table
        if self._writers:
            for w in self._writers:
                w.close()
            self._writers = []
        with pa.memory_map(str(self._path(i))) as f:
            return pa.ipc.open_file(f).read_all()


def example_schema(hist_len: int) -> pa.Schema:
    return pa.schema(
        [
            ("user", pa.int32()),
            ("creator", pa.int32()),
            ("history", pa.list_(pa.int32(), hist_len)),
            ("weight", pa.float32()),
            ("ts", pa.int64()),
        ]
    )


def example_batch(examples, take, schema: pa.Schema) -> pa.RecordBatch:
    hist = examples["history"][take]
    return pa.record_batch(
        [
            pa.array(examples["user"][take]),
            pa.array(examples["creator"][take]),
            pa.FixedSizeListArray.from_arrays(pa.array(hist.ravel()), hist.shape[1]),
            pa.array(examples["weight"][take]),
            pa.array(examples["ts"][take]),
        ],
        schema=schema,
    )


def examples_from_table(t: pa.Table) -> dict[str, np.ndarray]:
    hist = t.column("history").combine_chunks()
    width = hist.type.list_size
    return {
        "user": t.column("user").to_numpy(),
        "creator": t.column("creator").to_numpy(),
        "history": hist.flatten().to_numpy().reshape(-1, width),
        "weight": t.column("weight").to_numpy(),
        "ts": t.column("ts").to_numpy(),
    }
