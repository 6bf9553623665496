"""The service's Prometheus metrics, in a registry of the app's own (several apps can live in
one process, as in tests).

Several service processes (serving.workers) share one set of numbers through prometheus_client's
multiprocess folder (PROMETHEUS_MULTIPROC_DIR): counters and histograms add up over the workers;
a gauge says how its values combine (`multiprocess_mode`). One process ignores the modes.

Per-stage latency is observed once per batch, as the pipeline timed it (serving.pipeline.
stages); per-endpoint latency, requests, fallbacks, cold starts, result sizes and empty or short
answers once per request; every HTTP response, 4xx and 5xx included, by route and status
(`CountResponses`). The served version's age, and its model's, are computed when /metrics is
read; the model's is NaN for a version whose manifest does not say when the model was trained
(`model.trained_at`: absent for a checkpoint saved before training recorded it). Names are in
base units with Prometheus's suffixes (prometheus_client adds `_total` to a counter's name);
no label ever holds a fan's id. monitoring.live writes its alerting rules against the names
below.

Trace exemplars: an endpoint's latency observation carries the trace id of the request (the
OpenTelemetry span's where one is recording, else the caller's W3C `traceparent` header); a
stage's, timed once per batch, the first traced request of the batch (each waited that long). The
text format has no place for them: /metrics serves OpenMetrics, exemplars included, when the
scraper's Accept header asks for it, as Prometheus does. prometheus_client's multiprocess mode
does not store exemplars, so with several workers none are taken or shown.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import re
import time
from contextvars import ContextVar

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from serving.pipeline.bundle import Bundle
from serving.pipeline.stages import Answer, Batch

log = logging.getLogger(__name__)

BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 1.0)
SIZE_BUCKETS = (0, 1, 5, 10, 20, 50, 100, 200, 500, 1000)  # MAX_K is 1000
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The names as scraped (counters with the `_total` prometheus_client appends)
REQUEST_SECONDS = "towerline_request_seconds"
REQUESTS = "towerline_requests_total"
FALLBACKS = "towerline_fallbacks_total"
HTTP_RESPONSES = "towerline_http_responses_total"
VERSION_AGE = "towerline_version_age_seconds"
MODEL_AGE = "towerline_model_age_seconds"
ENDPOINTS = ("recommend", "similar", "what_if", "search")
"""The `endpoint` label's values: the handlers that time themselves (Metrics.timed)."""
OPERATIONS_ROUTES = ("/metrics", "/healthz", "/readyz")
"""Routes a scraper or an orchestrator calls, not a fan: left out of the error share."""

