"""Raw logs as CSV files: the format the platform's exports arrive in.

    interactions.csv   user_id,creator_id,event_type,timestamp,value
    creators.csv       creator_id,name,category,tags,description,created_at   (tags: "a|b|c")
    users.csv          user_id,signup_at,country,attributes                 (optional)

Timestamps are ISO-8601 (UTC unless an offset is given) or Unix seconds. Every column is read as
raw bytes so that validation, not the reader, decides what is a bad encoding or a wrong type;
lines with the wrong number of fields are quarantined as `malformed_row` with their line number.
`interactions` may also name a folder or a glob of CSV files, read in sorted order.
"""

from __future__ import annotations

import csv as pycsv
import glob
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from common.io import atomic_path
from data import schema
from data.sources.base import Source

BLOCK_BYTES = 64 << 20


@dataclass
class CsvSource(Source):
    interactions_path: str = ""
    creators_path: str | None = None
    users_path: str | None = None
    has_timestamps: bool = True
    _files: list[Path] = field(default_factory=list, repr=False)

    def __post_init__(self):
        self._files = _expand(self.interactions_path)
        self.estimated_rows = sum(p.stat().st_size for p in self._files) // 48 or None

    def interactions(self) -> Iterator[pa.RecordBatch]:
        for path in self._files:
            yield from _read_csv(self, path, "interactions", schema.INTERACTIONS.names)

    def creators(self) -> pa.Table | None:
        return self._table(self.creators_path, "creators", schema.CREATORS.names)

    def users(self) -> pa.Table | None:
        return self._table(self.users_path, "users", schema.USERS.names)

    def _table(self, path: str | None, table: str, columns: list[str]) -> pa.Table | None:
        if not path:
            return None
        batches = list(_read_csv(self, _expand(path)[0], table, columns))
        return pa.Table.from_batches(batches) if batches else None

    def describe(self) -> dict:
        return {
            "kind": "csv",
            "interactions": [str(p) for p in self._files],
            "creators": self.creators_path,
            "users": self.users_path,
        }


def _expand(spec: str, pattern: str = "*.csv") -> list[Path]:
    path = Path(spec)
    files = sorted(path.glob(pattern)) if path.is_dir() else sorted(map(Path, glob.glob(spec)))
    if not files:
        raise FileNotFoundError(
            f"no file matches {spec!r}; give a file, a folder of {pattern} files, or a glob"
        )
    return files


def _read_csv(source: Source, path: Path, table: str, columns: list[str]):
    header = _header(path)
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(
            f"{path}: columns {missing} not found in the header; columns are {header}. "
            f"A {table} file needs {columns}."
        )
    bad_lines: list[int] = []

    def on_invalid(row) -> str:
        bad_lines.append(row.number)
        detail = f"expected {row.expected_columns} fields, got {row.actual_columns}"
        source.reject(table, row.number, "malformed_row", detail, row.text)
        return "skip"

    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(use_threads=False, block_size=BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.binary() for c in header},
            include_columns=columns,
            strings_can_be_null=False,
        ),
    )
    next_line = 2  # line 1 is the header
    for batch in reader:
        lines, next_line = _line_numbers(next_line, batch.num_rows, bad_lines)
        yield batch.append_column(schema.SOURCE_ROW_COLUMN, pa.array(lines))


def _line_numbers(start: int, n: int, bad_lines: list[int]) -> tuple[np.ndarray, int]:
    """Line numbers of the next n valid rows: consecutive lines, skipping the malformed ones."""
    bad = np.array(sorted(b for b in bad_lines if b >= start), dtype=np.int64)
    span = np.arange(start, start + n + len(bad), dtype=np.int64)
    lines = np.setdiff1d(span, bad, assume_unique=True)[:n]
    return lines, int(lines[-1]) + 1 if n else start


def _header(path: Path) -> list[str]:
    with open(path, "rb") as f:
        first = f.readline().decode("utf-8", errors="replace")
    return next(pycsv.reader(io.StringIO(first)))


