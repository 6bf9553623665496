"""The recommender: holds the bundle being served, swaps in new ones safely, and answers
through the pipeline (serving.pipeline.stages).

Every batch of requests is answered from the bundle read at its start, and `refresh()` swaps in
a new bundle only after its user tower is loaded and reproduces the index's probe vectors: a
request never mixes versions and none is dropped during a swap (the old bundle stays usable
until the requests holding it finish, and its tower is released a little later).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from common.errors import MissingInputError, UnavailableError
from index import search
from index import store as index_store
from serving.pipeline import versions, whatif
from serving.pipeline.breaker import Breaker
from serving.pipeline.bundle import Bundle, PrepareEncoder, load_bundle, release_later
from serving.pipeline.stages import (
    Admitted,
    Answer,
    Pipeline,
    Rank,
    Request,
    default_pipeline,
)
from serving.pipeline.versions import Versions
from serving.pipeline.whatif import Profile

log = logging.getLogger(__name__)

RELEASE_AFTER_S = 5.0
"""A replaced bundle's tower is released this long after the swap (requests that read the old
bundle just before the swap finish on it first)."""


AUDIENCES_KEPT = 4
"""Fan samples answered (version × k) kept: the served and a compared version, two k's."""


class Recommender:
    """Holds the current bundle and answers requests from it; swaps bundles safely."""

    def __init__(
        self,
        index_root: str | Path,
        features,
        prepare_encoder: PrepareEncoder,
        verify: bool = True,
        rank: Rank | None = None,
    ):
        self.index_root = Path(index_root)
        self.features = features
        self.prepare_encoder = prepare_encoder
        self.verify = verify
        # one breaker per dependency, shared by every batch: an outage costs one timeout
        self.breakers = {
            "feature_store": Breaker("the feature store"),
            "user_tower": Breaker("the user tower's server"),
            "query_encoder": Breaker("the query encoder's server"),
        }
        rank = rank or Rank()
        self.breakers["ranker"] = rank.breaker
        self.rank = rank
        self.pipeline: Pipeline = default_pipeline(features, rank, self.breakers)
        self.health: dict[str, Callable[[], dict]] = {}
        """More dependencies /readyz reports, by name (the Triton supervisor's status)."""
        self._bundle: Bundle | None = None
        self._swap_lock = threading.Lock()
        self.swaps = 0
        self.last_refresh_error: str | None = None
        self.on_swap: list[Callable[[Bundle], None]] = []
        self.versions = Versions(self.index_root, features, verify)
        """Other published versions, for comparisons (loaded on demand, in-process)."""
        self._audiences: dict[tuple, versions.Audience] = {}
        self._audience_lock = threading.Lock()
        self._audience_making = threading.Lock()

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
            self._swap(old, new)
            return True

    def _swap(self, old: Bundle | None, new: Bundle) -> None:
        self._bundle = new  # one reference assignment: requests see old or new, whole
        self.swaps += 1
        self.last_refresh_error = None
        log.info("serving %s (model %s)", new.index_version, new.model_version[:12])
        for hook in self.on_swap:
            hook(new)
        if old is not None and old.tower.release is not None:
            # requests that read `old` before the swap may still be using it: release its
            # tower a little later rather than under them
            timer = threading.Timer(RELEASE_AFTER_S, release_later, args=(old,))
            timer.daemon = True
            timer.start()

    def _current(self) -> Bundle:
        b = self._bundle
        if b is None:
            raise MissingInputError("no index loaded yet")
        return b

    # -- answering ---------------------------------------------------------------------------

    def recommend(self, user_id: str, k: int, exclude: Sequence[str] = ()) -> tuple[Answer, Bundle]:
        return self.recommend_many([Request(user_id, k, tuple(exclude))])[0]

    def recommend_many(
        self,
        requests: Sequence[Request] | Sequence[Admitted],
        deliver: Callable[[int, tuple[Answer, Bundle]], None] | None = None,
    ) -> list[tuple[Answer, Bundle] | Admitted]:
        """Answer requests that arrived together with one feature lookup, one user-tower call
        and one index search, all from one bundle.

        `deliver(i, (answer, bundle))` gets each answer off the model path as soon as it is
        known (serving.pipeline.stages.Pipeline). With `deliver.handoff` set (a batcher's
        lookup while its workers wait on the tower, serving.api.batcher), a batch with anyone
        on the model path stops after the lookup: those requests come back `Admitted`, for a
        later call with a batch of them (`requests` all `Admitted`)."""
        b = self._current()
        early = None if deliver is None else lambda i, answer: deliver(i, (answer, b))
        if requests and isinstance(requests[0], Admitted):
            batch = self.pipeline.resume(requests, b, early)
        else:
            handoff = getattr(deliver, "handoff", False)
            batch = self.pipeline.run(requests, b, early, handoff=handoff)
        return [(a, b) if a is not None else batch.admitted(i) for i, a in enumerate(batch.answers)]

    def similar(self, creator_id: str, k: int) -> tuple[Answer, Bundle] | None:
        """The creators nearest to one creator of the served index (itself excluded); None
        when the index does not hold it."""
        b = self._current()
        row = b.row_of.get(creator_id)
        if row is None:
            return None
        q = np.asarray(b.embeddings[row], dtype=np.float32)[None, :]
        [(rows, scores)] = search.filtered_search(b.index.index, q, [k], [[row]], b.embeddings)
        ids = [str(b.index.creator_id[r]) for r in rows]
        return Answer(ids, scores.tolist(), "model"), b

    # -- what if, and why (the explorer's questions) ------------------------------------------

    def profile(self, user_id: str | None) -> Profile:
        """A fan as the feature store knows them; None: an invented fan with nothing yet."""
        m = self.features.manifest
        if user_id is None:
            return whatif.invented(m["history_len"], m["attribute_width"])
        return Profile.of(self.features.lookup([user_id]), 0)

    def what_if(self, profile: Profile, request: Request, bundle: Bundle) -> Answer:
        """`request` answered from `bundle` for `profile` instead of the fan the store holds."""
        return whatif.pipeline_for(self.pipeline, [profile]).run([request], bundle).answers[0]

    def why(self, profile: Profile, bundle: Bundle, creator_ids: Sequence[str]):
        """[history, creators] contributions (whatif.contributions) for creators of `bundle`,
        and how the tower ran."""
        rows = np.asarray([bundle.row_of[c] for c in creator_ids], np.int64)
        return whatif.contributions(self.pipeline, bundle, profile, rows)

    def user_vector(self, user_id: str, bundle: Bundle) -> tuple[np.ndarray | None, str | None]:
        """The fan's vector from `bundle`'s user tower (creator search's personal retriever),
        or None and why: a fan the store does not know (cold_start), or a dependency that
        failed (feature_store_unavailable, user_tower_unavailable)."""
        try:
            profile = self.profile(user_id)
        except UnavailableError:
            return None, "feature_store_unavailable"
        if not profile.known:
            return None, "cold_start"
        try:
            queries, _ = whatif.encode(self.pipeline, bundle, [profile])
        except UnavailableError:
            return None, "user_tower_unavailable"
        return queries[0], None

    def query_vector(self, query: str, bundle: Bundle) -> tuple[np.ndarray | None, str | None]:
        """The query's sentence vector for `bundle`'s semantic retriever: tokenized here, run
        on the tower's server where it has the query encoder (through its breaker), else here
        (flagged query_encoder_in_process); None and query_encoder_unavailable when neither
        runs, and None alone for a version without a semantic retriever."""
        semantic = bundle.search.semantic
        if semantic is None:
            return None, None
        feed = semantic.encoder.tokenize([query])
        if bundle.tower.query is not None:
            vector = self.breakers["query_encoder"].call(bundle.tower.query, feed)
            if vector is not None:
                return vector, None
        try:
            vector = semantic.encoder.run(feed)
        except Exception:
            log.exception("the in-process query encoder failed")
            return None, "query_encoder_unavailable"
        return vector, None if bundle.tower.query is None else "query_encoder_in_process"

    def bundle_of(self, version: str | None) -> Bundle:
        """The served bundle (for None or its name), else a published version loaded for
        comparison (MissingInputError naming the published ones when there is none)."""
        b = self._current()
        return b if version in (None, b.index_version) else self.versions.get(version)

    def answer(self, requests: Sequence[Request], bundle: Bundle) -> list[Answer]:
        """Requests answered from any bundle, off the books (no metrics, no answer log): the
        served one through the service's stages, another with an encoder of its own."""
        if bundle is self._bundle:
            pipeline = Pipeline(self.pipeline.stages)  # the same stages, without the observers
        else:
            pipeline = versions.with_own_encoder(self.pipeline)
        return pipeline.run(requests, bundle).answers

    def audience(self, bundle: Bundle, k: int, fans: int, seed: int = 0) -> versions.Audience:
        """Who `bundle` recommends each creator to in a fixed sample of fans (cached per
        version, k and sample: one batch of the sample answers every creator's question).
        One sample is answered at a time: a request for the one being answered (the
        explorer's warm-up) waits for it rather than answering it again."""
        key = (bundle.index_version, k, fans, seed)
        with self._audience_making:
            with self._audience_lock:
                cached = self._audiences.get(key)
            if cached is not None:
                return cached
            made = self._answer_sample(bundle, k, fans, seed)
            if made.degraded:  # a fallback's lists say nothing of the model: ask again later
                return made
            with self._audience_lock:
                self._audiences[key] = made  # a sample's is a few MB: the newest few are kept
                while len(self._audiences) > AUDIENCES_KEPT:
                    self._audiences.pop(next(iter(self._audiences)))
            return made

    def _answer_sample(self, bundle: Bundle, k: int, fans: int, seed: int) -> versions.Audience:
        data_dir = Path(bundle.index.manifest["catalog"]["data_dir"])
        ids = versions.sample_fans(data_dir, fans, seed)
        answers = self.answer([Request(f, k) for f in ids], bundle)
        degraded = sum(a.source != "model" for a in answers)
        try:
            histories = [bundle.rows(h[h != 0]) for h in self.features.lookup(ids).history]
        except UnavailableError:  # the store failed after answering: the kinds are unknown
            histories, degraded = [np.zeros(0, np.int64)] * len(ids), len(ids)
        names, codes = np.unique(bundle.catalog["category"].astype(str), return_inverse=True)
        return versions.Audience(ids, answers, histories, (codes, names.tolist()), degraded)