TRACE_ID: ContextVar[str | None] = ContextVar("towerline_trace_id", default=None)
"""The trace id of the caller's `traceparent` header, set by CountResponses per request."""
_TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        # the multiprocess values drop exemplars (prometheus_client's TODO): do not make them
        self.exemplars = not os.environ.get(MULTIPROC_ENV)
        self._define_requests()
        self._define_pipeline()
        self._define_versions()
        self._define_dependencies()
        self._served: tuple[str, ...] | None = None
        self._built_at: float | None = None
        self._trained_at: float | None = None

    def _define_requests(self) -> None:
        r = self.registry
        self.requests = Counter(
            "towerline_requests", "Requests answered", ["endpoint", "status", "source"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            REQUEST_SECONDS, "Time in the handler", ["endpoint"], buckets=BUCKETS, registry=r
        )
        self.fallbacks = Counter(
            "towerline_fallbacks", "Answers from a fallback", ["endpoint", "reason"], registry=r
        )
        self.cold_starts = Counter(
            "towerline_cold_starts", "Answers to a fan without a history (the popular list)",
            ["endpoint"], registry=r,
        )  # fmt: skip
        self.empty = Counter(
            "towerline_empty_answers", "Answers without a creator", ["endpoint"], registry=r
        )
        self.short = Counter(
            "towerline_short_answers", "Answers with some creators but fewer than the k asked",
            ["endpoint"], registry=r,
        )  # fmt: skip
        self.result_size = Histogram(
            "towerline_result_size", "Creators in an answer", ["endpoint"],
            buckets=SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        self.responses = Counter(
            "towerline_http_responses", "HTTP responses by route template and status code",
            ["route", "status"], registry=r,
        )  # fmt: skip

    def _define_pipeline(self) -> None:
        r = self.registry
        self.stage = Histogram(
            "towerline_stage_seconds", "Time per stage of the online pipeline, per batch",
            ["stage"], buckets=BUCKETS, registry=r,
        )  # fmt: skip
        self.batch = Histogram(
            "towerline_batch_size", "Requests answered together", registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )  # fmt: skip
        self.answer_log = Counter(
            "towerline_answer_log_records", "Answers offered to the answer log, by outcome",
            ["outcome"], registry=r,
        )  # fmt: skip

    def _define_versions(self) -> None:
        r = self.registry
        self.swaps = Counter("towerline_swaps", "Bundle swaps", registry=r)
        self.version = Gauge(
            "towerline_serving_info", "The served versions and the encoder in use (value 1)",
            ["model_version", "index_version", "encoder"], registry=r,
            multiprocess_mode="livemax",  # 1 while any live worker serves that pair
        )  # fmt: skip
        self.age = Gauge(
            VERSION_AGE, "Seconds since the served index version (model embeddings, user "
            "tower, index) was built; NaN before one is loaded or for a version whose manifest "
            "has no build time", registry=r,
            multiprocess_mode="livemostrecent",  # the worker answering the scrape sets it
        )  # fmt: skip
        self.model_age = Gauge(
            MODEL_AGE, "Seconds since the served model (the towers of the served index "
            "version) was trained; NaN before one is loaded or for a version built from a "
            "checkpoint that does not record it", registry=r,
            multiprocess_mode="livemostrecent",
        )  # fmt: skip
        self.age.set(math.nan)
        self.model_age.set(math.nan)

    def _define_dependencies(self) -> None:
        r = self.registry
        self.up = Gauge(
            "towerline_dependency_up", "1 when a dependency answers (as /readyz checks it)",
            ["dependency"], registry=r, multiprocess_mode="livemostrecent",
        )  # fmt: skip
        self.breaker_open = Gauge(
            "towerline_breaker_open", "1 while a dependency's circuit breaker turns calls away",
            ["dependency"], registry=r, multiprocess_mode="livemostrecent",
        )  # fmt: skip
        self.triton_restarts = Gauge(
            "towerline_triton_restarts", "Times the supervisor restarted the Triton server",
            registry=r, multiprocess_mode="livemostrecent",
        )  # fmt: skip

    def served(self, bundle: Bundle) -> None:
        if self._served is not None:  # to 0 first: a worker's file keeps what clear() forgets
            self.version.labels(*self._served).set(0)
            self.version.remove(*self._served)
        self._served = (bundle.model_version, bundle.index_version, bundle.encoder_name)
        self.version.labels(*self._served).set(1)
        self._built_at = built_at(bundle.index.manifest)
        self._trained_at = trained_at(bundle.index.manifest)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition the Accept header asks for (OpenMetrics, with exemplars, or the
        Prometheus text) and its content type: of every worker's numbers when there are
        several."""
        # NaN, not the last version's or model's age, once one that does not know it serves
        now = time.time()
        self.age.set(math.nan if self._built_at is None else now - self._built_at)
        self.model_age.set(math.nan if self._trained_at is None else now - self._trained_at)
        encode, content_type = choose_encoder(accept or "")
        folder = os.environ.get(MULTIPROC_ENV)
        if not folder:
            return encode(self.registry), content_type
        registry = CollectorRegistry()
        MultiProcessCollector(registry, folder)
        return encode(registry), content_type

    def swapped(self, bundle: Bundle) -> None:
        self.swaps.inc()
        self.served(bundle)

    def batch_done(self, batch: Batch) -> None:
        """A pipeline observer: each stage's time and the batch's size. A stage is timed per
        batch, and every request in it waited that long: the first traced one is the
        exemplar."""
        self.batch.observe(len(batch.requests))
        traced = next((r.trace_id for r in batch.requests if r.trace_id), None)
        exemplar = {"trace_id": traced} if traced and self.exemplars else None
        for stage, seconds in batch.timings.items():
            self.stage.labels(stage).observe(seconds, exemplar)

    def dependencies(self, report: dict) -> None:
        """The gauges of a readiness report (serving.api.health.readiness), at scrape time."""
        deps = report["dependencies"]
        for name, ok in report["checks"].items():
            self.up.labels(name).set(int(ok))
        self.up.labels("user_tower_server").set(int(deps["user_tower"]["server_ok"]))
        for name in ("feature_store", "user_tower"):
            self.breaker_open.labels(name).set(int(deps[name]["breaker"]["state"] != "closed"))
        if "triton" in deps:
            self.triton_restarts.set(deps["triton"]["restarts"])

    def answered(self, endpoint: str, answer: Answer, seconds: float, k: int) -> None:
        """One answer of a list endpoint, `k` creators asked for."""
        if answer.degraded:
            self.fallbacks.labels(endpoint, answer.degraded).inc()
        elif answer.cold_start:
            self.fallbacks.labels(endpoint, "cold_start").inc()
        self.requests.labels(endpoint, "200", answer.source).inc()
        self.timed(endpoint, seconds)
        self.returned(endpoint, len(answer.creator_ids), k, answer.cold_start)

    def timed(self, endpoint: str, seconds: float) -> None:
        """An endpoint's handler time, with the request's trace as the exemplar."""
        self.latency.labels(endpoint).observe(seconds, self._exemplar())

    def returned(self, endpoint: str, size: int, k: int, cold_start: bool = False) -> None:
        """An answer's size against the `k` asked for; empty and short are disjoint."""
        self.result_size.labels(endpoint).observe(size)
        if size == 0:
            self.empty.labels(endpoint).inc()
        elif size < k:
            self.short.labels(endpoint).inc()
        if cold_start:
            self.cold_starts.labels(endpoint).inc()

    def _exemplar(self) -> dict[str, str] | None:
        traced = trace_id() if self.exemplars else None
        return {"trace_id": traced} if traced else None


def trace_id() -> str | None:
    """The trace of the request being handled: the OpenTelemetry span's where one is
    recording, else the caller's `traceparent` header's (TRACE_ID); None without either."""
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        return format(span.trace_id, "032x")
    return TRACE_ID.get()


def built_at(manifest: dict) -> float | None:
    """When an index version was built (its manifest's `created_at`), in Unix seconds; None,
    logged, for a manifest without a readable one."""
    try:
        return dt.datetime.fromisoformat(manifest["created_at"]).timestamp()
    except (KeyError, TypeError, ValueError) as e:
        log.warning("index version without a build time (created_at): %r; no age metric", e)
        return None


def trained_at(manifest: dict) -> float | None:
    """When the model of an index version was trained (its manifest's `model.trained_at`), in
    Unix seconds; None, logged, for a version whose checkpoint did not record it."""
    try:
        return dt.datetime.fromisoformat(manifest["model"]["trained_at"]).timestamp()
    except (KeyError, TypeError, ValueError) as e:
        log.warning("index version without a training time (model.trained_at): %r; model age "
                    "NaN", e)  # fmt: skip
        return None


def traceparent(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The trace id of a W3C `traceparent` header among ASGI headers, None without a valid one
    (all-zero ids are invalid by the spec)."""
    for name, value in headers:
        if name == b"traceparent":
            found = _TRACEPARENT.match(value)
            if found and found[1].strip(b"0"):
                return found[1].decode()
            return None
    return None


class CountResponses:
    """ASGI middleware: every response by route template (`unmatched` for none) and status, the
    ones the app never reaches too (a 413 from serving.api.guard.BodyLimit); and the caller's
    trace id (TRACE_ID) for the handlers' exemplars while it runs."""

    def __init__(self, app, metrics: Metrics, routes: list):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}  # what the client gets when the app raises before answering

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        token = TRACE_ID.set(traceparent(scope["headers"])) if self.metrics.exemplars else None
        try:
            await self.app(scope, receive, counted)
        finally:
            self.metrics.responses.labels(self._route(scope), str(status["code"])).inc()
            if token is not None:
                TRACE_ID.reset(token)

    def _route(self, scope) -> str:
        route = scope.get("route")
        if route is None:  # not routed yet: find the template the path belongs to
            from starlette.routing import Match

            route = next((r for r in self.routes if r.matches(scope)[0] != Match.NONE), None)
        return getattr(route, "path", "unmatched")
