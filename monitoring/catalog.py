"""The served catalog as the relevance figures read it: one row per creator of an index version.

A `Catalog` holds, by row (the faiss row of the version, which is also the row the answer log's
creator ids map to):

- `creator_ids`, `popularity` (training interactions: the fans each creator had in the training
  pairs, what novelty and the long tail count), `first_seen` (the catalog's `created_at`, else
  the creator's first training pair; seconds since the epoch, NaN unknown), `category` (int
  codes) and `embeddings` (the creator tower's unit vectors, for intra-list diversity);
- the fans' side: each fan's history as category counts (`history`, fans × categories, what
  calibration compares a list with) and `num_users` (the fans of the training pairs: novelty's
  u);
- `later`: interactions made after answers were served (fan id, creator row, time), what the
  online recall proxy looks for in earlier lists.

`Catalog.build` makes one from arrays (tests, other sources); `Catalog.from_version` from a
published index version and the prepared dataset it was built from (index.store's layout, the
same files the service's bundle reads). Nothing here is written back, so nothing needs io.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from common import artifacts
from common.errors import ConfigError, MissingInputError
from data import contract, tables
from index import store as index_store

UNIT_ATOL = 1e-4
"""How far from 1 an embedding's norm may be before `build` normalises the rows itself."""


@dataclass
class Later:
    """Interactions made after answers were served: who, with which catalog row, when."""

    fan_ids: np.ndarray  # [m] str
    rows: np.ndarray  # [m] int32 catalog rows
    ts: np.ndarray  # [m] float64 seconds since the epoch; +inf: after every logged answer
    dropped: int = 0
    """Interactions left out because the catalog does not hold their creator."""

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(eq=False)
class Catalog:
    """The creators of one served version and the fans' side the figures need (module doc)."""

    creator_ids: np.ndarray  # [C] str
    popularity: np.ndarray  # [C] int64 training interactions
    first_seen: np.ndarray  # [C] float64 seconds since the epoch, NaN unknown
    category: np.ndarray  # [C] int32 codes in [0, num_categories)
    embeddings: np.ndarray  # [C, d] float32 unit rows (may be memory-mapped)
    num_users: int
    fan_ids: np.ndarray  # [F] str, the rows of `history`
    history: sp.csr_matrix  # [F, G] float64: each fan's history creators per category
    later: Later | None = None
    version: str | None = None

    def __len__(self) -> int:
        return len(self.creator_ids)

    @property
    def num_categories(self) -> int:
        return self.history.shape[1]

    @functools.cached_property
    def _ids(self) -> pa.Array:
        return pa.array(self.creator_ids)

    @functools.cached_property
    def _fans(self) -> pa.Array:
        return pa.array(self.fan_ids)

    @functools.cached_property
    def history_share(self) -> sp.csr_matrix:
        """[F, G] each fan's history mix p(g|u): `history` with rows summing to 1 (or 0)."""
        total = np.asarray(self.history.sum(1)).ravel()
        return sp.csr_matrix(sp.diags(1.0 / np.maximum(total, 1.0)) @ self.history)

    def rows(self, creator_ids) -> np.ndarray:
        """Catalog rows of creator ids [n] as int32, -1 for an id the catalog does not hold."""
        return _index_in(creator_ids, self._ids)

    def fan_rows(self, fan_ids) -> np.ndarray:
        """Rows of `history` for fan ids [n] as int32, -1 for a fan without a history."""
        return _index_in(fan_ids, self._fans)

    @classmethod
    def build(
        cls,
        creator_ids,
        popularity,
        first_seen,
        category,
        embeddings,
        *,
        num_users: int,
        num_categories: int | None = None,
        history=((), ()),
        later=None,
        version: str | None = None,
    ) -> Catalog:
        """A catalog from arrays by row. `history` is (fan ids [m], category codes [m]), one
        pair per creator a fan followed; `later` is (fan ids, creator ids, seconds since the
        epoch) of interactions made after answers were served, or None."""
        ids = np.asarray(creator_ids, dtype=str)
        category = np.asarray(category, np.int64)
        g = int(category.max(initial=-1)) + 1 if num_categories is None else num_categories
        columns = {
            "popularity": np.asarray(popularity, np.int64),
            "first_seen": np.asarray(first_seen, np.float64),
            "category": category,
            "embeddings": np.asarray(embeddings),
        }
        _check(ids, columns, num_users, g)
        catalog = cls(
            creator_ids=ids,
            popularity=columns["popularity"],
            first_seen=columns["first_seen"],
            category=category.astype(np.int32),
            embeddings=_unit(columns["embeddings"]),
            num_users=int(num_users),
            fan_ids=np.zeros(0, dtype=str),
            history=sp.csr_matrix((0, g)),
            version=version,
        )
        catalog.fan_ids, catalog.history = _history(*history, g)
        if later is not None:
            catalog.later = catalog.interactions(*later)
        return catalog

    def interactions(self, fan_ids, creator_ids, ts) -> Later:
        """Later interactions by id (ts in seconds since the epoch, +inf: after every logged
        answer); those whose creator this catalog lacks are counted in `dropped`."""
        fans, ts = np.asarray(fan_ids, dtype=str), np.asarray(ts, np.float64)
        rows = self.rows(list(creator_ids))
        if not len(fans) == len(rows) == len(ts):
            raise ConfigError(
                f"later interactions: {len(fans)} fan ids, {len(rows)} creator ids and "
                f"{len(ts)} times; give one of each per interaction"
            )
        if np.isnan(ts).any():
            raise ConfigError(
                f"later interactions: {int(np.isnan(ts).sum())} times are NaN; give each "
                f"interaction a time (or +inf for 'after every answer')"
            )
        known = rows >= 0
        return Later(fans[known], rows[known], ts[known], dropped=int((~known).sum()))

    @classmethod
    def from_version(
        cls, root: str | Path, version: str | None = None, later_split: str | None = None
    ) -> Catalog:
        """The catalog of a published index version (the store's current one by default) and
        its prepared dataset; `later_split` (e.g. "test") makes that split's pairs the later
        interactions, counted as made after every logged answer."""
        manifest = index_store.read_manifest(Path(root), version)
        folder = index_store.versions_dir(Path(root)) / manifest["version"]
        files = manifest.get("files") or {}
        needed = {f: files[f] for f in (index_store.CREATORS, index_store.EMBEDDINGS) if f in files}
        artifacts.verify(folder, needed, "rebuild the version (`python -m index rebuild`)")
        served = pq.read_table(folder / index_store.CREATORS, columns=["creator_idx", "creator_id"])
        creator_idx = served["creator_idx"].to_numpy().astype(np.int64)
        data_dir = _dataset(manifest)
        known = _Dataset(data_dir)
        catalog = cls.build(
            served["creator_id"].to_numpy(zero_copy_only=False).astype(str),
            known.popularity[creator_idx],
            known.first_seen[creator_idx],
            known.category[creator_idx],
            np.load(folder / index_store.EMBEDDINGS, mmap_mode="r", allow_pickle=False),
            num_users=known.num_users,
            num_categories=known.num_categories,
            version=manifest["version"],
        )
        catalog.fan_ids, catalog.history = known.history()
        if later_split is not None:
            catalog.later = catalog.interactions(*known.split(later_split))
        return catalog