def write_csv(path: str | Path, table: pa.Table) -> None:
    """Write a canonical table as this source's CSV (lists joined with `|`, times ISO-8601)."""
    columns = []
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_list(col.type):
            col = pa.array(["|".join(v) if v else "" for v in col.to_pylist()], pa.string())
        elif pa.types.is_timestamp(col.type):
            col = pc.strftime(col, format="%Y-%m-%dT%H:%M:%SZ")
        columns.append(col)
    out = pa.table(columns, names=table.column_names)
    with atomic_path(path) as tmp:
        pacsv.write_csv(out, tmp, write_options=pacsv.WriteOptions(quoting_style="needed"))


def _write_catalogs(source: Source, folder: Path, suffix: str, write) -> dict[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, table in (("creators", source.creators()), ("users", source.users())):
        if table is not None:
            write(folder / f"{name}.{suffix}", table)
            rows[name] = table.num_rows
    return rows


def write_raw_logs(source: Source, folder: str | Path) -> dict[str, int]:
    """Dump any source as this format's CSV files (used to make raw logs from the generator)."""
    folder = Path(folder)
    rows = _write_catalogs(source, folder, "csv", write_csv)
    columns = schema.INTERACTIONS.names
    rows["interactions"] = 0
    with atomic_path(folder / "interactions.csv") as tmp, open(tmp, "wb") as f:
        for i, batch in enumerate(source.interactions()):
            table = pa.Table.from_batches([batch]).select(columns)
            table = table.set_column(
                3, "timestamp", pc.strftime(table.column("timestamp"), format="%Y-%m-%dT%H:%M:%SZ")
            )
            pacsv.write_csv(table, f, write_options=pacsv.WriteOptions(include_header=i == 0))
            rows["interactions"] += table.num_rows
    return rows


@dataclass
class ParquetSource(Source):
    """Canonical-schema parquet files (`interactions` a file, folder or glob; `creators` and
    `users` optional files)."""

    interactions_path: str = ""
    creators_path: str | None = None
    users_path: str | None = None
    _files: list[Path] = field(default_factory=list, repr=False)

    def __post_init__(self):
        import pyarrow.parquet as pq

        self._files = _expand(self.interactions_path, "*.parquet")
        self.estimated_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in self._files)
        names = pq.ParquetFile(self._files[0]).schema_arrow.names
        self.has_timestamps = "timestamp" in names
        self.has_given_split = schema.SPLIT_COLUMN in names

    def interactions(self) -> Iterator[pa.Table]:
        import pyarrow.parquet as pq

        row = 0
        for path in self._files:
            # Whole row groups: batches that straddle them are concatenated copies. Plain
            # strings: read_dictionary was measured slower once ids outgrow the dictionary page.
            f = pq.ParquetFile(path)
            for group in range(f.num_row_groups):
                table = f.read_row_group(group, use_threads=False)
                if schema.SOURCE_ROW_COLUMN not in table.column_names:
                    rows = pa.array(np.arange(row, row + table.num_rows, dtype=np.int64))
                    table = table.append_column(schema.SOURCE_ROW_COLUMN, rows)
                row += table.num_rows
                yield table

    def creators(self) -> pa.Table | None:
        return _read_parquet(self.creators_path)

    def users(self) -> pa.Table | None:
        return _read_parquet(self.users_path)

    def describe(self) -> dict:
        return {
            "kind": "parquet",
            "interactions": [str(p) for p in self._files],
            "creators": self.creators_path,
            "users": self.users_path,
        }


def _read_parquet(path: str | None) -> pa.Table | None:
    import pyarrow.parquet as pq

    return pq.read_table(_expand(path, "*.parquet")[0]) if path else None


def write_parquet_logs(source: Source, folder: str | Path) -> dict[str, int]:
    """Dump any source as canonical parquet files (interactions/creators/users.parquet)."""
    import pyarrow.parquet as pq

    from common.io import parquet_options, write_parquet

    folder = Path(folder)
    rows = _write_catalogs(source, folder, "parquet", write_parquet)
    rows["interactions"] = 0
    with atomic_path(folder / "interactions.parquet") as tmp:
        writer = None
        for batch in source.interactions():
            if writer is None:
                writer = pq.ParquetWriter(tmp, batch.schema, **parquet_options(batch.schema))
            writer.write_batch(batch)
            rows["interactions"] += batch.num_rows
        if writer is not None:
            writer.close()
    return rows
