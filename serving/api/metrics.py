"""The service's Prometheus metrics, in a registry of the app's own (several apps can live in
one process, as in tests).

Several service processes (serving.workers) share one set of numbers through prometheus_client's
multiprocess folder (PROMETHEUS_MULTIPROC_DIR): counters and histograms add up over the workers;
a gauge says how its values combine (`multiprocess_mode`). One process ignores the modes.

Per-stage latency is observed once per batch, as the pipeline timed it (serving.pipeline.
stages); per-route latency, requests and fallbacks once per request; every HTTP response, 4xx
and 5xx included, by route and status (`CountResponses`).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from serving.pipeline.bundle import Bundle
from serving.pipeline.stages import Answer, Batch

BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 1.0)


class Metrics:
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
            "towerline_stage_seconds", "Time per stage of the online pipeline, per batch",
            ["stage"], buckets=BUCKETS, registry=self.registry,
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
            multiprocess_mode="livemax",  # 1 while any live worker serves that pair
        )  # fmt: skip
        self._served: tuple[str, ...] | None = None
        self.responses = Counter(
            "towerline_http_responses", "HTTP responses by route template and status code",
            ["route", "status"], registry=self.registry,
        )  # fmt: skip
        self.up = Gauge(
            "towerline_dependency_up", "1 when a dependency answers (as /readyz checks it)",
            ["dependency"], registry=self.registry, multiprocess_mode="livemostrecent",
        )  # fmt: skip
        self.breaker_open = Gauge(
            "towerline_breaker_open", "1 while a dependency's circuit breaker turns calls away",
            ["dependency"], registry=self.registry, multiprocess_mode="livemostrecent",
        )  # fmt: skip
        self.triton_restarts = Gauge(
            "towerline_triton_restarts", "Times the supervisor restarted the Triton server",
            registry=self.registry, multiprocess_mode="livemostrecent",
        )  # fmt: skip
        self.answer_log = Counter(
            "towerline_answer_log_records", "Answers offered to the answer log, by outcome",
            ["outcome"], registry=self.registry,
        )  # fmt: skip

    def served(self, bundle: Bundle) -> None:
        if self._served is not None:  # to 0 first: a worker's file keeps what clear() forgets
            self.version.labels(*self._served).set(0)
            self.version.remove(*self._served)
        self._served = (bundle.model_version, bundle.index_version, bundle.encoder_name)
        self.version.labels(*self._served).set(1)

    def exposition(self) -> bytes:
        """The Prometheus text: of every worker's numbers when the service has several."""
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not folder:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, folder)
        return generate_latest(registry)

    def swapped(self, bundle: Bundle) -> None:
        self.swaps.inc()
        self.served(bundle)

    def batch_done(self, batch: Batch) -> None:
        """A pipeline observer: each stage's time and the batch's size."""
        self.batch.observe(len(batch.requests))
        for stage, seconds in batch.timings.items():
            self.stage.labels(stage).observe(seconds)

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

    def answered(self, endpoint: str, answer: Answer, seconds: float) -> None:
        if answer.degraded:
            self.fallbacks.labels(answer.degraded).inc()
        elif answer.cold_start:
            self.fallbacks.labels("cold_start").inc()
        self.requests.labels(endpoint, "200", answer.source).inc()
        self.latency.labels(endpoint).observe(seconds)


class CountResponses:
    """ASGI middleware: every response by route template (`unmatched` for none) and status, the
    ones the app never reaches too (a 413 from serving.api.guard.BodyLimit)."""

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

        try:
            await self.app(scope, receive, counted)
        finally:
            self.metrics.responses.labels(self._route(scope), str(status["code"])).inc()

    def _route(self, scope) -> str:
        route = scope.get("route")
        if route is None:  # not routed yet: find the template the path belongs to
            from starlette.routing import Match

            route = next((r for r in self.routes if r.matches(scope)[0] != Match.NONE), None)
        return getattr(route, "path", "unmatched")