def _index_in(values, value_set: pa.Array) -> np.ndarray:
    """Each value's position in `value_set` (int32, -1 absent), by Arrow's hash table: a
    Python dict lookup per id was the binding's largest cost."""
    found = pc.index_in(pa.array(np.asarray(values, dtype=str)), value_set=value_set)
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)


def _check(ids: np.ndarray, columns: dict, num_users: int, num_categories: int) -> None:
    """Refuse arrays that disagree, naming the one and what to do."""
    n = len(ids)
    for name, values in columns.items():
        if len(values) != n:
            raise ConfigError(f"catalog: {len(values)} {name} for {n} creator ids; give one each")
    if len(np.unique(ids)) != n:
        raise ConfigError(f"catalog: creator ids repeat ({n} ids, {len(np.unique(ids))} distinct)")
    emb = columns["embeddings"]
    if emb.ndim != 2 or not np.isfinite(emb).all():
        raise ConfigError(f"catalog: embeddings of shape {emb.shape} must be [C, d] and finite")
    category, popularity = columns["category"], columns["popularity"]
    if n and (category.min() < 0 or category.max() >= num_categories):
        raise ConfigError(
            f"catalog: category codes span [{category.min()}, {category.max()}] but there are "
            f"{num_categories} categories; use codes 0..{num_categories - 1}"
        )
    if n and popularity.min() < 0:
        raise ConfigError(f"catalog: popularity {popularity.min()} < 0; count interactions")
    if num_users < 1 or (n and popularity.max() > num_users):
        raise ConfigError(
            f"catalog: num_users={num_users} with a creator of popularity "
            f"{popularity.max(initial=0)}; popularity counts fans, so num_users must be >= it"
        )


def _unit(embeddings: np.ndarray) -> np.ndarray:
    """The rows as float32 unit vectors; a memory-mapped array already unit stays mapped."""
    norms = np.linalg.norm(embeddings, axis=1)
    if len(norms) and np.abs(norms - 1.0).max() <= UNIT_ATOL and embeddings.dtype == np.float32:
        return embeddings
    if (norms == 0).any():
        raise ConfigError(
            f"catalog: {int((norms == 0).sum())} embeddings are all zeros (e.g. row "
            f"{int(np.argmax(norms == 0))}); a creator needs a direction for diversity"
        )
    return (embeddings / norms[:, None]).astype(np.float32)


