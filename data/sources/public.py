"""Public datasets as sources: Last.fm HetRec 2011, MovieLens 100K and the LightGCN text format.

Each file is read whole (the largest, Gowalla's train.txt, is under 5 MB) and split into lines and
fields here rather than by a CSV reader, so that one broken line becomes a reject instead of an
exception that loses the whole file. Columns are handed over typed: string ids, TIMESTAMP times,
float32 values.

`_row` (and `source_row` of a reject) is the 0-based line number in the file the row came from,
header line included, so `sed -n "$((row + 1))p" FILE` shows it. A LightGCN line holds many
interactions: they all carry the number of their line, in train.txt or test.txt (see `split`).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa

from data.schema import CREATORS, INTERACTIONS, SOURCE_ROW_COLUMN, SPLIT_COLUMN, TIMESTAMP, USERS
from data.sources.base import Source

BATCH_ROWS = 1_000_000
INTERACTIONS_WITH_ROW = INTERACTIONS.append(pa.field(SOURCE_ROW_COLUMN, pa.int64(), False))
INTERACTIONS_WITH_SPLIT = INTERACTIONS_WITH_ROW.append(pa.field(SPLIT_COLUMN, pa.string(), False))
# Last.fm text is UTF-8 except a few tags written in Latin-1; cp1252 is tried before latin-1
# because it maps 0x80-0x9f to printable characters, and latin-1 last because it never fails.
TEXT_ENCODINGS = ("utf-8", "cp1252", "latin-1")
MAX_TAGS = 5
# The 19 genre flags of u.item, in column order (as listed in MovieLens 100K's u.genre).
MOVIELENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MONTHS = {name: number for number, name in enumerate(MONTH_NAMES, start=1)}

Parser = Callable[[bytes], object]


# --- field parsers: each raises ValueError (or UnicodeDecodeError) on a field it cannot read ---


def _id(raw: bytes) -> str:
    """An id, kept as the dataset spells it; ID_PATTERN is checked later by validation."""
    return raw.strip().decode("utf-8")


def _text(raw: bytes) -> str | None:
    """Free text, decoded per field so that one Latin-1 field does not spoil its file."""
    raw = raw.strip()
    for encoding in TEXT_ENCODINGS:
        try:
            return raw.decode(encoding) or None
        except UnicodeDecodeError:
            continue
    raise AssertionError("unreachable: latin-1 decodes any bytes")


def _latin1(raw: bytes) -> str | None:
    return raw.strip().decode("latin-1") or None


def _skip(raw: bytes) -> None:
    return None


def _date_ms(raw: bytes) -> int | None:
    """A MovieLens date like 01-Jan-1995 as epoch milliseconds (month names are not localised)."""
    if not raw.strip():
        return None
    day, month, year = raw.strip().decode("ascii").split("-")
    if month not in MONTHS:
        raise ValueError(f"unknown month in date {raw!r}")
    when = datetime(int(year), MONTHS[month], int(day), tzinfo=UTC)
    return int(when.timestamp()) * 1000


# --- shared machinery ---


@dataclass(init=False)
class _FolderSource(Source):
    """A source that reads fixed file names from one folder; missing files fail on construction."""

    path: Path = field(default_factory=Path)

    KIND: ClassVar[str] = ""
    REQUIRED: ClassVar[tuple[str, ...]] = ()
    OPTIONAL: ClassVar[tuple[str, ...]] = ()
    DATASET: ClassVar[str] = ""  # named in the error for a missing file

    def __init__(self, path: str | os.PathLike, name: str | None = None, **flags):
        super().__init__(name=name or self.KIND, **flags)
        self.path = Path(path)
        where = self.path if self.path.is_dir() else f"{self.path} (no such folder)"
        for fname in self.REQUIRED:
            if not (self.path / fname).is_file():
                raise FileNotFoundError(
                    f"{fname} not found in {where}; expected the {self.DATASET} files: "
                    f"{', '.join(self.REQUIRED)}"
                )

    def describe(self) -> dict:
        """Kind, folder and the md5 of every file this source reads."""
        names = [*self.REQUIRED, *(f for f in self.OPTIONAL if (self.path / f).is_file())]
        files = {n: hashlib.md5((self.path / n).read_bytes()).hexdigest() for n in names}
        return {"kind": self.KIND, "path": str(self.path), "files": files}

    def _read(self, fname: str) -> bytes:
        return (self.path / fname).read_bytes()

    def _fields(
        self,
        fname: str,
        sep: bytes | None,
        parsers: Sequence[Parser],
        table: str | None,
        header: bool,
    ) -> tuple[list[list], list[int]]:
        """Parse every line of `fname` into columns (one per parser) and their line numbers.

        A line with the wrong number of fields is rejected as malformed_row, one whose field a
        parser refuses as bad_encoding or wrong_type. With `table=None` nothing is recorded (for
        a second pass over a file whose rejects another method already reports).
        """
        numbers, lines, parts = self._split(fname, sep, len(parsers), table, header)
        try:
            return _columns(parsers, parts), numbers
        except ValueError:
            # Slow path, only for a file with a bad field: find and reject the rows that fail.
            keep = [
                i
                for i, fields in enumerate(parts)
                if self._parses(fname, numbers[i], lines[i], fields, parsers, table)
            ]
            return _columns(parsers, [parts[i] for i in keep]), [numbers[i] for i in keep]

    def _split(
        self, fname: str, sep: bytes | None, n_fields: int, table: str | None, header: bool
    ) -> tuple[list[int], list[bytes], list[list[bytes]]]:
        """Line numbers, lines and fields of the lines that have `n_fields`; others rejected."""
        numbers, lines, parts = [], [], []
        all_lines = self._read(fname).split(b"\n")
        for line_no, line in enumerate(all_lines[1:] if header else all_lines, start=int(header)):
            line = line.rstrip(b"\r")
            if not line.strip():
                continue  # blank lines (a trailing newline, a CRLF file) carry no row
            fields = line.split(sep)
            if len(fields) == n_fields:
                numbers.append(line_no)
                lines.append(line)
                parts.append(fields)
            elif table is not None:
                detail = f"{fname} line {line_no}: expected {n_fields} fields, got {len(fields)}"
                self.reject(table, line_no, "malformed_row", detail, line)
        return numbers, lines, parts

    def _parses(
        self,
        fname: str,
        line_no: int,
        line: bytes,
        fields: list[bytes],
        parsers: Sequence[Parser],
        table: str | None,
    ) -> bool:
        """Whether every field of one line parses; if not, the line is rejected (slow path)."""
        try:
            for parse, raw in zip(parsers, fields, strict=True):
                parse(raw)
            return True
        except UnicodeDecodeError as err:  # before ValueError: it is a subclass
            reason, detail = "bad_encoding", str(err)
        except ValueError as err:
            reason, detail = "wrong_type", str(err)
        if table is not None:
            self.reject(table, line_no, reason, f"{fname} line {line_no}: {detail}", line)
        return False


def _columns(parsers: Sequence[Parser], rows: list[list[bytes]]) -> list[list]:
    """Rows of fields as parsed columns; map() per column is several times faster than per row."""
    if not rows:
        return [[] for _ in parsers]
    columns = zip(*rows, strict=True)
    return [
        [None] * len(rows) if parse is _skip else list(map(parse, column))
        for parse, column in zip(parsers, columns, strict=True)
    ]


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")


def _interaction_batches(
    users: list | pa.Array,
    creators: list | pa.Array,
    event_type: str,
    values: Sequence[float] | np.ndarray,
    rows: Sequence[int] | np.ndarray,
    timestamps_ms: Sequence[int] | None = None,
    split: str | None = None,
) -> Iterator[pa.RecordBatch]:
    """Interactions as batches of at most BATCH_ROWS rows (one, possibly empty, at least)."""
    n = len(rows)
    arrays = [
        users if isinstance(users, pa.Array) else pa.array(users, pa.string()),
        creators if isinstance(creators, pa.Array) else pa.array(creators, pa.string()),
        pa.repeat(pa.scalar(event_type, pa.string()), n),
        pa.nulls(n, TIMESTAMP) if timestamps_ms is None else pa.array(timestamps_ms, TIMESTAMP),
        pa.array(np.asarray(values, dtype=np.float32)),
        pa.array(np.asarray(rows, dtype=np.int64)),
    ]
    schema = INTERACTIONS_WITH_ROW
    if split is not None:
        arrays.append(pa.repeat(pa.scalar(split, pa.string()), n))
        schema = INTERACTIONS_WITH_SPLIT
    batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
    for start in range(0, max(n, 1), BATCH_ROWS):
        yield batch.slice(start, BATCH_ROWS)


def _ids_only(ids: list[str], schema: pa.Schema, id_column: str) -> pa.Table:
    """A USERS or CREATORS table holding ids and nothing else."""
    columns = {f.name: pa.nulls(len(ids), f.type) for f in schema}
    columns[id_column] = pa.array(ids, pa.string())
    return pa.table(columns, schema=schema)


# --- Last.fm HetRec 2011 ---


@dataclass(init=False)
class LastFmSource(_FolderSource):
    """Last.fm HetRec 2011: fans follow artists; value is the play count; no event times."""

    KIND: ClassVar[str] = "lastfm"
    DATASET: ClassVar[str] = "HetRec 2011"
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "user_artists.dat",
        "artists.dat",
        "tags.dat",
        "user_taggedartists.dat",
    )

    def __init__(self, path: str | os.PathLike, name: str | None = None, tag_holdout: float = 0.0):
        super().__init__(path, name, has_timestamps=False)
        if not 0.0 <= tag_holdout < 1.0:
            raise ValueError(f"tag_holdout={tag_holdout}: a fraction of tagging users in [0, 1)")
        self.tag_holdout = tag_holdout
        """Tagging users (tag_held_out) whose tags stay out of the catalog: creator search's
        topical queries and their relevance (search.queries), never the indexed text."""
        self.estimated_rows = _count_lines(self.path / "user_artists.dat") - 1  # minus header

    def interactions(self) -> Iterator[pa.RecordBatch]:
        """One "follow" per (user, artist) pair, value = play count, timestamp null."""
        parsers = (_id, _id, float)
        (users, artists, plays), rows = self._fields(
            "user_artists.dat", b"\t", parsers, "interactions", header=True
        )
        yield from _interaction_batches(users, artists, "follow", plays, rows)

    def users(self) -> pa.Table:
        """The users of user_artists.dat, ids only: HetRec has no user attributes."""
        (users, _, _), _ = self._fields("user_artists.dat", b"\t", (_id, _skip, _skip), None, True)
        return _ids_only(list(dict.fromkeys(users)), USERS, "user_id")

    def creators(self) -> pa.Table:
        """Artists with their five most-applied tags; the first of them is the category."""
        parsers = (_id, _text, _skip, _skip)  # id, name, url, pictureURL
        (ids, names, _, _), _ = self._fields("artists.dat", b"\t", parsers, "creators", True)
        top = self._top_tags()
        tags = [top.get(artist) for artist in ids]
        return pa.table(
            {
                "creator_id": ids,
                "name": names,
                "category": [t[0] if t else None for t in tags],
                "tags": tags,
                "description": [_description(n, t) for n, t in zip(names, tags, strict=True)],
                "created_at": pa.nulls(len(ids), TIMESTAMP),
            },
            schema=CREATORS,
        )

    def tag_assignments(self, held_out: bool = False, table: str | None = None):
        """(user, artist, tag id) of every tag assignment on the catalog's side of the tag
        hold-out (held_out=False) or on the held-out side, and tag id -> name."""
        # Rejects from these two files are filed under `table` ("creators": what they feed).
        (tag_ids, tag_names), _ = self._fields("tags.dat", b"\t", (int, _text), table, True)
        parsers = (_id, _id, int, _skip, _skip, _skip)  # user, artist, tag, day, month, year
        (users, artists, tags, *_), _ = self._fields(
            "user_taggedartists.dat", b"\t", parsers, table, True
        )
        side = {u: tag_held_out(u, self.tag_holdout) for u in set(users)}
        chosen = [(u, a, t) for u, a, t in zip(users, artists, tags, strict=True)
                  if side[u] == held_out]  # fmt: skip
        return chosen, dict(zip(tag_ids, tag_names, strict=True))

    def _top_tags(self) -> dict[str, list[str]]:
        """Artist id -> its MAX_TAGS most-applied tag names (ties: the older, smaller tag id),
        counted over the catalog's side of the tag hold-out only."""
        assigned, names = self.tag_assignments(held_out=False, table="creators")
        counts = Counter((artist, tag) for _, artist, tag in assigned)
        top: dict[str, list[str]] = {}
        for (artist, tag), _count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][1])):
            chosen = top.setdefault(artist, [])
            if len(chosen) < MAX_TAGS and names.get(tag):
                chosen.append(names[tag])
        return {artist: chosen for artist, chosen in top.items() if chosen}


