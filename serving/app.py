"""The HTTP service: `POST /recommend`, `GET /similar/{creator_id}`, health, readiness, metrics.

    app = create_app(recommender)       # serving.recommender.Recommender
    uvicorn.run(app, host="127.0.0.1", port=8080)

`POST /recommend` requests are answered in batches: requests that arrive while one batch is being
answered (feature lookup, user tower, index search — on one worker thread) form the next batch.
At one request in flight a batch is that request and nothing waits; under load one Triton call
and one faiss search serve many requests, and no thread pool fights over the GIL. Every answer
names the model and index versions it came from; fallbacks are flagged in the body (`source`,
`cold_start`, `degraded`), never a 5xx.
The OpenAPI spec is at /openapi.json and browsable at /docs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, HTTPException, Path, Query, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field

from data.schema import ID_PATTERN
from serving.recommender import MAX_K, Answer, Bundle, Recommender

log = logging.getLogger(__name__)

MAX_EXCLUDE = 10_000
BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 1.0)


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(pattern=ID_PATTERN, description="The fan's platform id.")
    k: int = Field(20, ge=1, le=MAX_K, description="How many creators to return.")
    exclude: list[str] = Field(
        default_factory=list,
        max_length=MAX_EXCLUDE,
        description="Creator ids never to return (on top of what the fan already follows).",
    )


class Item(BaseModel):
    creator_id: str
    score: float


class RecommendResponse(BaseModel):
    user_id: str | None = None
    creator_id: str | None = None
    items: list[Item]
    model_version: str
    index_version: str
    source: str = Field(description="model: the towers ranked these; popular: a fallback list")
    cold_start: bool = Field(False, description="the user is unknown to the feature store")
    degraded: str | None = Field(
        None, description="why a fallback answered: feature_store_unavailable, "
        "user_tower_unavailable",
    )  # fmt: skip
    took_ms: float


class Batcher:
    """Collects the requests that arrive while a batch is being answered into the next batch.

    Lives on the event loop (no locks): `submit` queues a request and starts a drain task when
    fewer than `workers` are running; each drain hands batches to `answer_many` on its own worker
    thread. Two workers let one batch look up features and search while the other waits on
    Triton (those calls release the GIL).
    """

    def __init__(self, answer_many, max_batch: int = 64, workers: int = 2):
        self.answer_many = answer_many
        self.max_batch = max_batch
        self.workers = workers
        self.pending: list[tuple[tuple, asyncio.Future]] = []
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="recommend")
        self.tasks: set[asyncio.Task] = set()  # referenced: not garbage-collected mid-drain

    async def submit(self, request: tuple):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((request, future))
        if len(self.tasks) < self.workers:
            task = loop.create_task(self._drain())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            batch = self.pending[: self.max_batch]
            del self.pending[: self.max_batch]
            try:
                results = await loop.run_in_executor(
                    self.executor, self.answer_many, [r for r, _ in batch]
                )
            except Exception as e:
                log.exception("a batch of %d requests failed", len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # the client may have gone away
                    future.set_result(result)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class Metrics:
    """Prometheus metrics in a registry of the app's own (several apps can live in one process,
    as in tests)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "towerline_requests", "Requests answered", ["endpoint", "status", "source"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "towerline_request_seconds", "Time in the handler", ["endpoint"],
            buckets=BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.stage = Histogram(
            "towerline_stage_seconds", "Time per stage of /recommend", ["stage"],
            buckets=BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.fallbacks = Counter(
            "towerline_fallbacks", "Answers from a fallback", ["reason"], registry=self.registry
        )
        self.swaps = Counter("towerline_swaps", "Bundle swaps", registry=self.registry)
        self.batch = Histogram(
            "towerline_batch_size", "Requests answered together", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )  # fmt: skip
        self.version = Gauge(
            "towerline_serving_info", "The served versions (value 1)",
            ["model_version", "index_version", "encoder"], registry=self.registry,
        )  # fmt: skip

    def served(self, bundle: Bundle) -> None:
        self.version.clear()
        self.version.labels(bundle.model_version, bundle.index_version, bundle.encoder_name).set(1)


def _response(answer: Answer, bundle: Bundle, started: float, **who) -> RecommendResponse:
    return RecommendResponse(
        **who,
        items=[
            Item(creator_id=c, score=s)
            for c, s in zip(answer.creator_ids, answer.scores, strict=True)
        ],
        **bundle.versions,
        source=answer.source,
        cold_start=answer.cold_start,
        degraded=answer.degraded,
        took_ms=round((time.perf_counter() - started) * 1e3, 3),
    )


def create_app(
    recommender: Recommender,
    poll_seconds: float | None = 2.0,
    max_batch: int = 64,
    batch_workers: int = 2,
) -> FastAPI:
    """The service around a recommender. With `poll_seconds`, a background thread checks the
    index store's `current` pointer and swaps in newly published versions. `max_batch` caps how
    many requests are answered together (1 = one at a time), `batch_workers` how many batches
    run at once."""
    metrics = Metrics()
    stop = threading.Event()
    batcher = Batcher(recommender.recommend_many, max_batch, batch_workers)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        if poll_seconds:
            threading.Thread(target=poll, name="index-poller", daemon=True).start()
        yield
        stop.set()
        batcher.close()

    app = FastAPI(
        title="Towerline",
        version="1",
        summary="Creators a fan will love: two-tower candidate generation.",
        lifespan=lifespan,
    )
    app.state.recommender = recommender
    app.state.metrics = metrics
    app.state.stop = stop

    def on_swap(bundle: Bundle) -> None:
        metrics.swaps.inc()
        metrics.served(bundle)

    recommender.on_swap.append(on_swap)
    if recommender.bundle is not None:
        metrics.served(recommender.bundle)

    def poll() -> None:
        while not stop.wait(poll_seconds):
            try:
                recommender.refresh()
            except Exception as e:  # keep serving what is loaded
                log.error("refresh failed: %s", e)

    def _bundle_or_503():
        if recommender.bundle is None:
            raise HTTPException(503, "no index loaded yet")

    @app.post("/recommend", response_model=RecommendResponse, response_model_exclude={"creator_id"})
    async def recommend(req: RecommendRequest) -> RecommendResponse:
        started = time.perf_counter()
        _bundle_or_503()
        answer, bundle = await batcher.submit((req.user_id, req.k, req.exclude))
        timings = dict(answer.timings)
        if "batch" in timings:
            metrics.batch.observe(timings.pop("batch"))
        for stage, ms in timings.items():
            metrics.stage.labels(stage.removesuffix("_ms")).observe(ms / 1e3)
        if answer.degraded:
            metrics.fallbacks.labels(answer.degraded).inc()
        elif answer.cold_start:
            metrics.fallbacks.labels("cold_start").inc()
        metrics.requests.labels("recommend", "200", answer.source).inc()
        metrics.latency.labels("recommend").observe(time.perf_counter() - started)
        return _response(answer, bundle, started, user_id=req.user_id)

    @app.get(
        "/similar/{creator_id}",
        response_model=RecommendResponse,
        response_model_exclude={"user_id"},
    )
    def similar(
        creator_id: str = Path(pattern=ID_PATTERN, max_length=128),
        k: int = Query(20, ge=1, le=MAX_K),
    ) -> RecommendResponse:
        started = time.perf_counter()
        _bundle_or_503()
        found = recommender.similar(creator_id, k)
        if found is None:
            metrics.requests.labels("similar", "404", "").inc()
            raise HTTPException(
                404, f"creator_id {creator_id!r} is not in the served index "
                f"({recommender.bundle.index_version})",
            )  # fmt: skip
        answer, bundle = found
        metrics.requests.labels("similar", "200", answer.source).inc()
        metrics.latency.labels("similar").observe(time.perf_counter() - started)
        return _response(answer, bundle, started, creator_id=creator_id)

    @app.get("/healthz")
    def healthz() -> dict:
        """The process is up (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(response: Response) -> dict:
        """Ready to answer from the model: an index is loaded and the feature store answers."""
        bundle = recommender.bundle
        checks = {
            "index": bundle is not None,
            "feature_store": _ping(recommender.features),
        }
        ok = all(checks.values())
        response.status_code = 200 if ok else 503
        out = {"ready": ok, "checks": checks, "swaps": recommender.swaps}
        if bundle is not None:
            out |= bundle.versions | {"encoder": bundle.encoder_name}
        if recommender.last_refresh_error:
            out["last_refresh_error"] = recommender.last_refresh_error
        return out

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _ping(features) -> bool:
    try:
        return bool(features.ping())
    except Exception:
        return False