def _history(fan_ids, categories, num_categories: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """(distinct fan ids [F], their category counts [F, G]) from one pair per followed creator."""
    fans = np.asarray(fan_ids, dtype=str)
    categories = np.asarray(categories, np.int64)
    if len(fans) != len(categories):
        raise ConfigError(f"history: {len(fans)} fan ids for {len(categories)} categories")
    if len(categories) and (categories.min() < 0 or categories.max() >= num_categories):
        raise ConfigError(
            f"history: category codes span [{categories.min()}, {categories.max()}]; the "
            f"catalog has {num_categories} categories"
        )
    encoded = pc.dictionary_encode(pa.array(fans))  # hashing: np.unique sorts the strings
    distinct = np.asarray(encoded.dictionary.to_pylist(), dtype=str)
    fan = encoded.indices.to_numpy()
    counts = sp.csr_matrix(
        (np.ones(len(fan)), (fan, categories)), shape=(len(distinct), num_categories)
    )
    counts.sum_duplicates()
    return distinct, counts


def _dataset(manifest: dict) -> Path:
    data_dir = Path(manifest["catalog"]["data_dir"])
    if not (data_dir / tables.CREATORS).exists():
        raise MissingInputError(
            f"index version {manifest['version']} was built from {data_dir}, which has no "
            f"{tables.CREATORS}; restore that prepared dataset or monitor a newer version"
        )
    return data_dir


class _Dataset:
    """What a prepared dataset says of its creators and fans, by vocabulary index."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        t = pq.read_table(
            data_dir / tables.CREATORS,
            columns=["creator_idx", "creator_id", "category_idx", "created_at", "train_count"],
        )
        idx = t["creator_idx"].to_numpy().astype(np.int64)
        size = int(idx.max(initial=0)) + 1
        self.creator_id = np.full(size, "", dtype=object)
        self.creator_id[idx] = t["creator_id"].to_pylist()
        self.category = np.full(size, contract.UNK, np.int64)  # blank: the unknown category
        self.category[idx] = t["category_idx"].fill_null(contract.UNK).to_numpy()
        self.num_categories = int(self.category.max(initial=contract.UNK)) + 1
        self.popularity = np.zeros(size, np.int64)
        self.popularity[idx] = t["train_count"].to_numpy()
        created = pc.divide(t["created_at"].cast("int64").cast("float64"), 1000.0)
        self.first_seen = np.full(size, np.nan)
        self.first_seen[idx] = created.to_numpy(zero_copy_only=False)
        self.train = self._pairs(tables.TRAIN)
        self._first_pairs(size)
        users = pq.read_table(data_dir / tables.USERS, columns=["user_idx", "user_id"])
        uidx = users["user_idx"].to_numpy().astype(np.int64)
        self.user_id = np.full(int(uidx.max(initial=0)) + 1, "", dtype=object)
        self.user_id[uidx] = users["user_id"].to_pylist()
        self.num_users = max(len(np.unique(self.train["user_idx"])), 1)

    def _pairs(self, split: str) -> dict[str, np.ndarray]:
        path = self.data_dir / split
        if not path.exists():
            raise MissingInputError(f"no {path}; prepare the dataset again or name another split")
        t = pq.read_table(path, columns=["user_idx", "creator_idx", "ts"])
        return {c: t[c].to_numpy().astype(np.int64) for c in t.column_names}

    def _first_pairs(self, size: int) -> None:
        """A creator without `created_at` was first seen at its first training pair."""
        first = np.full(size, np.inf)
        np.minimum.at(first, self.train["creator_idx"], self.train["ts"] / 1000.0)
        blank = np.isnan(self.first_seen) & np.isfinite(first)
        self.first_seen[blank] = first[blank]

    def history(self) -> tuple[np.ndarray, sp.csr_matrix]:
        """(fan ids [F], their training pairs' category counts [F, G]), counted on integer
        indices: the 1 M set's pairs as strings would take longer than the whole monitor."""
        users, category = self.train["user_idx"], self.category[self.train["creator_idx"]]
        distinct, fan = np.unique(users, return_inverse=True)
        counts = sp.csr_matrix(
            (np.ones(len(fan)), (fan, category)), shape=(len(distinct), self.num_categories)
        )
        counts.sum_duplicates()
        return self.user_id[distinct].astype(str), counts

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fan ids, creator ids, +inf) of a split's pairs: made after every logged answer."""
        splits = {"test": tables.TEST, "validation": tables.VALIDATION, "train": tables.TRAIN}
        if name not in splits:
            raise ConfigError(f"later split {name!r}: use one of {sorted(splits)}")
        p = self._pairs(splits[name])
        fans = self.user_id[p["user_idx"]].astype(str)
        return fans, self.creator_id[p["creator_idx"]].astype(str), np.full(len(fans), np.inf)
