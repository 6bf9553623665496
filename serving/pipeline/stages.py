"""The online pipeline as named stages: lookup → encode → retrieve → filter → rank → fallback.

A batch of requests (those that arrived together) goes through every stage in order; each
stage is a small object with a `name` that reads and writes the `Batch`, and the `Pipeline`
times each one the same way (its observers feed the per-stage latency metric). A stage that
cannot do its part degrades the requests it holds instead of failing them: they leave the
model path with the reason, and `Fallback` answers them (popular creators minus what can still
be excluded), flagged. No stage raises for one request's sake, and a request off the model path
is answered at once (`Pipeline.run`'s `deliver`): a cold start never waits on the user tower.
Nor does the next lookup: with `handoff`, a batch stops after its lookup and its requests on
the model path go on, carrying their features (`Admitted`), in a batch of their own
(`Pipeline.resume`), so the service looks fans up while other batches wait on the tower.
The stages that call a dependency go through its circuit breaker (serving.pipeline.breaker).

    Lookup    features of each fan (feature store); exclusions: followed, `exclude`, own account
    Encode    the user tower (Triton), or the same ONNX in-process when Triton does not answer
    Retrieve  one ANN search for the batch, over-fetched past each request's exclusions
    Filter    each request's candidates without its exclusions, searched deeper when short
    Rank      the candidates in their final order (the version's ranker), cut to k
    Fallback  an answer for every request the model path did not answer
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from data import contract
from index import search
from ranking import diversity
from ranking.features import features as rank_features
from ranking.ranker import INPUT as RANK_INPUT
from serving.features.base import FeatureStore, UserFeaturesBatch
from serving.pipeline.breaker import Breaker
from serving.pipeline.bundle import Bundle

log = logging.getLogger(__name__)

FEATURE_STORE_UNAVAILABLE = "feature_store_unavailable"
USER_TOWER_UNAVAILABLE = "user_tower_unavailable"
USER_TOWER_IN_PROCESS = "user_tower_in_process"
"""Personalised, by the same tower run in-process while Triton does not answer."""
RANKER_IN_PROCESS = "ranker_in_process"
"""Ranked by the same ranker run in-process while Triton does not answer."""
RANKER_UNAVAILABLE = "ranker_unavailable"
"""In the towers' order: no ranker answered."""


@dataclass(frozen=True)
class Request:
    user_id: str
    k: int
    exclude: Sequence[str] = ()
    mmr: float | None = None
    """The rank stage's trade-offs for this request; None = the stage's own."""
    calibration: float | None = None
    trace_id: str | None = field(default=None, compare=False)
    """The caller's trace (serving.api.metrics.trace_id): the stage histograms' exemplar."""


@dataclass
class Answer:
    creator_ids: list[str]
    scores: list[float]
    source: str  # model | popular
    before: list[int] | None = None
    """Each creator's 1-based place in the towers' order, where a ranker re-ordered them."""
    cold_start: bool = False
    degraded: str | None = None
    timings: dict = field(default_factory=dict)
    """Seconds per stage of the batch that answered, and its size."""


@dataclass
class Batch:
    """One batch of requests on its way through the stages, all answered from `bundle`."""

    requests: list[Request]
    bundle: Bundle
    banned: list[set[int]]
    """Per request: faiss rows never to return (followed, excluded, the fan's own account)."""
    model: list[int] = field(default_factory=list)
    """The requests still on the model path (positions in `requests`)."""
    features: UserFeaturesBatch | None = None
    queries: np.ndarray | None = None  # [len(model), d] user vectors
    depth: list[int] = field(default_factory=list)  # candidates wanted per model request
    hits: tuple[np.ndarray, np.ndarray] | None = None  # the batch's ANN answer (D, I)
    candidates: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    """Per model request: (faiss rows, scores), best first."""
    answers: list[Answer | None] = field(default_factory=list)
    cold_start: list[bool] = field(default_factory=list)
    degraded: list[str | None] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, requests: Sequence[Request], bundle: Bundle) -> Batch:
        n = len(requests)
        return cls(
            list(requests), bundle, [_excluded(bundle, r) for r in requests],
            answers=[None] * n, cold_start=[False] * n, degraded=[None] * n,
        )  # fmt: skip

    def admitted(self, i: int) -> Admitted:
        """Request i, past the lookup, for a later batch (Pipeline.resume)."""
        return Admitted(self.requests[i], self.features, i, self.timings.get("lookup", 0.0))

    def leave_model_path(self, positions: Sequence[int], reason: str) -> None:
        """Requests the model path cannot answer: the fallback answers them, flagged."""
        leaving = set(positions)
        for i in leaving:
            self.degraded[i] = reason
        self.model = [i for i in self.model if i not in leaving]


