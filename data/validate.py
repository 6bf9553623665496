"""Validation with quarantine.

`validate(batch, spec, ...)` parses and checks one batch of a table against its spec and returns
the accepted rows (typed as in `data.schema`) and the quarantined rows (`data.schema.QUARANTINE`),
so that input rows = accepted + quarantined, exactly. Each rejected row carries the first reason
it fails, in the order of `data.schema.REASONS`, and a detail naming the field and value.

Everything is vectorised with pyarrow compute; ids are checked once per distinct value, not once
per event, because a log repeats the same ids millions of times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data import schema
from data.contract import FIRST_ID
from data.sources.base import raw_to_text

_NUMBER = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
_EPOCH_SECONDS = r"^\s*\d{1,11}(\.\d+)?\s*$"
_ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d")
TAG_SEPARATOR = "|"
_EVENTS = pa.array(schema.EVENT_TYPES)


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # id | string | event | timestamp | float | list
    required: bool = False


INTERACTION_FIELDS = (
    Field("user_id", "id", True),
    Field("creator_id", "id", True),
    Field("event_type", "event", True),
    Field("timestamp", "timestamp", True),
    Field("value", "float", True),
)
CREATOR_FIELDS = (
    Field("creator_id", "id", True),
    Field("name", "string"),
    Field("category", "string"),
    Field("tags", "list"),
    Field("description", "string"),
    Field("created_at", "timestamp"),
)
USER_FIELDS = (
    Field("user_id", "id", True),
    Field("signup_at", "timestamp"),
    Field("country", "string"),
    Field("attributes", "list"),
)
SPECS = {
    "interactions": (INTERACTION_FIELDS, schema.INTERACTIONS),
    "creators": (CREATOR_FIELDS, schema.CREATORS),
    "users": (USER_FIELDS, schema.USERS),
}
_REASON_CODE = {r: i for i, r in enumerate(schema.REASONS)}


class InputError(ValueError):
    """The input as a whole is unusable (a column missing): nothing to quarantine row by row."""


@dataclass
class Result:
    accepted: pa.Table  # typed columns of the table's schema, plus `_row` (and `split`)
    quarantined: pa.Table  # schema.QUARANTINE


class _Rejections:
    """First failing reason per row, plus which field failed (for the detail)."""

    def __init__(self, n: int):
        self.reason = np.full(n, -1, dtype=np.int16)
        self.field = np.full(n, -1, dtype=np.int16)

    def mark(self, bad: pa.Array | np.ndarray, reason: str, field_index: int) -> None:
        # Most checks flag nothing: test the bitmap before unpacking it into a numpy mask.
        if not isinstance(bad, np.ndarray) and not pc.any(bad).as_py():
            return
        bad = _to_bool(bad)
        fresh = bad & (self.reason < 0)
        self.reason[fresh] = _REASON_CODE[reason]
        self.field[fresh] = field_index

    @property
    def ok(self) -> np.ndarray:
        return self.reason < 0


def validate(
    batch: pa.RecordBatch | pa.Table,
    table: str,
    *,
    now_ms: int,
    timestamps_required: bool = True,
    vocab: dict | None = None,
    closed: tuple[str, ...] = (),
) -> Result:
    """Parse and check one batch of `table` (interactions | creators | users).

    `vocab` maps id fields to their vocabularies (data.vocab.Vocab). An id already in its
    vocabulary was validated when it entered, so each row costs one hash probe and only ids not
    found are checked against the id pattern; the accepted rows carry `_<field>_idx` (int32, -1
    for a new id). Fields in `closed` must already be in their vocabulary (creators with a
    catalog): a well-formed id that is not is quarantined as `unknown_creator`.
    """
    fields, target = SPECS[table]
    data = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    _require_columns(data, fields, table)
    rej = _Rejections(data.num_rows)
    raw_columns = {f.name: contiguous(data.column(f.name)) for f in fields}
    typed, index = _check_fields(
        raw_columns, fields, rej, now_ms, timestamps_required, vocab, closed
    )
    accepted = _accepted_table(data, fields, target, typed, index)
    accepted = accepted.filter(pa.array(rej.ok))
    return Result(accepted, _quarantine_rows(data, raw_columns, fields, rej, table))


def _check_fields(raw_columns, fields, rej: _Rejections, now_ms: int, timestamps_required: bool,
                  vocab: dict | None, closed: tuple[str, ...]) -> tuple[dict, dict]:  # fmt: skip
    """Parse and check each field, marking bad rows in `rej`: the typed columns by name, and
    the vocabulary index of each id field that has a vocabulary (ids found there skip the id
    pattern check)."""
    typed, index = {}, {}
    for i, f in enumerate(fields):
        required = f.required and not (f.kind == "timestamp" and not timestamps_required)
        if f.kind == "id" and vocab and f.name in vocab:
            col = _decode(raw_columns[f.name], i, rej)
            if required:
                rej.mark(pc.is_null(col), "missing_field", i)
            index[f.name] = _lookup_id(col, i, rej, vocab[f.name], f.name in closed)
            typed[f.name] = col
        else:
            typed[f.name] = _check_field(raw_columns[f.name], f, i, rej, required, now_ms)
    return typed, index


def _accepted_table(data: pa.Table, fields, target: pa.Schema, typed: dict, index: dict):
    """Every row of the checked columns in the target schema, then `_<field>_idx` per looked-up
    id field, then the bookkeeping columns the input carried (source row, split)."""
    extra = [c for c in (schema.SOURCE_ROW_COLUMN, schema.SPLIT_COLUMN) if c in data.column_names]
    # Event types stay dictionary-encoded (their codes are what prepare needs); cast() decodes
    # them for a caller that wants plain strings.
    columns = [
        typed[f.name] if f.kind == "event" else typed[f.name].cast(target.field(f.name).type)
        for f in fields
    ]
    names = [f.name for f in fields]
    for name, idx in index.items():
        columns.append(pa.array(idx))
        names.append(f"_{name}_idx")
    return pa.table(columns + [data.column(c) for c in extra], names=names + extra)


def _lookup_id(col, i: int, rej: _Rejections, vocab, closed: bool) -> np.ndarray:
    """Vocabulary index per row (-1: not in the vocabulary); marks malformed and, for a closed
    vocabulary, unknown ids. The reserved slots never match an input id."""
    if pa.types.is_dictionary(col.type):
        col = col.dictionary.take(col.indices)
    idx = vocab.index_of(col)
    idx[idx < FIRST_ID] = -1
    new = np.flatnonzero((idx < 0) & _to_bool(pc.is_valid(col)))
    if len(new):
        candidates = col.take(pa.array(new))
        distinct = pc.unique(candidates)
        well_formed = pc.match_substring_regex(distinct, schema.ID_PATTERN)
        ok = pc.take(well_formed, pc.index_in(candidates, value_set=distinct))
        bad = np.zeros(len(idx), dtype=bool)
        bad[new] = ~_to_bool(ok)
        rej.mark(bad, "malformed_id", i)
        if closed:
            unknown = np.zeros(len(idx), dtype=bool)
            unknown[new] = True
            rej.mark(unknown, "unknown_creator", i)
    return idx


def contiguous(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One array; unlike combine_chunks(), no copy when there is a single chunk already."""
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


