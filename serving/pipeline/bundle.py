"""A bundle: one published index version and the user tower it was built for.

The version folder's `user_tower.onnx` is served by Triton or in-process (serving.pipeline.
towers); a bundle pairs it with the version's index, so every answer comes from one consistent
pair of model and index versions. `load_bundle` refuses a pair that does not agree: a feature
store hashed for another model, or a tower that does not reproduce the index's probe vectors.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from common.errors import IntegrityError, MissingInputError
from data import tables
from index import projection
from index import store as index_store
from ranking import store as ranking_store
from ranking.features import FEATURES, Window
from search.engine import Engine
from search.lexical import Lexical
from search.semantic import Semantic
from search.suggest import Suggest
from search.topics import Topics
from serving.features.base import check_hashing

log = logging.getLogger(__name__)

Encode = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass
class Tower:
    """A version's user tower, ready to run where a provider (serving.pipeline.towers) put it."""

    encode: Encode
    """[B] user, [B, N] history, [B, A] attributes (only the tower's inputs) → [B, d]."""
    inputs: tuple[str, ...]
    name: str
    release: Callable[[], None] | None = None
    """Unloads it once a newer version serves."""
    fallback: Encode | None = None
    """The same ONNX run in this process, for when `encode`'s server does not answer."""
    query: Encode | None = None
    """Creator search's query encoder on the same server (token ids and mask → [B, d]); None:
    it runs in this process (search.semantic), as it does when the server does not answer."""
    query_name: str | None = None
    ranker: Ranker | None = None
    """The rank stage's model of the version (ranking.store), where one was trained for it."""


@dataclass
class Ranker:
    """A version's rank-stage model (ranking.ranker), where its provider put it, and the window
    of pairs its features read (built when the bundle loads, not by the first request)."""

    score: Encode
    """{"features": [B, N, F]} → [B, N], higher first."""
    name: str
    manifest: dict
    fallback: Encode | None = None
    """The same ONNX in this process, for when `score`'s server does not answer."""
    window: Window | None = None
    folder: Path | None = None
    """Its ranking-store folder (the trees that explain it: ranking.store.TREES)."""


PrepareEncoder = Callable[[Path, str], Tower]
"""(version folder, version name) → that version's Tower."""


