"""What the routers share: one `Services` per app, in `app.state`, handed to each handler by
FastAPI's dependency injection (`svc: ServicesDep`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from search.engine import SearchSettings
from serving.answer_log import AnswerLog
from serving.api.batcher import Batcher
from serving.api.metrics import Metrics
from serving.pipeline.bundle import Bundle
from serving.pipeline.recommender import Recommender


@dataclass
class Services:
    recommender: Recommender
    metrics: Metrics
    batcher: Batcher
    answer_log: AnswerLog | None = None
    search: SearchSettings = field(default_factory=SearchSettings)
    """How /search fuses its retrievers (the config's `search`)."""
    search_warm: str | None = None
    """The index version whose search this process has warmed (serving.api.search.warm)."""

    def bundle(self) -> Bundle:
        """The served bundle, or a 503 while none is loaded yet."""
        bundle = self.recommender.bundle
        if bundle is None:
            raise HTTPException(503, "no index loaded yet; retry shortly")
        return bundle

    def log_answer(self, route: str, request: dict, answer, bundle: Bundle) -> None:
        if self.answer_log is not None:
            outcome = self.answer_log.offer(route, request, answer, bundle.versions)
            self.metrics.answer_log.labels(outcome).inc()


async def services(request: Request) -> Services:
    """Async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread hop
    per request (the service's throughput fell by a third with one)."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(services)]
"""A handler's `svc: ServicesDep` parameter: its app's Services."""
