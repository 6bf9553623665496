"""The service's answer log (serving.answer_log) as numpy columns: one row per logged answer.

`read(path)` reads the log and its rotated files, oldest first (serving.answer_log.parts), into
`Answers`. The lists come out as a matrix of int32 codes into the log's own creator vocabulary
(`item_codes` [n, k_max], -1 past a list's end), so one read serves every version the log names:
`answers.bind(catalog)` maps the codes to that catalog's rows (`items`, -1 also for a creator the
catalog does not hold, counted by `unknown`) and the fans to its histories (`fan_rows`).

Speed is the point (issue 18: the monitor handles >= 100,000 answers per second per core):
polars parses the JSON lines in Rust against a fixed schema, so no Python object is made per
answer, let alone per creator; the creator ids become codes by Arrow's hash dictionary and the
code matrix is filled by one masked assignment (the scores stay flat, `score_values`, until
something asks for their matrix). Even so the JSON parse alone is about two thirds of the
monitor's time (benchmarks/monitor_speed.py). A line that is not JSON (a write cut short)
makes polars refuse its whole file: that file alone is then read line by line, and the bad
lines are counted in `bad_lines`, never silently lost; so are lines without a time or a list,
and a last line still being written (no newline yet).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from common.errors import MissingInputError
from monitoring.catalog import Catalog
from serving.answer_log import parts
from serving.pipeline.stages import Encode, Fallback, Filter, Lookup, Rank, Retrieve

STAGES = tuple(s.name for s in (Lookup, Encode, Retrieve, Filter, Rank, Fallback))
"""The timed stages an answer's `timings` carry (serving.pipeline.stages); other keys are not
read (the schema is fixed so the parse stays in Rust). tests/monitoring checks it against the
service's default pipeline."""

_SCHEMA = {
    "ts": pl.String,
    "route": pl.String,
    "request": pl.Struct({"user_id": pl.String, "creator_id": pl.String, "k": pl.Int64}),
    "model_version": pl.String,
    "index_version": pl.String,
    "items": pl.List(pl.String),
    "scores": pl.List(pl.Float32),
    "source": pl.String,
    "cold_start": pl.Boolean,
    "degraded": pl.String,
    "timings": pl.Struct({name: pl.Float64 for name in (*STAGES, "batch")}),
}
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%:z"  # datetime.isoformat with an offset, as record writes
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
    bad_lines: int = 0
    """Lines that were not an answer (not JSON, no time, no list): counted, not read."""
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
        shared = ("fan_ids", "creator_ids", "timings", "bad_lines", "files", "catalog")
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
    """The answer log at `path` and its rotated files, oldest first; bound to `catalog` when
    given. An empty log is zero answers; a missing one is a MissingInputError. A file that
    rotates away between listing and reading makes the whole read start again."""
    for attempt in range(attempts):
        files = parts(path)
        if not files:
            raise MissingInputError(
                f"no answer log at {path} (nor rotated files beside it); start the service "
                f"with `--answer_log.path {path}` or point the monitor at the service's log"
            )
        try:
            parsed = [_parse(part) for part in files]
            break
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise
    frames = [frame for frame, _ in parsed]
    answers = from_frame(pl.concat(frames), sum(bad for _, bad in parsed), tuple(files))
    return answers if catalog is None else answers.bind(catalog)


def _parse(part: Path) -> tuple[pl.DataFrame, int]:
    """One file's lines as a frame, and how many were not JSON objects. A last line without
    its newline (cut short, or still being written by the service) is one of those."""
    data = part.read_bytes()
    end = data.rfind(b"\n") + 1
    cut = int(bool(data[end:].strip()))
    if end < len(data):
        data = data[:end]
    try:
        return pl.read_ndjson(data, schema=_SCHEMA, ignore_errors=True), cut
    except pl.exceptions.PolarsError:
        pass  # a line is not JSON: find which, keep the rest
    good, bad = [], cut
    for line in data.splitlines(keepends=True):
        if not line.strip():
            continue
        try:
            ok = isinstance(json.loads(line), dict)
        except ValueError:
            ok = False
        if ok:
            good.append(line)
        else:
            bad += 1
    return pl.read_ndjson(b"".join(good), schema=_SCHEMA, ignore_errors=True), bad


def from_frame(df: pl.DataFrame, bad_lines: int = 0, files: tuple[Path, ...] = ()) -> Answers:
    """Answers from a frame of the log's schema; rows without a time or a list are bad."""
    micros = df["ts"].str.to_datetime(_TIME_FORMAT, strict=False, time_unit="us").dt.epoch("us")
    keep = micros.is_not_null() & df["items"].is_not_null()
    if not keep.all():
        bad_lines += int((~keep).sum())
        df, micros = df.filter(keep), micros.filter(keep)
    fan = df["request"].struct.field("user_id")
    fan_codes, fan_ids = _codes(_arrow(fan))
    item_codes, creator_ids = _item_codes(df["items"])
    timings = df["timings"].struct.unnest()
    return Answers(
        ts=micros.to_numpy().astype(np.float64) / 1e6,
        **{name: _labels(df[name]) for name in _LABELS},
        cold_start=df["cold_start"].fill_null(False).to_numpy().astype(bool),
        k=df["request"].struct.field("k").fill_null(-1).to_numpy().astype(np.int32),
        fan=fan_codes,
        fan_ids=fan_ids,
        item_codes=item_codes,
        creator_ids=creator_ids,
        **_flat_scores(df["scores"], item_codes.shape[1]),
        timings={s: timings[s].fill_null(np.nan).to_numpy().astype(np.float64) for s in STAGES},
        batch=timings["batch"].fill_null(np.nan).to_numpy().astype(np.float64),
        bad_lines=bad_lines,
        files=files,
    )


def _arrow(column: pl.Series) -> pa.Array:
    """A column as Arrow without copying its strings (string views, not Arrow's large
    strings, which polars would rebuild)."""
    return column.to_arrow(compat_level=pl.CompatLevel.newest())


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


def _item_codes(items: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The lists as a padded [n, k_max] code matrix, and the vocabulary."""
    lengths = items.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = pc.list_flatten(_arrow(items))
    codes, vocabulary = _codes(flat) if len(flat) else (np.zeros(0, np.int32), np.zeros(0, str))
    return _padded(codes, lengths, -1, np.int32), vocabulary


def _flat_scores(scores: pl.Series, width: int) -> dict[str, np.ndarray]:
    """Every answer's scores, at most `width` each (its list's), one after another."""
    counts = np.minimum(scores.list.len().fill_null(0).to_numpy().astype(np.int64), width)
    flat = pc.list_flatten(scores.list.head(width).to_arrow())
    values = flat.fill_null(np.nan).to_numpy(zero_copy_only=False).astype(np.float32)
    return {"score_values": values, "score_counts": counts}


def _padded(flat: np.ndarray, lengths: np.ndarray, pad, dtype, width: int | None = None):
    """Rows of `lengths` values each, taken in order from `flat`, padded with `pad`."""
    width = int(lengths.max(initial=0)) if width is None else width
    out = np.full((len(lengths), width), pad, dtype)
    out[np.arange(width)[None, :] < lengths[:, None]] = flat  # row-major: each row in order
    return out


def _labels(column: pl.Series) -> np.ndarray:
    """A label column as an object array of str or None, each distinct value one object."""
    codes, values = _codes(_arrow(column))
    lookup = np.append(values.astype(object), None)  # code -1 (null) reads the None at the end
    return lookup[codes]