@dataclass(frozen=True)
class Admitted:
    """A request its batch's lookup put on the model path: its fan's features (row `row` of
    `features`) go with it, so the batch that answers it asks the store nothing again."""

    request: Request
    features: UserFeaturesBatch
    row: int
    lookup_s: float
    """How long the lookup took (the answering batch reports it as its lookup stage's)."""


def gathered(admitted: Sequence[Admitted]) -> UserFeaturesBatch:
    """The features of the admitted requests' fans as one batch, in their order (a run of
    requests from one lookup is taken from it at once)."""
    runs = [list(run) for _, run in groupby(admitted, key=lambda a: id(a.features))]
    taken = [(run[0].features, [a.row for a in run]) for run in runs]

    def rows(name: str) -> np.ndarray:
        return np.concatenate([getattr(f, name)[r] for f, r in taken])

    return UserFeaturesBatch(
        rows("user_idx"), rows("known"), rows("trained"), rows("history"), rows("attributes"),
        [f.followed[i] for f, r in taken for i in r], admitted[0].features.version,
    )  # fmt: skip


def _excluded(bundle: Bundle, request: Request) -> set[int]:
    """What a request bans before any lookup: `exclude` and the fan's own creator account."""
    return {bundle.row_of[c] for c in (*request.exclude, request.user_id) if c in bundle.row_of}


class Stage(Protocol):
    name: str

    def __call__(self, batch: Batch) -> None: ...


class Lookup:
    """Features of each fan. A fan the store does not know, or knows with nothing to go on (no
    training pairs, empty history), is a cold start."""

    name = "lookup"

    def __init__(self, store: FeatureStore, breaker: Breaker | None = None):
        self.store = store
        self.breaker = breaker or Breaker("the feature store")

    def __call__(self, batch: Batch) -> None:
        if batch.features is not None:  # looked up by an earlier batch (Pipeline.resume)
            admit(batch, batch.features)
            return
        # the store's unavailability error, or anything it raises, counts against it
        f = self.breaker.call(self.store.lookup, [r.user_id for r in batch.requests])
        if f is None:
            batch.leave_model_path(range(len(batch.requests)), FEATURE_STORE_UNAVAILABLE)
            return
        admit(batch, f)


def admit(batch: Batch, f: UserFeaturesBatch) -> None:
    """The batch's fans are `f`: each bans what they follow; a fan with something to go on
    (training pairs, or a history) takes the model path, the rest are cold starts."""
    batch.features = f
    for i in range(len(batch.requests)):
        batch.banned[i].update(batch.bundle.rows(f.followed[i]).tolist())
        if f.known[i] and (f.trained[i] or (f.history[i] > 0).any()):
            batch.model.append(i)
        else:
            batch.cold_start[i] = True


