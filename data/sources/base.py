"""What a source is: something that yields the canonical tables, in batches where they are large.

A source maps one input format into the columns of `data.schema`. It does not validate: it may hand
over columns as raw strings (or binary, when the bytes may not be UTF-8) and `data.validate` parses,
checks and quarantines. Rows a source cannot even split into fields (a CSV line with the wrong
number of fields) go into `rejects`, with the same fields as a quarantine row, so nothing is lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from data.schema import SOURCE_ROW_COLUMN


@dataclass
class Source:
    """Base class. Subclasses override the three table methods and set the flags."""

    name: str = "source"
    # False when the data has no event times (then prepare needs a per-user or given split).
    has_timestamps: bool = True
    # True when the interactions carry a `split` column with the dataset's own train/test split.
    has_given_split: bool = False
    # Rough number of interaction rows, for the progress bar; None when unknown.
    estimated_rows: int | None = None
    rejects: list[dict] = field(default_factory=list)

    def creators(self) -> pa.Table | None:
        """The creator catalog (CREATORS columns), or None when the source has none."""
        return None

    def users(self) -> pa.Table | None:
        """User attributes (USERS columns), or None when the source has none."""
        return None

    def interactions(self) -> Iterator[pa.RecordBatch]:
        """Interaction batches (INTERACTIONS columns, plus `_row` and optionally `split`)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What goes into the manifest's `source` entry (paths, seed, parameters)."""
        return {"kind": type(self).__name__, "name": self.name}

    def reject(self, table: str, source_row: int, reason: str, detail: str, raw: object) -> None:
        self.rejects.append(
            {
                "table": table,
                "source_row": int(source_row),
                "reason": reason,
                "detail": detail,
                "raw": raw_to_text(raw),
            }
        )

    def drain_rejects(self) -> list[dict]:
        out, self.rejects = self.rejects, []
        return out


def raw_to_text(raw: object) -> str:
    """A row as text for the quarantine table; undecodable bytes become backslash escapes."""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="backslashreplace")
    if isinstance(raw, str):
        return raw
    return json.dumps(raw, default=_jsonable, ensure_ascii=False)


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


def with_row_numbers(batch: pa.RecordBatch, start: int) -> pa.RecordBatch:
    """Append the `_row` column (source position) that quarantine rows point back to."""
    rows = pa.array(np.arange(start, start + batch.num_rows, dtype=np.int64))
    return batch.append_column(SOURCE_ROW_COLUMN, rows)