def _require_columns(data: pa.Table, fields, table: str) -> None:
    missing = [f.name for f in fields if f.name not in data.column_names]
    if missing:
        raise InputError(
            f"{table}: columns {missing} not found; columns are {data.column_names}. "
            f"Map the source's columns to {[f.name for f in fields]}."
        )


def _check_field(col: pa.Array, f: Field, i: int, rej: _Rejections, required: bool, now_ms: int):
    """Mark this field's failures in `rej` and return the column parsed to its type."""
    col = _decode(col, i, rej)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        empty = pc.equal(pc.utf8_trim_whitespace(col), "")
        missing = pc.or_kleene(pc.is_null(col), empty) if f.kind != "id" else pc.is_null(col)
    else:
        missing = pc.is_null(col)
    if required:
        rej.mark(missing, "missing_field", i)
    parse = _PARSERS[f.kind]
    return parse(col, i, rej, now_ms)


def _decode(col: pa.Array, i: int, rej: _Rejections) -> pa.Array:
    """Binary → UTF-8 string; rows whose bytes are not UTF-8 are marked bad_encoding and nulled."""
    if not (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
        return col
    try:
        return col.cast(pa.string())
    except pa.ArrowInvalid:
        pass
    values = col.to_pylist()  # only on the slow path: a batch that has invalid bytes somewhere
    bad = np.zeros(len(values), dtype=bool)
    for j, v in enumerate(values):
        if v is not None:
            try:
                v.decode("utf-8")
            except UnicodeDecodeError:
                bad[j] = True
    rej.mark(bad, "bad_encoding", i)
    return pc.if_else(pa.array(bad), pa.scalar(None, col.type), col).cast(pa.string())


def _parse_id(col, i, rej, now_ms):
    # Distinct values first: a log repeats each id many times, the regex runs once per id.
    encoded = col if pa.types.is_dictionary(col.type) else pc.dictionary_encode(col)
    ok_values = pc.match_substring_regex(encoded.dictionary, schema.ID_PATTERN)
    bad = pc.invert(pc.fill_null(pc.take(ok_values, encoded.indices), True))
    rej.mark(pc.and_(bad, pc.is_valid(encoded.indices)), "malformed_id", i)
    return col


def _parse_string(col, i, rej, now_ms):
    return col


def _parse_event(col, i, rej, now_ms):
    """Event names → a dictionary array over schema.EVENT_TYPES, so the int8 codes written to
    shards come out of this one lookup."""
    codes = pc.index_in(col, value_set=_EVENTS)
    rej.mark(pc.and_(pc.is_null(codes), pc.is_valid(col)), "unknown_event_type", i)
    return pa.DictionaryArray.from_arrays(pc.cast(codes, pa.int8()), _EVENTS)


def _parse_float(col, i, rej, now_ms):
    if pa.types.is_string(col.type):
        numeric = pc.fill_null(pc.match_substring_regex(col, _NUMBER), True)
        rej.mark(pc.invert(numeric), "wrong_type", i)
        col = pc.if_else(numeric, col, pa.scalar(None, pa.string()))
        col = pc.cast(pc.utf8_trim_whitespace(col), pa.float64())
    elif not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
        raise InputError(f"field {col.type} cannot hold numbers")
    col = pc.cast(col, pa.float64())
    finite = pc.fill_null(pc.is_finite(col), True)
    rej.mark(pc.invert(finite), "wrong_type", i)
    rej.mark(pc.fill_null(pc.less(col, 0), False), "negative_value", i)
    return col


def _parse_timestamp(col, i, rej, now_ms):
    if pa.types.is_string(col.type):
        col = _strings_to_timestamps(col, i, rej)
    elif pa.types.is_timestamp(col.type):
        col = col.cast(schema.TIMESTAMP)
    else:
        raise InputError(f"timestamp field has type {col.type}; expected strings or timestamps")
    ms = pc.cast(col.cast(pa.timestamp("ms")), pa.int64())
    rej.mark(pc.fill_null(pc.greater(ms, now_ms), False), "future_timestamp", i)
    return col


def _strings_to_timestamps(col: pa.Array, i: int, rej: _Rejections) -> pa.Array:
    """ISO-8601 (UTC unless an offset is given) or Unix seconds; anything else is wrong_type."""
    stripped = pc.utf8_trim_whitespace(col)
    stripped = pc.replace_substring_regex(stripped, r"Z$", "+0000")
    out = pa.nulls(len(col), pa.timestamp("ms", tz="UTC"))
    for fmt in _ISO_FORMATS:
        parsed = pc.strptime(stripped, format=fmt, unit="ms", error_is_null=True)
        parsed = parsed.cast(pa.timestamp("ms", tz="UTC")) if parsed.type.tz is None else parsed
        out = pc.coalesce(out, parsed.cast(pa.timestamp("ms", tz="UTC")))
    epoch = pc.fill_null(pc.match_substring_regex(stripped, _EPOCH_SECONDS), False)
    seconds = pc.cast(pc.if_else(epoch, stripped, pa.scalar(None, pa.string())), pa.float64())
    from_epoch = pc.cast(pc.cast(pc.multiply(seconds, 1000.0), pa.int64()), pa.timestamp("ms"))
    out = pc.coalesce(out, from_epoch.cast(pa.timestamp("ms", tz="UTC")))
    unparsed = pc.and_(pc.is_null(out), pc.is_valid(col))
    unparsed = pc.and_(unparsed, pc.not_equal(stripped, ""))
    rej.mark(pc.fill_null(unparsed, False), "wrong_type", i)
    return out


def _parse_list(col, i, rej, now_ms):
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return col
    parts = pc.split_pattern(pc.fill_null(col, ""), TAG_SEPARATOR)
    # "a| b|" → ["a", "b"]: trim and drop empty pieces.
    flat = pc.utf8_trim_whitespace(pc.list_flatten(parts))
    offsets = pc.list_parent_indices(parts)
    keep = pc.not_equal(flat, "")
    lengths = np.bincount(offsets.filter(keep).to_numpy(), minlength=len(col))
    out_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(out_offsets), flat.filter(keep))
    return pc.if_else(pc.is_null(col), pa.scalar(None, lists.type), lists)