class Encode:
    """The user tower on the model path's fans, with inputs by data.contract's rule: on its
    server (through the breaker), else the same ONNX in-process (answers flagged
    `user_tower_in_process`), else nobody's (the fallback answers, `user_tower_unavailable`)."""

    name = "encode"

    def __init__(self, breaker: Breaker | None = None):
        self.breaker = breaker or Breaker("the user tower")

    def __call__(self, batch: Batch) -> None:
        if not batch.model:
            return
        b, f, rows = batch.bundle, batch.features, np.asarray(batch.model)
        inputs = contract.user_inputs(
            f.user_idx[rows], f.trained[rows], f.history[rows], f.attributes[rows], b.num_creators
        )
        inputs = {n: np.ascontiguousarray(inputs[n]) for n in b.tower.inputs}
        batch.queries = self.breaker.call(b.tower.encode, inputs)
        if batch.queries is None and b.tower.fallback is not None:
            try:
                batch.queries = b.tower.fallback(inputs)
                for i in batch.model:
                    batch.degraded[i] = USER_TOWER_IN_PROCESS
            except Exception:
                log.exception("the in-process user tower failed too")
        if batch.queries is None:
            batch.leave_model_path(list(batch.model), USER_TOWER_UNAVAILABLE)


class Retrieve:
    """One ANN search for the whole batch, deep enough for every request's candidates plus its
    exclusions (index.search.overfetch). `depth(k)` is how many candidates the ranking wants."""

    name = "retrieve"

    def __init__(self, depth: Callable[[int], int] = lambda k: k):
        self.depth = depth

    def __call__(self, batch: Batch) -> None:
        if not batch.model:
            return
        batch.depth = [self.depth(batch.requests[i].k) for i in batch.model]
        banned = [batch.banned[i] for i in batch.model]
        D, I, _ = search.overfetch(batch.bundle.index.index, batch.queries, batch.depth, banned)  # noqa: E741
        batch.hits = (D, I)


class Filter:
    """Each request's candidates without its exclusions; a request left short searches deeper
    alone, then exactly (index.search.complete): k come back whenever the corpus allows. The
    rank stage's deeper candidates (its N) are taken as the probed cells give them."""

    name = "filter"

    def __call__(self, batch: Batch) -> None:
        if not batch.model:
            return
        b, (D, I) = batch.bundle, batch.hits  # noqa: E741
        index, xq, depth, banned = b.index.index, batch.queries, batch.depth, batch.banned
        k = [batch.requests[i].k for i in batch.model]  # must come back; depth may not
        batch.candidates = [
            search.complete(index, xq[j], D[j], I[j], depth[j], banned[i], b.embeddings, k[j])
            for j, i in enumerate(batch.model)
        ]


