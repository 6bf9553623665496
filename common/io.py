"""Atomic writes: files, JSON, numpy arrays, parquet tables and whole folders.

Every file is written under a temporary name in its final folder and renamed into place, so a crash
never leaves a half-written file that a reader could take for whole. `os.replace` is atomic on
POSIX within one filesystem, which is why the temporary lives beside the target. A folder is
written whole under a staging name and swapped in by `publish_dir`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TMP_SUFFIX = ".tmp"


def tmp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success fsync it and rename it to `path`, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def write_json(path: str | os.PathLike, obj: object) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """An .npy file that loads with allow_pickle=False."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def parquet_options(schema: pa.Schema) -> dict:
    """zstd, with dictionary pages only for repetitive text: on integer columns they cost twice
    the write time and made files larger (measured on the pair tables), and identifiers are
    unique by nature."""
    text = [
        f.name
        for f in schema
        if (pa.types.is_string(f.type) or pa.types.is_dictionary(f.type))
        and not (f.name == "id" or f.name.endswith("_id"))
    ]
    return {"compression": "zstd", "use_dictionary": text or False}


def write_parquet(path: str | os.PathLike, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **parquet_options(table.schema))


class ParquetAppender:
    """A parquet file written in row groups, published by rename only when closed cleanly."""

    def __init__(self, path: str | os.PathLike, schema: pa.Schema):
        self._ctx = atomic_path(path)
        self._tmp = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(self._tmp, schema, **parquet_options(schema))
        self.rows = 0

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        if table.num_rows:
            self._writer.write(table)
            self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


def publish_dir(staging: Path, final: Path) -> None:
    """Swap a fully written staging folder into place; the old one is removed only afterwards."""
    final = Path(final)
    old = final.with_name(f".{final.name}.old.{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old)
