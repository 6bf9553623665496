"""The service's answer log (serving.answer_log) as numpy columns: one row per logged answer.

`read(path)` reads the log, its rotated files and its workers' logs into `Answers`. The lists
come out as a matrix of int32 codes into the log's own creator vocabulary (`item_codes`
[n, k_max], -1 past a list's end), so one read serves every version the log names:
`answers.bind(catalog)` maps the codes to that catalog's rows (`items`, -1 also for a creator the
catalog does not hold, counted by `unknown`) and the fans to its histories (`fan_rows`).

Speed is the point (issue 18: the monitor handles >= 100,000 answers per second per core): the
log is Arrow IPC, so reading it parses no text and makes no Python object per answer, let
alone per creator; the creator ids become codes by Arrow's hash dictionary and the code matrix
is filled by one masked assignment (the scores stay flat, `score_values`, until something asks
for their matrix). A batch cut short (a service killed mid-write, or the live file's batch
still being written) is counted in `torn`, never silently lost; the batches before it are read.
Several workers' logs are merged by time (stable: each log's own order is kept).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common.errors import MissingInputError
from monitoring.catalog import Catalog
from serving import answer_log
from serving.answer_log import SCHEMA, STAGES, read_stream, streams

_LABELS = ("route", "model_version", "index_version", "source", "degraded")


@dataclass(eq=False)
class Answers:
    """Logged answers as columns, in log order (module docstring). Labels (`route`,
    `model_version`, `index_version`, `source`, `degraded`) are object arrays of str or None,
    so `answers.route == "recommend"` is a mask and `answers.take(mask)` the subset."""

    ts: np.ndarray  # [n] float64 seconds since the epoch
    route: np.ndarray  # [n] object
    model_version: np.ndarray  # [n] object
    index_version: np.ndarray  # [n] object
    source: np.ndarray  # [n] object: model | popular
    degraded: np.ndarray  # [n] object: None or why
    cold_start: np.ndarray  # [n] bool
    k: np.ndarray  # [n] int32: the k asked for, -1 unknown
    fan: np.ndarray  # [n] int32 code into fan_ids, -1: no fan (e.g. /similar)
    fan_ids: np.ndarray  # [F] str
    item_codes: np.ndarray  # [n, k_max] int32 codes into creator_ids, -1 past the list's end
    creator_ids: np.ndarray  # [V] str: every creator id the log names
    score_values: np.ndarray  # [s] float32 every logged score, answer after answer
    score_counts: np.ndarray  # [n] int64 scores per answer (at most k_max)
    timings: dict[str, np.ndarray]  # stage → [n] float64 seconds, NaN where not timed
    batch: np.ndarray  # [n] float64 requests in the answer's batch, NaN unknown
    torn: int = 0
    """Batches cut short (a write killed, or still being written): counted, not read."""
    files: tuple[Path, ...] = ()
    catalog: Catalog | None = field(default=None, repr=False)
    items: np.ndarray | None = None
    """[n, k_max] int32 rows of `catalog`, -1 past the end or for a creator it lacks."""
    fan_rows: np.ndarray | None = None
    """[n] int32 rows of `catalog.history`, -1 for a fan without a history."""

    def __len__(self) -> int:
        return len(self.ts)

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        """[n] how many creators each answer listed."""
        return (self.item_codes >= 0).sum(1)

    @functools.cached_property
    def scores(self) -> np.ndarray:
        """[n, k_max] float32, NaN past the list's end (made on first use: the figures read
        `score_values`, and 300,000 answers' matrix costs a tenth of the whole read)."""
        width = self.item_codes.shape[1]
        return _padded(self.score_values, self.score_counts, np.nan, np.float32, width)

    @functools.cached_property
    def known(self) -> np.ndarray:
        """[n, k_max] bool: the slots holding a creator of the bound catalog."""
        self._require_bound()
        return self.items >= 0

    @functools.cached_property
    def listed(self) -> np.ndarray:
        """[m] the known slots' catalog rows, list after list (`items[known]`)."""
        return self.items[self.known]

    @functools.cached_property
    def sizes(self) -> np.ndarray:
        """[n] how many creators of the bound catalog each answer listed."""
        return self.known.sum(1)

    @functools.cached_property
    def list_of(self) -> np.ndarray:
        """[m] the answer each of `listed` belongs to."""
        return np.repeat(np.arange(len(self)), self.sizes)

    @property
    def unknown(self) -> int:
        """How many listed creators the bound catalog does not hold (never silently dropped)."""
        self._require_bound()
        return int(self.lengths.sum() - self.sizes.sum())

    def unknown_ids(self) -> list[str]:
        """The distinct creator ids listed that the bound catalog does not hold."""
        self._require_bound()
        codes = np.unique(self.item_codes[(self.item_codes >= 0) & (self.items < 0)])
        return self.creator_ids[codes].tolist()

    def bind(self, catalog: Catalog) -> Answers:
        """The same answers with `items` and `fan_rows` in `catalog`'s rows."""
        if self.catalog is catalog:
            return self
        # one more entry at the end: code -1 (past a list's end, no fan) reads it as -1
        rows = np.append(catalog.rows(self.creator_ids), np.int32(-1))
        fans = np.append(catalog.fan_rows(self.fan_ids), np.int32(-1))
        return dataclasses.replace(
            self, catalog=catalog, items=rows[self.item_codes], fan_rows=fans[self.fan]
        )

    def take(self, index) -> Answers:
        """The answers at `index` (a mask or positions), vocabularies shared."""
        shared = ("fan_ids", "creator_ids", "timings", "torn", "files", "catalog")
        per_row = {
            f.name: getattr(self, f.name)[index]
            for f in dataclasses.fields(self)
            if f.name not in (*shared, "score_values") and getattr(self, f.name) is not None
        }
        rows = np.arange(len(self))[index]
        starts = np.r_[0, np.cumsum(self.score_counts)][rows]
        counts = self.score_counts[rows]
        slots = np.repeat(starts - np.r_[0, np.cumsum(counts)[:-1]], counts) + np.arange(
            counts.sum()
        )
        timings = {name: t[index] for name, t in self.timings.items()}
        return dataclasses.replace(
            self, **per_row, score_values=self.score_values[slots], timings=timings
        )

    def _require_bound(self) -> None:
        if self.items is None:
            raise ValueError("these answers are not bound to a catalog: call answers.bind(catalog)")