class Rank:
    """The candidates in their final order, cut to each request's k.

    With `candidates` N > 0 the towers retrieve max(k, N), and the version's ranker (where the
    ranking store has one) orders them by what each (fan, candidate) pair looks like
    (ranking.features over the fan's followed creators and the ranker's window): on its server
    through the breaker, else the same ONNX in-process (flagged `ranker_in_process`), else in
    the towers' order (flagged `ranker_unavailable`). Without a ranker, the towers' order.
    `order` is the seam a hand-written ranking replaces. Then, with a trade-off above 0, MMR
    (`mmr`) or calibration to the fan's category mix (`calibration`) picks the k from that
    order (ranking.diversity). An answer the stage moved says where each creator stood in the
    towers' order (`before`)."""

    name = "rank"

    def __init__(self, candidates: int = 0, breaker: Breaker | None = None, mmr: float = 0.0,
                 calibration: float = 0.0):  # fmt: skip
        self.candidates = candidates
        self.breaker = breaker or Breaker("the ranker")
        self.mmr, self.calibration = mmr, calibration

    def depth(self, k: int) -> int:
        return max(k, self.candidates)

    def order(self, batch: Batch, j: int) -> np.ndarray:
        """Positions into model request j's candidates, best first (the towers' order)."""
        return np.arange(len(batch.candidates[j][0]))

    def __call__(self, batch: Batch) -> None:
        if not batch.model:
            return
        learned = self.learned(batch)
        ids = batch.bundle.index.creator_id
        for j, i in enumerate(batch.model):
            rows, scores = batch.candidates[j]
            order, value = (self.order(batch, j), scores) if learned is None else learned[j]
            mmr, calibration = self.trade_offs(batch.requests[i])
            keep = self.diversify(batch, i, rows, order, value, mmr, calibration)
            keep = keep[: batch.requests[i].k]
            moved = learned is not None or mmr > 0 or calibration > 0
            batch.answers[i] = Answer(
                [str(ids[r]) for r in rows[keep]], scores[keep].tolist(), "model",
                (keep + 1).tolist() if moved else None, degraded=batch.degraded[i],
            )  # fmt: skip

    def trade_offs(self, request: Request) -> tuple[float, float]:
        """(mmr, calibration) for a request: its own where it set one, else the stage's."""
        if request.mmr is None and request.calibration is None:
            return self.mmr, self.calibration
        return request.mmr or 0.0, request.calibration or 0.0

    def diversify(self, batch: Batch, i: int, rows, order, value, mmr, calibration):
        """The ordered positions re-picked by MMR or by calibration (ranking.diversity), where
        one has a trade-off above 0; `value` [n] scores each position (the ranker's, else the
        towers')."""
        k, b = batch.requests[i].k, batch.bundle
        if mmr > 0:
            vectors = np.asarray(b.embeddings[rows[order]], np.float32)
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            return order[diversity.mmr(value[order], vectors, k, mmr)]
        if calibration > 0:
            codes, count = b.category_codes
            followed = b.rows(np.asarray(batch.features.followed[i], np.int64))
            p = diversity.history_mix(codes[followed], count)
            return order[diversity.calibrate(value[order], codes[rows[order]], p, k, calibration)]
        return order

    def learned(self, batch: Batch) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """The ranker's order and scores of each model request's candidates; None = the
        towers' order."""
        ranker = batch.bundle.tower.ranker
        if ranker is None or self.candidates == 0:
            return None
        x, lengths = rank_inputs(batch, ranker.window)
        if x is None:
            return None
        scores = self.breaker.call(ranker.score, {RANK_INPUT: x})
        reason = None
        if scores is None and ranker.fallback is not None:
            try:
                scores, reason = ranker.fallback({RANK_INPUT: x}), RANKER_IN_PROCESS
            except Exception:
                log.exception("the in-process ranker failed too")
        if scores is None:
            reason = RANKER_UNAVAILABLE
        for i in batch.model:
            batch.degraded[i] = batch.degraded[i] or reason
        if scores is None:
            return None
        return [(np.argsort(-scores[j, :n], kind="stable"), scores[j, :n])
                for j, n in enumerate(lengths)]  # fmt: skip


def rank_inputs(batch: Batch, window) -> tuple[np.ndarray | None, list[int]]:
    """Features [B, N, F] of the model requests' candidates (a short list padded with its last
    candidate, cut off again after scoring) and each request's number of candidates."""
    b, f = batch.bundle, batch.features
    lengths = [len(rows) for rows, _ in batch.candidates]
    n = max(lengths, default=0)
    if n == 0:
        return None, lengths
    creators = np.zeros((len(lengths), n), np.int64)
    scores = np.zeros((len(lengths), n), np.float32)
    for j, (rows, s) in enumerate(batch.candidates):
        if len(rows):
            pad = n - len(rows)
            creators[j] = b.index.creator_idx[np.concatenate([rows, np.repeat(rows[-1:], pad)])]
            scores[j] = np.concatenate([s, np.repeat(s[-1:], pad)])
    width = window.x.shape[1]
    followed = [np.asarray(f.followed[i], np.int64) for i in batch.model]
    followed = [c[c < width] for c in followed]
    indptr = np.cumsum([0, *map(len, followed)])
    data = np.ones(int(indptr[-1]), np.float32)
    history = sp.csr_matrix((data, np.concatenate([np.zeros(0, np.int64), *followed]), indptr),
                            shape=(len(followed), width))  # fmt: skip
    users = f.user_idx[np.asarray(batch.model)]
    return rank_features(window, users, creators, scores, history), lengths