def tag_held_out(user_id: str, fraction: float) -> bool:
    """Whether a tagging user's assignments are held out of the catalog (a stable hash of the
    id, the same on every run and machine): the one definition of the tag hold-out."""
    if fraction <= 0.0:
        return False
    digest = hashlib.blake2b(f"tag-holdout:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def _description(name: str | None, tags: list[str] | None) -> str | None:
    """Text for a text encoder: the name and the tags; null when there are no tags to add."""
    if not tags:
        return None
    return f"{name or 'Unnamed artist'}: {', '.join(tags)}"


# --- MovieLens 100K ---


@dataclass(init=False)
class MovieLensSource(_FolderSource):
    """MovieLens 100K: each rating is a "like" whose value is the rating (1-5), with its time."""

    KIND: ClassVar[str] = "movielens"
    DATASET: ClassVar[str] = "MovieLens 100K"
    REQUIRED: ClassVar[tuple[str, ...]] = ("u.data", "u.item", "u.user")

    def __init__(self, path: str | os.PathLike, name: str | None = None):
        super().__init__(path, name, has_timestamps=True)
        self.estimated_rows = _count_lines(self.path / "u.data")

    def interactions(self) -> Iterator[pa.RecordBatch]:
        """u.data rows: user, item, rating, unix seconds."""
        parsers = (_id, _id, float, int)
        (users, items, ratings, seconds), rows = self._fields(
            "u.data", b"\t", parsers, "interactions", header=False
        )
        millis = np.asarray(seconds, dtype=np.int64) * 1000
        yield from _interaction_batches(users, items, "like", ratings, rows, millis)

    def creators(self) -> pa.Table:
        """Movies: title, first genre as category, all genres as tags, release date."""
        # id | title | release date | video release date | IMDb URL | 19 genre flags
        parsers = (_id, _latin1, _date_ms, _skip, _skip, *[int] * len(MOVIELENS_GENRES))
        (ids, titles, released, _, _, *flags), _ = self._fields(
            "u.item", b"|", parsers, "creators", header=False
        )
        genres = [
            [g for g, on in zip(MOVIELENS_GENRES, row, strict=True) if on]
            for row in zip(*flags, strict=True)
        ]
        return pa.table(
            {
                "creator_id": ids,
                "name": titles,
                "category": [g[0] if g else None for g in genres],
                "tags": genres,
                "description": pa.nulls(len(ids), pa.string()),
                "created_at": pa.array(released, TIMESTAMP),
            },
            schema=CREATORS,
        )

    def users(self) -> pa.Table:
        """u.user: age, gender, occupation and zip code as "key=value" attributes."""
        keys = ("age", "gender", "occupation", "zip")
        parsers = (_id, *[_latin1] * len(keys))
        (ids, *values), _ = self._fields("u.user", b"|", parsers, "users", header=False)
        attributes = [
            [f"{k}={v}" for k, v in zip(keys, row, strict=True) if v is not None]
            for row in zip(*values, strict=True)
        ]
        return pa.table(
            {
                "user_id": ids,
                "signup_at": pa.nulls(len(ids), TIMESTAMP),
                # As briefed; note some zip codes are Canadian postal codes (kept in attributes).
                "country": ["US"] * len(ids),
                "attributes": attributes,
            },
            schema=USERS,
        )


# --- LightGCN text format (Gowalla, Yelp2018, Amazon-Book as published with LightGCN) ---


@dataclass(init=False)
class LightGCNSource(_FolderSource):
    """train.txt/test.txt lines `user item item ...` with dense ids; the split is given."""

    KIND: ClassVar[str] = "lightgcn"
    DATASET: ClassVar[str] = "LightGCN"
    REQUIRED: ClassVar[tuple[str, ...]] = ("train.txt", "test.txt")
    OPTIONAL: ClassVar[tuple[str, ...]] = ("item_list.txt", "user_list.txt")
    SPLITS: ClassVar[tuple[tuple[str, str], ...]] = (("train", "train.txt"), ("test", "test.txt"))

    def __init__(self, path: str | os.PathLike, name: str | None = None):
        super().__init__(path, name, has_timestamps=False, has_given_split=True)
        # Each item on a line follows one space: a close estimate without tokenising.
        self.estimated_rows = sum(self._read(f).count(b" ") for _, f in self.SPLITS)

    def interactions(self) -> Iterator[pa.RecordBatch]:
        """Every (user, item) as a "follow" of value 1.0, with `split` train or test."""
        for split, fname in self.SPLITS:
            users, items, rows = self._adjacency(fname)
            yield from _interaction_batches(
                users, items, "follow", np.ones(len(rows), np.float32), rows, split=split
            )

    def creators(self) -> pa.Table | None:
        """Item ids from item_list.txt (remapped ids, nothing else known); None without it."""
        return self._id_list("item_list.txt", CREATORS, "creator_id", "creators")

    def users(self) -> pa.Table | None:
        """User ids from user_list.txt, including any with no items; None without it."""
        return self._id_list("user_list.txt", USERS, "user_id", "users")

    def _adjacency(self, fname: str) -> tuple[pa.Array, pa.Array, np.ndarray]:
        """User ids, item ids and line numbers, one entry per (user, item) on the file's lines."""
        users: list[bytes] = []
        items: list[bytes] = []
        counts: list[int] = []
        numbers: list[int] = []
        for line_no, line in enumerate(self._read(fname).split(b"\n")):
            tokens = line.split()
            if not tokens:
                continue
            # One C-level check per line instead of int() per token: ids are non-negative ints.
            if not b"".join(tokens).isdigit():
                detail = f"{fname} line {line_no}: a token is not a non-negative integer"
                self.reject("interactions", line_no, "malformed_row", detail, line)
                continue
            users.append(tokens[0])
            items.extend(tokens[1:])
            counts.append(len(tokens) - 1)
            numbers.append(line_no)
        owner = np.repeat(np.arange(len(users)), counts)  # line index of each item
        user_ids = _ascii_strings(users).take(pa.array(owner))
        return user_ids, _ascii_strings(items), np.asarray(numbers, np.int64)[owner]

    def _id_list(self, fname: str, schema: pa.Schema, column: str, table: str) -> pa.Table | None:
        if not (self.path / fname).is_file():
            return None
        (_, remapped), _ = self._fields(fname, None, (_skip, _id), table, header=True)
        return _ids_only(remapped, schema, column)


def _ascii_strings(tokens: list[bytes]) -> pa.Array:
    """Digit tokens as a string array, converted in C rather than by decoding each token."""
    return pa.array(tokens, pa.binary()).cast(pa.string())