@dataclass
class Bundle:
    """One index version and the user tower it was built for."""

    index: index_store.CreatorIndex
    tower: Tower
    num_creators: int
    """The model's creator vocabulary: history items past it have no row (data.contract)."""
    popular: np.ndarray
    """Faiss rows by descending training popularity: the cold-start and fallback answer."""
    popularity: np.ndarray
    """[N] training interactions per faiss row: the score of a popular answer."""
    embeddings: np.ndarray  # [N, d] float32, memory-mapped (GET /similar, exact fallback)
    row_of: dict[str, int]  # creator_id → faiss row
    loaded_at: float = field(default_factory=time.time)

    @functools.cached_property
    def creator_map(self) -> dict[str, np.ndarray] | None:
        """The version's creator map (index.projection) as columns, with `at` (faiss row → map
        position) for placing creators; None for a version built without one."""
        path = self.index.folder / index_store.MAP
        if not path.exists():
            return None
        t = pq.read_table(path)
        out = {name: t[name].to_numpy(zero_copy_only=False) for name in t.column_names}
        out["at"] = {int(r): i for i, r in enumerate(out["row"])}
        return out

    def place(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates [n, 2] of faiss rows, and whether each is on the map itself (else it
        sits at its nearest neighbour on the map, by the towers' inner product)."""
        m = self.creator_map
        on_map = np.array([int(r) in m["at"] for r in rows], bool)
        at = np.array([m["at"].get(int(r), -1) for r in rows], np.int64)
        if (~on_map).any():
            sample = np.asarray(self.embeddings[m["row"]], np.float32)
            queries = np.asarray(self.embeddings[rows[~on_map]], np.float32)
            at[~on_map] = np.argmax(queries @ sample.T, axis=1)
        return np.stack([m["x"][at], m["y"][at]], axis=1), on_map

    @functools.cached_property
    def training_pairs(self) -> dict[str, np.ndarray]:
        """The training pairs of the version's dataset (user_idx, creator_idx, ts in ms) and
        each user_idx's id (`user_id`), read on first use: who follows whom, and since when."""
        data_dir = Path(self.index.manifest["catalog"]["data_dir"])
        pairs = pq.read_table(data_dir / tables.TRAIN, columns=["user_idx", "creator_idx", "ts"])
        out = {c: pairs[c].to_numpy().astype(np.int64) for c in pairs.column_names}
        users = pq.read_table(data_dir / tables.USERS, columns=["user_idx", "user_id"])
        idx = users["user_idx"].to_numpy()
        out["user_id"] = np.empty(int(idx.max(initial=0)) + 1, dtype=object)
        out["user_id"][idx] = users["user_id"].to_pylist()
        order = np.argsort(out["user_idx"], kind="stable")  # a fan's pairs, one slice
        out["by_user"] = order
        out["user_start"] = np.searchsorted(
            out["user_idx"][order], np.arange(len(out["user_id"]) + 1)
        )
        out["user_of"] = {str(u): int(i) for i, u in zip(idx, out["user_id"][idx], strict=True)}
        return out

    @functools.cached_property
    def followers(self) -> tuple[np.ndarray, np.ndarray]:
        """Who follows each creator in the training pairs, each fan once, newest first:
        (indptr [N + 1] by faiss row, user ids in that order) (the explorer's "find a fan by a
        creator they follow")."""
        p = self.training_pairs
        found, known = self._find(p["creator_idx"])
        rows, user, ts = found[known], p["user_idx"][known], p["ts"][known]
        order = np.lexsort((-ts, rows))
        key = rows[order] * (int(user.max(initial=0)) + 1) + user[order]
        _, first = np.unique(key, return_index=True)  # each (creator, fan) once: the newest
        order = order[np.sort(first)]
        indptr = np.zeros(len(self.index.creator_idx) + 1, np.int64)
        np.add.at(indptr, rows[order] + 1, 1)
        return np.cumsum(indptr), p["user_id"][user[order]]

    def since(self, user_id: str, creator_idx: np.ndarray) -> list[int | None]:
        """When the fan last interacted with each creator in the training pairs (ms since the
        epoch); None for a pair training never saw (a creator added in a what-if)."""
        p = self.training_pairs
        u = p["user_of"].get(user_id)
        if u is None or u + 1 >= len(p["user_start"]):
            return [None] * len(creator_idx)
        mine = p["by_user"][p["user_start"][u] : p["user_start"][u + 1]]
        last: dict[int, int] = {}
        for c, t in zip(p["creator_idx"][mine].tolist(), p["ts"][mine].tolist(), strict=True):
            last[c] = max(t, last.get(c, t))
        return [last.get(int(c)) for c in creator_idx]

    @functools.cached_property
    def search(self) -> Engine:
        """The version's creator search (search.engine): its lexical retriever, and its
        semantic one when the catalog had text vectors; loaded on first use (a
        MissingInputError for a version built before search)."""
        folder = self.index.folder
        semantic = Semantic(folder) if (folder / index_store.TEXT_INDEX).exists() else None
        lexical = Lexical(folder / index_store.LEXICAL)
        topics = Topics(Path(self.index.manifest["catalog"]["data_dir"]), self.index.creator_idx)
        audience = self.catalog["train_count"]  # the popularity prior's order
        return Engine(lexical, semantic, self.embeddings, self.index.index, topics, audience)

    @functools.cached_property
    def suggest(self) -> Suggest:
        """The version's name completion (search.suggest), loaded on first use; a
        MissingInputError for a version built before search."""
        return Suggest(self.index.folder / index_store.SUGGEST)

    @functools.cached_property
    def catalog(self) -> dict[str, np.ndarray]:
        """Name, category and training count by faiss row, read from the catalog the version
        was built from on first use (the explorer's labels)."""
        data_dir = Path(self.index.manifest["catalog"]["data_dir"])
        return projection.catalog_info(data_dir, self.index.creator_idx)

    @functools.cached_property
    def category_codes(self) -> tuple[np.ndarray, int]:
        """Each faiss row's catalog category as an int code (blank is one more code), and how
        many codes: what calibration mixes (serving.pipeline.stages.Rank)."""
        _, codes = np.unique(self.catalog["category"].astype(str), return_inverse=True)
        return codes.astype(np.int64), int(codes.max(initial=-1)) + 1

    @property
    def encoder_name(self) -> str:
        return self.tower.name

    @property
    def index_version(self) -> str:
        return self.index.version

    @property
    def model_version(self) -> str:
        return self.index.manifest["model"]["version"]

    @property
    def versions(self) -> dict:
        return {"model_version": self.model_version, "index_version": self.index_version}

    def vocabulary(self, creator_ids: list[str]) -> tuple[np.ndarray, list[str]]:
        """The creator vocabulary indices of ids the index holds, and the ids it does not."""
        rows = [self.row_of.get(c) for c in creator_ids]
        missing = [c for c, r in zip(creator_ids, rows, strict=True) if r is None]
        found = np.asarray([r for r in rows if r is not None], np.int64)
        return self.index.creator_idx[found].astype(np.int64), missing

    def ids(self, creator_idx: np.ndarray) -> list[str | None]:
        """The creator id of each vocabulary index; None where the index does not hold it."""
        pos, hit = self._find(creator_idx)
        return [str(self.index.creator_id[p]) if h else None for p, h in zip(pos, hit, strict=True)]

    def rows(self, creator_idx: np.ndarray) -> np.ndarray:
        """The faiss rows of creator vocabulary indices (those the index holds)."""
        pos, hit = self._find(creator_idx)
        return pos[hit]

    def _find(self, creator_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each vocabulary index: its faiss row where the index holds it, and whether it
        does (the index's creator_idx ascends by row)."""
        idx, indexed = np.asarray(creator_idx, np.int64), self.index.creator_idx
        if len(idx) == 0 or len(indexed) == 0:
            return np.zeros(len(idx), np.int64), np.zeros(len(idx), bool)
        pos = np.minimum(np.searchsorted(indexed, idx), len(indexed) - 1).astype(np.int64)
        return pos, indexed[pos] == idx


def version_number(version: str) -> int:
    """`v00012-…` → 12: the Triton model version that serves an index version's tower."""
    head = version.removeprefix("v").split("-", 1)[0]
    if not head.isdigit():
        raise IntegrityError(f"index version {version!r} has no sequence number (v<digits>-…)")
    return int(head)


def popularity(manifest: dict, creator_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Faiss rows sorted by the catalog's training counts (ties by row), for cold start, and
    each row's count."""
    path = Path(manifest["catalog"]["data_dir"]) / tables.CREATORS
    counts = np.zeros(len(creator_idx), dtype=np.int64)
    if path.exists():
        t = pq.read_table(path, columns=["creator_idx", "train_count"])
        idx = t["creator_idx"].to_numpy().astype(np.int64)
        by_idx = np.zeros(max(int(idx.max(initial=0)), int(creator_idx.max(initial=0))) + 1)
        by_idx[idx] = t["train_count"].to_numpy()
        counts = by_idx[creator_idx].astype(np.int64)
    else:
        log.warning("no %s: cold-start answers fall back to index order", path)
    return np.lexsort((np.arange(len(counts)), -counts)).astype(np.int64), counts


def load_bundle(
    root: Path,
    version: str | None,
    prepare_encoder: PrepareEncoder,
    verify: bool = True,
    features=None,
) -> Bundle:
    """Load an index version and its user tower; refuse unless `features` (a feature store)
    hashes users as the version's tower expects and the tower reproduces the index's probe
    vectors (same embedding space)."""
    index = index_store.load(root, version=version, verify=verify)
    tower = index.manifest.get("user_tower")
    if features is not None and tower:
        check_hashing(
            features.manifest, tower["attribute_buckets"], tower["attribute_width"],
            tower["history_len"],
        )  # fmt: skip
    if not (index.folder / index_store.USER_TOWER).exists():
        raise MissingInputError(
            f"index version {index.version} has no {index_store.USER_TOWER}: it was built before "
            f"the rebuild job exported the user tower; run `python -m index rebuild` again"
        )
    tower = prepare_encoder(index.folder, index.version)
    try:
        _attach_window(index, tower)
        return _checked(index, tower)
    except Exception:
        if tower.release is not None:
            tower.release()
        raise


def _attach_window(index, tower: Tower) -> None:
    """The ranker's feature window, from the pairs it was trained on, with its ALS factors; a
    ranker trained for other towers or on other features is dropped (its columns would mean
    something else)."""
    ranker = tower.ranker
    if ranker is None:
        return
    why = _mismatch(ranker.manifest, index.manifest["model"]["version"])
    if why:
        log.error("the ranker of %s %s: ranking by retrieval", index.version, why)
        tower.ranker = None
        return
    started = time.perf_counter()
    ranker.window = Window.from_dataset(ranker.manifest["data_dir"],
                                        recent_days=ranker.manifest["recent_days"])  # fmt: skip
    ranker.window.als = ranking_store.load_als(ranker.folder, ranker.manifest)
    log.info("ranker %s: feature window of %d pairs in %.1f s", ranker.name,
             ranker.window.x.nnz, time.perf_counter() - started)  # fmt: skip


def _mismatch(manifest: dict, model_version: str) -> str | None:
    """Why a ranker cannot order this version's candidates, or None."""
    if manifest.get("model_version") != model_version:
        return (f"was trained for model {str(manifest.get('model_version'))[:12]}, "
                f"not {model_version[:12]}")  # fmt: skip
    if manifest.get("features") != list(FEATURES):
        return (f"reads features {manifest.get('features')}, not this service's {list(FEATURES)} "
                f"(train it again: `python -m ranking train`)")  # fmt: skip
    return None


def _checked(index, tower: Tower) -> Bundle:
    for encode in (tower.encode, tower.fallback):
        if encode is None:
            continue

        def probe(user, history, attributes, encode=encode):
            feeds = {"user": user, "history": history, "attributes": attributes}
            return encode({k: np.ascontiguousarray(feeds[k]) for k in tower.inputs})

        diff = index_store.check_probes(index.folder, probe, atol=1e-4)
        log.info("user tower %s reproduces the index's probes (max diff %.1e)", tower.name, diff)
    manifest = index.manifest
    popular, counts = popularity(manifest, index.creator_idx)
    embeddings = np.load(index.folder / index_store.EMBEDDINGS, mmap_mode="r", allow_pickle=False)
    return Bundle(
        index=index,
        tower=tower,
        num_creators=int(manifest["model"]["towers"]["num_creators"]),
        popular=popular,
        popularity=counts,
        embeddings=embeddings,
        row_of={str(c): i for i, c in enumerate(index.creator_id)},
    )


def release_later(bundle: Bundle) -> None:
    """Unload a replaced bundle's tower (background: a failure is logged, never raised)."""
    try:
        bundle.tower.release()
    except Exception as e:
        log.warning("could not release the tower of %s: %s", bundle.index_version, e)