class Fallback:
    """Popular creators, minus what the request bans, for every request still unanswered (or
    those at `positions`)."""

    name = "fallback"

    def __call__(self, batch: Batch, positions: Sequence[int] | None = None) -> None:
        b = batch.bundle
        for i in range(len(batch.requests)) if positions is None else positions:
            if batch.answers[i] is not None:
                continue
            request, banned = batch.requests[i], batch.banned[i]
            top = b.popular[: request.k + len(banned)].tolist()
            rows = [r for r in top if r not in banned][: request.k]
            batch.answers[i] = Answer(
                [str(b.index.creator_id[r]) for r in rows],
                [float(b.popularity[r]) for r in rows],
                "popular",
                cold_start=batch.cold_start[i],
                degraded=batch.degraded[i],
            )


Deliver = Callable[[int, Answer], None]


class Pipeline:
    """Runs the stages in order over a batch, timing each; `observers` see every finished
    batch (the service's metrics and answer log)."""

    def __init__(self, stages: Sequence[Stage]):
        self.stages = list(stages)
        self.fallback = next(s for s in self.stages if isinstance(s, Fallback))
        self.observers: list[Callable[[Batch], None]] = []

    def run(
        self,
        requests: Sequence[Request],
        bundle: Bundle,
        deliver: Deliver | None = None,
        handoff: bool = False,
    ) -> Batch:
        """Every request's answer in `batch.answers`; with `deliver`, each is also handed to
        it as soon as it is known: a request that leaves the model path (a cold start after
        the lookup) is answered by the fallback there and then, not after the user tower.
        With `handoff`, a batch with anyone on the model path stops after the lookup, the
        others answered: the model path's answers stay None, for `resume` to give
        (`batch.admitted(i)`)."""
        return self._through(Batch.start(requests, bundle), deliver, handoff)

    def resume(
        self, admitted: Sequence[Admitted], bundle: Bundle, deliver: Deliver | None = None
    ) -> Batch:
        """Requests past their lookup (`run` with `handoff`, from one batch or several)
        answered as one batch: the lookup stage admits the features they carry."""
        batch = Batch.start([a.request for a in admitted], bundle)
        batch.features = gathered(admitted)
        batch.timings["lookup"] = max(a.lookup_s for a in admitted)
        return self._through(batch, deliver)

    def _through(self, batch: Batch, deliver: Deliver | None, handoff: bool = False) -> Batch:
        delivered = [False] * len(batch.requests)
        for stage in self.stages:
            started = time.perf_counter()
            stage(batch)
            seconds = time.perf_counter() - started
            batch.timings[stage.name] = batch.timings.get(stage.name, 0.0) + seconds
            handing_on = handoff and batch.model and stage.name == Lookup.name
            if deliver is not None or handing_on:  # handed on, the rest is answered here
                self._deliver(batch, delivered, deliver)
            if handing_on:
                return batch
        for answer in batch.answers:
            if not answer.timings:
                answer.timings = {**batch.timings, "batch": len(batch.requests)}
        for observe in self.observers:
            try:
                observe(batch)
            except Exception:  # bookkeeping never fails an answer
                log.exception("an observer of the pipeline failed")
        return batch

    def _deliver(self, batch: Batch, delivered: list[bool], deliver: Deliver | None) -> None:
        on_path = set(batch.model)
        ready = [i for i, done in enumerate(delivered) if not done and i not in on_path]
        if not ready:
            return
        started = time.perf_counter()
        self.fallback(batch, ready)
        seconds = time.perf_counter() - started
        batch.timings["fallback"] = batch.timings.get("fallback", 0.0) + seconds
        for i in ready:
            if batch.answers[i] is None:
                continue  # answered by a later stage (the rank stage answers the model path)
            batch.answers[i].timings = {**batch.timings, "batch": len(batch.requests)}
            if deliver is not None:
                deliver(i, batch.answers[i])
            delivered[i] = True


def default_pipeline(
    store: FeatureStore, rank: Rank | None = None, breakers: dict[str, Breaker] | None = None
) -> Pipeline:
    rank, breakers = rank or Rank(), breakers or {}
    return Pipeline([
        Lookup(store, breakers.get("feature_store")), Encode(breakers.get("user_tower")),
        Retrieve(rank.depth), Filter(), rank, Fallback(),
    ])  # fmt: skip