_PARSERS = {
    "id": _parse_id,
    "string": _parse_string,
    "event": _parse_event,
    "float": _parse_float,
    "timestamp": _parse_timestamp,
    "list": _parse_list,
}


def _quarantine_rows(data, raw_columns, fields, rej: _Rejections, table: str) -> pa.Table:
    bad = np.flatnonzero(~rej.ok)
    if len(bad) == 0:
        return schema.QUARANTINE.empty_table()
    take = pa.array(bad)
    raw = {f.name: raw_columns[f.name].take(take).to_pylist() for f in fields}
    rows = (
        data.column(schema.SOURCE_ROW_COLUMN).take(take).to_pylist()
        if schema.SOURCE_ROW_COLUMN in data.column_names
        else bad.tolist()
    )
    reasons, details, raws = [], [], []
    for k, j in enumerate(bad):
        f = fields[rej.field[j]]
        reasons.append(schema.REASONS[rej.reason[j]])
        details.append(f"{f.name}={raw_to_text(raw[f.name][k])!r}"[:300])
        raws.append(raw_to_text({name: raw[name][k] for name in raw}))
    return _quarantine_table(table, rows, reasons, details, raws)


def _quarantine_table(table: str, source_rows: list, reasons: list, details: list, raws: list):
    """The quarantine's columns for one table's rejected rows, one entry per row in each list."""
    return pa.table(
        {
            "table": pa.array([table] * len(source_rows), pa.string()),
            "source_row": pa.array(source_rows, pa.int64()),
            "reason": pa.array(reasons, pa.string()),
            "detail": pa.array(details, pa.string()),
            "raw": pa.array(raws, pa.string()),
        },
        schema=schema.QUARANTINE,
    )


def rejects_table(rows: list[dict]) -> pa.Table:
    """Parse-level rejects from a source (`Source.rejects`) as a quarantine table."""
    if not rows:
        return schema.QUARANTINE.empty_table()
    return pa.Table.from_pylist(rows, schema=schema.QUARANTINE)


def as_quarantine(rows: pa.Table, table: str, reason: str, detail) -> pa.Table:
    """Rows a later check rejects (a duplicate seen after validation) as a quarantine table:
    `rows` carry their source row, `detail` is one text for all or one per row."""
    n = rows.num_rows
    details = detail if isinstance(detail, list) else [detail] * n
    src = rows.column(schema.SOURCE_ROW_COLUMN).to_pylist()
    fields = rows.drop_columns([schema.SOURCE_ROW_COLUMN]).to_pylist()
    return _quarantine_table(table, src, [reason] * n, details, [raw_to_text(r) for r in fields])


def _to_bool(mask) -> np.ndarray:
    if isinstance(mask, np.ndarray):
        return mask.astype(bool, copy=False)
    if isinstance(mask, pa.ChunkedArray):
        mask = mask.combine_chunks()
    return np.asarray(mask.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