def read(path: str | Path, catalog: Catalog | None = None, attempts: int = 3) -> Answers:
    """The answer logs at `path` (serving.answer_log.streams: rotated files, workers' logs);
    bound to `catalog` when given. An empty log is zero answers; a missing one is a
    MissingInputError. A file that rotates away between listing and reading makes the whole
    read start again."""
    for attempt in range(attempts):
        found = _streams(path)
        try:
            parsed = [[read_stream(part) for part in stream] for stream in found]
            break
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise
    batches = [b for stream in parsed for batches, _ in stream for b in batches]
    torn = sum(t for stream in parsed for _, t in stream)
    table = pa.Table.from_batches(batches, schema=SCHEMA)
    if len(found) > 1:  # workers' logs: one timeline
        table = table.take(pc.sort_indices(table, [("ts", "ascending")]))  # stable
    answers = from_table(table, torn, tuple(p for stream in found for p in stream))
    return answers if catalog is None else answers.bind(catalog)


def read_records(path: str | Path) -> list[dict]:
    """The logs at `path` as dicts (serving.answer_log.read), workers' logs merged by time."""
    found = _streams(path)
    records = list(answer_log.read(path))
    return sorted(records, key=lambda r: r["ts"]) if len(found) > 1 else records  # one offset


def _streams(path: str | Path) -> list[list[Path]]:
    if found := streams(path):
        return found
    raise MissingInputError(
        f"no answer log at {path} (nor rotated or workers' files beside it); start the "
        f"service with `--answer_log.path {path}` or point the monitor at its log"
    )


def from_table(table: pa.Table, torn: int = 0, files: tuple[Path, ...] = ()) -> Answers:
    """Answers from a table of the log's schema (serving.answer_log.SCHEMA)."""
    table = table.combine_chunks()
    fan_codes, fan_ids = _codes(table["user_id"])
    item_codes, creator_ids = _item_codes(table["items"])
    timings = table["timings"].combine_chunks()
    return Answers(
        ts=_numpy(table["ts"].cast(pa.int64()), np.float64) / 1e3,
        **{name: _labels(table[name]) for name in _LABELS},
        cold_start=_numpy(table["cold_start"].fill_null(False), bool),
        k=_numpy(table["k"].fill_null(-1), np.int32),
        fan=fan_codes,
        fan_ids=fan_ids,
        item_codes=item_codes,
        creator_ids=creator_ids,
        **_flat_scores(table["scores"], item_codes.shape[1]),
        timings={s: _numpy(timings.field(s).fill_null(np.nan), np.float64) for s in STAGES},
        batch=_numpy(timings.field("batch").fill_null(np.nan), np.float64),
        torn=torn,
        files=files,
    )


def _numpy(column, dtype) -> np.ndarray:
    return column.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _codes(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """int32 codes [n] (-1 for null) and the distinct values [V] as str, by Arrow's hashing."""
    encoded = pc.dictionary_encode(values)
    if isinstance(encoded, pa.ChunkedArray):
        # chunks may hold different dictionaries: unify them before reading one set of codes
        encoded = encoded.unify_dictionaries().combine_chunks()
    codes = encoded.indices
    if codes.null_count:  # a list never holds a null; a label or a fan may
        codes = codes.fill_null(-1)
    codes = codes.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return codes, np.asarray(encoded.dictionary.to_pylist(), dtype=str)


def _item_codes(items: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """The lists as a padded [n, k_max] code matrix, and the vocabulary."""
    lengths = _numpy(pc.list_value_length(items).fill_null(0), np.int64)
    flat = pc.list_flatten(items)
    codes, vocabulary = _codes(flat) if len(flat) else (np.zeros(0, np.int32), np.zeros(0, str))
    return _padded(codes, lengths, -1, np.int32), vocabulary


def _flat_scores(scores: pa.ChunkedArray, width: int) -> dict[str, np.ndarray]:
    """Every answer's scores, at most `width` each (its list's), one after another."""
    kept = pc.list_slice(scores, 0, width)  # more scores than creators: each list's first
    counts = _numpy(pc.list_value_length(kept).fill_null(0), np.int64)
    values = _numpy(pc.list_flatten(kept).fill_null(np.nan), np.float32)
    return {"score_values": values, "score_counts": counts}


def _padded(flat: np.ndarray, lengths: np.ndarray, pad, dtype, width: int | None = None):
    """Rows of `lengths` values each, taken in order from `flat`, padded with `pad`."""
    width = int(lengths.max(initial=0)) if width is None else width
    out = np.full((len(lengths), width), pad, dtype)
    out[np.arange(width)[None, :] < lengths[:, None]] = flat  # row-major: each row in order
    return out


def _labels(column: pa.ChunkedArray) -> np.ndarray:
    """A label column as an object array of str or None, each distinct value one object."""
    codes, values = _codes(column)
    lookup = np.append(values.astype(object), None)  # code -1 (null) reads the None at the end
    return lookup[codes]
