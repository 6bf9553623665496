"""The online path behind `POST /recommend`: features → user tower → index search → filter.

A `Bundle` is one published index version together with the user tower it was built for (the
version folder's `user_tower.onnx`, served by Triton or in-process) — one consistent pair of
model and index versions. The `Recommender` answers every request from the bundle it read at
the start of that request, and `refresh()` swaps in a new bundle only after the new user tower
is loaded and reproduces the index's probe vectors: a request never mixes versions and none is
dropped during a swap (the old bundle stays usable until the requests holding it finish).

Degraded answers are flagged, never errors: an unknown user gets popular creators
(`source: "popular"`, `cold_start: true`); when the feature store or the user tower is down the
answer is popular creators minus what can still be excluded, with `degraded` naming the cause.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from index import store as index_store
from index.errors import IntegrityError, MissingInputError
from index.export import check_probes
from serving.features import check_hashing
from towers.model import PAD, UNK

log = logging.getLogger(__name__)

ONNX_FILE = "user_tower.onnx"
MAX_K = 1000
RELEASE_AFTER_S = 5.0
"""A replaced bundle's tower is unloaded this long after the swap (requests that read the old
bundle just before the swap finish on it first)."""
OVERFETCH = 2.0
"""First search asks for k·OVERFETCH + the user's exclusions; doubled while results run short."""

Encode = Callable[[dict[str, np.ndarray]], np.ndarray]


class EncoderUnavailable(RuntimeError):
    """The user tower could not answer (Triton down, timed out): degrade, don't fail."""


class StoreUnavailable(RuntimeError):
    """The feature store could not answer: degrade, don't fail."""


@dataclass
class Bundle:
    """One index version and the user tower it was built for."""

    index: index_store.CreatorIndex
    encode: Encode
    """[B] user, [B, N] history, [B, A] attributes (only the tower's inputs) → [B, d]."""
    inputs: tuple[str, ...]
    num_creators: int
    """The model's creator vocabulary: history items past it have no row (dropped, as in
    index.catalog.user_inputs)."""
    popular: np.ndarray
    """Faiss rows by descending training popularity: the cold-start and fallback answer."""
    popularity: np.ndarray
    """[N] training interactions per faiss row: the score of a popular answer."""
    embeddings: np.ndarray  # [N, d] float32, memory-mapped (GET /similar)
    row_of: dict[str, int]  # creator_id → faiss row
    loaded_at: float = field(default_factory=time.time)
    encoder_name: str = ""
    release: Callable[[], None] | None = None

    @property
    def index_version(self) -> str:
        return self.index.version

    @property
    def model_version(self) -> str:
        return self.index.manifest["model"]["version"]

    @property
    def versions(self) -> dict:
        return {"model_version": self.model_version, "index_version": self.index_version}


def version_number(version: str) -> int:
    """`v00012-…` → 12: the Triton model version that serves an index version's tower."""
    head = version.removeprefix("v").split("-", 1)[0]
    if not head.isdigit():
        raise IntegrityError(f"index version {version!r} has no sequence number (v<digits>-…)")
    return int(head)


def popularity(manifest: dict, creator_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Faiss rows sorted by the catalog's training counts (ties by row), for cold start, and
    each row's count."""
    data_dir = Path(manifest["catalog"]["data_dir"])
    path = data_dir / "tables" / "creators.parquet"
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
    prepare_encoder: Callable[[Path, str], tuple],
    verify=True,
    features=None,
) -> Bundle:
    """Load an index version and its user tower; refuse unless `features` (a feature store)
    hashes users as the version's tower expects and the tower reproduces the index's probe
    vectors (same embedding space). `prepare_encoder(folder, version)` → (encode, inputs, name,
    release)."""
    index = index_store.load(root, version=version, verify=verify)
    tower = index.manifest.get("user_tower")
    if features is not None and tower:
        check_hashing(
            features.manifest, tower["attribute_buckets"], tower["attribute_width"],
            tower["history_len"],
        )  # fmt: skip
    folder = index.folder
    if not (folder / ONNX_FILE).exists():
        raise MissingInputError(
            f"index version {index.version} has no {ONNX_FILE}: it was built before the rebuild "
            f"job exported the user tower; run `python -m index rebuild --config ...` again"
        )
    encode, inputs, name, release = prepare_encoder(folder, index.version)
    try:

        def probe(user, history, attributes):
            feeds = {"user": user, "history": history, "attributes": attributes}
            return encode({k: np.ascontiguousarray(feeds[k]) for k in inputs})

        diff = check_probes(folder / "probes.npz", probe, atol=1e-4)
        log.info("user tower %s reproduces the index's probes (max diff %.1e)", name, diff)
        manifest = index.manifest
        rows = {str(c): i for i, c in enumerate(index.creator_id)}
        popular, counts = popularity(manifest, index.creator_idx)
        return Bundle(
            index=index,
            encode=encode,
            inputs=tuple(inputs),
            num_creators=int(manifest["model"]["towers"]["num_creators"]),
            popular=popular,
            popularity=counts,
            embeddings=np.load(folder / "embeddings.npy", mmap_mode="r", allow_pickle=False),
            row_of=rows,
            encoder_name=name,
            release=release,
        )
    except Exception:
        if release is not None:
            release()
        raise


def _release(bundle: Bundle) -> None:
    """Unload a replaced bundle's tower (background: a failure is logged, never raised)."""
    try:
        bundle.release()
    except Exception as e:
        log.warning("could not release the tower of %s: %s", bundle.index_version, e)


@dataclass
class Answer:
    creator_ids: list[str]
    scores: list[float]
    source: str  # model | popular
    cold_start: bool = False
    degraded: str | None = None
    timings: dict = field(default_factory=dict)


class Recommender:
    """Holds the current bundle and answers requests from it; swaps bundles safely."""

    def __init__(
        self,
        index_root: str | Path,
        features,
        prepare_encoder: Callable[[Path, str], tuple],
        verify: bool = True,
    ):
        self.index_root = Path(index_root)
        self.features = features
        self.prepare_encoder = prepare_encoder
        self.verify = verify
        self._bundle: Bundle | None = None
        self._swap_lock = threading.Lock()
        self.swaps = 0
        self.last_refresh_error: str | None = None
        self.on_swap: list[Callable[[Bundle], None]] = []

    @property
    def bundle(self) -> Bundle | None:
        return self._bundle

    def refresh(self) -> bool:
        """Swap in the store's current version if it is not the one served. True if swapped.
        A version that fails to load leaves the served one in place (and is reported)."""
        with self._swap_lock:
            current = index_store.current_version(self.index_root)
            if current is None:
                raise MissingInputError(
                    f"no current index in {self.index_root}: publish one with "
                    f"`python -m index rebuild --config ...`"
                )
            old = self._bundle
            if old is not None and old.index_version == current:
                return False
            try:
                new = load_bundle(
                    self.index_root, current, self.prepare_encoder, self.verify, self.features
                )
            except Exception as e:
                self.last_refresh_error = f"{current}: {type(e).__name__}: {e}"
                if old is None:
                    raise
                log.error("kept %s: could not load %s", old.index_version, self.last_refresh_error)
                return False
            self._bundle = new  # one reference assignment: requests see old or new, whole
            self.swaps += 1
            self.last_refresh_error = None
            log.info("serving %s (model %s)", new.index_version, new.model_version[:12])
            for hook in self.on_swap:
                hook(new)
            if old is not None and old.release is not None:
                # requests that read `old` before the swap may still be using it: release its
                # tower a little later rather than under them
                timer = threading.Timer(RELEASE_AFTER_S, _release, args=(old,))
                timer.daemon = True
                timer.start()
            return True

    # -- answering ---------------------------------------------------------------------------

    def recommend(self, user_id: str, k: int, exclude: Sequence[str] = ()) -> tuple[Answer, Bundle]:
        return self.recommend_many([(user_id, k, exclude)])[0]

    def recommend_many(
        self, requests: Sequence[tuple[str, int, Sequence[str]]]
    ) -> list[tuple[Answer, Bundle]]:
        """Answer several requests with one feature lookup, one user-tower call and one index
        search (the service batches the requests that arrive together); all from one bundle."""
        b = self._bundle
        if b is None:
            raise MissingInputError("no index loaded yet")
        n = len(requests)
        t0 = time.perf_counter()
        banned = []
        for user_id, _, exclude in requests:
            rows = {b.row_of[c] for c in exclude if c in b.row_of}
            own = b.row_of.get(user_id)  # the user's own creator account, when they have one
            if own is not None:
                rows.add(own)
            banned.append(rows)
        ks = [k for _, k, _ in requests]
        try:
            feats = self.features.lookup([u for u, _, _ in requests])
        except Exception as e:  # the store's own unavailability error, or anything it raises
            log.warning("feature store unavailable: %s", e)
            return [
                (self._popular(b, ks[i], banned[i], degraded="feature_store_unavailable"), b)
                for i in range(n)
            ]
        t1 = time.perf_counter()
        answers: list[Answer | None] = [None] * n
        model = []
        for i in range(n):
            banned[i] |= self._rows(b, feats.followed[i])
            if feats.known[i] and (feats.trained[i] or (feats.history[i] > 0).any()):
                model.append(i)
            else:
                answers[i] = self._popular(b, ks[i], banned[i], cold_start=True)
        timings = {"features_ms": (t1 - t0) * 1e3, "batch": n}
        if model:
            rows = np.asarray(model)
            inputs = self.tower_inputs(
                b, feats.user_idx[rows], feats.trained[rows], feats.history[rows],
                feats.attributes[rows],
            )  # fmt: skip
            try:
                q = b.encode(inputs)
            except Exception as e:
                log.warning("user tower unavailable: %s", e)
                for i in model:
                    answers[i] = self._popular(
                        b, ks[i], banned[i], degraded="user_tower_unavailable"
                    )
            else:
                t2 = time.perf_counter()
                found = self.search_many(b, q, [ks[i] for i in model], [banned[i] for i in model])
                t3 = time.perf_counter()
                timings |= {"encode_ms": (t2 - t1) * 1e3, "search_ms": (t3 - t2) * 1e3}
                for i, (ids, scores) in zip(model, found, strict=True):
                    answers[i] = Answer(ids, scores, "model")
        for a in answers:
            a.timings = timings
        return [(a, b) for a in answers]

    def similar(self, creator_id: str, k: int) -> tuple[Answer, Bundle] | None:
        b = self._bundle
        if b is None:
            raise MissingInputError("no index loaded yet")
        row = b.row_of.get(creator_id)
        if row is None:
            return None
        ids, scores = self.search(b, np.asarray(b.embeddings[row]), k, {row})
        return Answer(ids, scores, "model"), b

    @staticmethod
    def tower_inputs(b: Bundle, user_idx, trained, history, attributes) -> dict[str, np.ndarray]:
        """Model inputs as training built them (training.data.UserFeatures.inputs and
        index.catalog.user_inputs): untrained users → UNK, unknown history items → padding."""
        user = np.where(trained, user_idx, UNK)
        history = np.where(history >= b.num_creators, PAD, history)
        all_inputs = {"user": user, "history": history, "attributes": attributes}
        return {name: np.ascontiguousarray(all_inputs[name], np.int64) for name in b.inputs}

    @staticmethod
    def _rows(b: Bundle, creator_idx: np.ndarray) -> set[int]:
        if len(creator_idx) == 0:
            return set()
        pos = np.searchsorted(b.index.creator_idx, creator_idx)
        pos = np.minimum(pos, len(b.index.creator_idx) - 1)
        hit = b.index.creator_idx[pos] == creator_idx
        return set(pos[hit].tolist())

    @classmethod
    def search(
        cls, b: Bundle, q: np.ndarray, k: int, banned: set[int]
    ) -> tuple[list[str], list[float]]:
        """Top k creators not in `banned` for one query vector (see search_many)."""
        return cls.search_many(b, np.reshape(q, (1, -1)), [k], [banned])[0]

    @classmethod
    def search_many(
        cls, b: Bundle, q: np.ndarray, ks: Sequence[int], banned: Sequence[set[int]]
    ) -> list[tuple[list[str], list[float]]]:
        """Top k creators not in `banned`, per query: one ANN call over-fetching for the most
        demanding request; a request still short goes on alone, fetching twice as many each
        time, and falls back to exact scores when the index cannot return enough (few cells
        probed)."""
        n = len(b.index.creator_idx)
        q = np.ascontiguousarray(q, dtype=np.float32)
        fetch = min(n, max(int(k * OVERFETCH) + len(x) for k, x in zip(ks, banned, strict=True)))
        D, I = b.index.index.search(q, fetch)  # noqa: E741  faiss rows
        out = []
        for row, (k, ban) in enumerate(zip(ks, banned, strict=True)):
            want = max(min(k, n - len(ban)), 0)
            keep = cls._unbanned(I[row], D[row], ban, want)
            grown, ids = fetch, I[row]
            while len(keep) < want:
                if grown >= n or (ids < 0).any():  # the probed cells are exhausted
                    keep = cls._exact(b, q[row], want, ban)
                    break
                grown = min(n, grown * 2)
                D1, I1 = b.index.index.search(q[row : row + 1], grown)
                ids = I1[0]
                keep = cls._unbanned(ids, D1[0], ban, want)
            out.append(([str(b.index.creator_id[i]) for i, _ in keep], [d for _, d in keep]))
        return out

    @staticmethod
    def _unbanned(ids: np.ndarray, scores: np.ndarray, banned: set[int], want: int) -> list:
        """The first `want` (row, score) pairs of one ANN answer that are real and allowed."""
        rows = ((int(i), float(d)) for i, d in zip(ids, scores, strict=True) if i >= 0)
        return [(i, d) for i, d in rows if i not in banned][:want]

    @staticmethod
    def _exact(b: Bundle, q: np.ndarray, want: int, banned: set[int]) -> list:
        scores = np.asarray(b.embeddings @ q, dtype=np.float32)
        if banned:
            scores[list(banned)] = -np.inf
        top = np.argpartition(-scores, want - 1)[:want]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(i), float(scores[i])) for i in top]

    @staticmethod
    def _popular(b: Bundle, k: int, banned: set[int], cold_start=False, degraded=None) -> Answer:
        rows = [int(r) for r in b.popular[: k + len(banned)] if int(r) not in banned][:k]
        return Answer(
            [str(b.index.creator_id[r]) for r in rows],
            [float(b.popularity[r]) for r in rows],
            "popular",
            cold_start=cold_start,
            degraded=degraded,
        )
