"""The HTTP service: the routers of serving.api assembled around one recommender.

    app = create_app(recommender)       # serving.pipeline.recommender.Recommender
    uvicorn.run(app, host="127.0.0.1", port=8080)

Each endpoint lives in a router of its own (`recommend`, `similar`, `health`); a new one (the
explorer's, search's) is a router added to ROUTERS. The app owns what the routers share
(serving.api.state.Services): the batcher, the metrics, the answer log; and, with
`poll_seconds`, a thread that swaps in newly published index versions. The OpenAPI spec is at
/openapi.json and browsable at /docs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Sequence
from importlib.metadata import entry_points

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from common.errors import ConfigError
from search.engine import SearchSettings
from serving import memory
from serving.answer_log import AnswerLog
from serving.api import (
    compare,
    creator_map,
    creators,
    health,
    rank,
    recommend,
    search,
    similar,
    suggest,
    version_health,
    whatif,
)
from serving.api.batcher import Batcher
from serving.api.guard import MAX_BODY_BYTES, BodyLimit, invalid_request
from serving.api.metrics import CountResponses, Metrics
from serving.api.state import Services
from serving.pipeline.recommender import Recommender

log = logging.getLogger(__name__)

ROOMS_GROUP = "towerline.rooms"
ROUTERS = (
    recommend.router, similar.router, whatif.router, compare.router, creators.router,
    creator_map.router, version_health.router, search.router, suggest.router, health.router,
    rank.router,
)  # fmt: skip


def create_app(
    recommender: Recommender,
    poll_seconds: float | None = 2.0,
    max_batch: int = 64,
    batch_workers: int = 2,
    answer_log: AnswerLog | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    opentelemetry: bool = False,
    rooms: Sequence[str] = (),
    search_settings: SearchSettings | None = None,
) -> FastAPI:
    """The service around a recommender. `max_batch` caps how many requests are answered
    together (1 = one at a time), `batch_workers` how many batches run at once; `answer_log`
    (closed with the app) records sampled answers; a body over `max_body_bytes` is a 413;
    `opentelemetry` turns on FastAPI's native tracing, metrics and logs (serving.config);
    `rooms` are mounted by name (`mount_rooms`)."""
    metrics = Metrics()
    svc = Services(
        recommender, metrics, Batcher(recommender.recommend_many, max_batch, batch_workers),
        answer_log, search_settings or SearchSettings(),
    )  # fmt: skip
    app = FastAPI(
        title="Towerline",
        version="1",
        summary="Creators a fan will love: two-tower candidate generation.",
        lifespan=_lifespan(svc, poll_seconds),
        telemetry=None if opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.services = svc
    _add_routes(app, metrics, max_body_bytes, rooms)
    return app


def _lifespan(svc: Services, poll_seconds: float | None):
    """The app's FastAPI lifespan: hooks and the index poller start with the app and are undone
    at shutdown, so a stopped app leaves its recommender as it found it."""
    recommender, metrics, answer_log = svc.recommender, svc.metrics, svc.answer_log
    stop = threading.Event()
    prepare = functools.partial(_prepare_search, svc)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        _hook(recommender, metrics, prepare)
        if poll_seconds:
            threading.Thread(
                target=_poll, args=(recommender, poll_seconds, stop), name="index-poller",
                daemon=True,
            ).start()  # fmt: skip
        yield
        stop.set()
        svc.batcher.close()
        _unhook(recommender, metrics, prepare)
        if answer_log is not None:
            answer_log.close()

    return lifespan


def _hook(recommender: Recommender, metrics: Metrics, prepare) -> None:
    """Follow swaps and batches, and prepare and count the version already loaded, if any."""
    recommender.on_swap.append(metrics.swapped)
    recommender.on_swap.append(prepare)
    if recommender.bundle is not None:
        prepare(recommender.bundle)
    recommender.pipeline.observers.append(metrics.batch_done)
    if recommender.bundle is not None:
        metrics.served(recommender.bundle)


def _unhook(recommender: Recommender, metrics: Metrics, prepare) -> None:
    """Undo `_hook`, so the recommender no longer calls into a stopped app."""
    recommender.on_swap.remove(metrics.swapped)
    recommender.on_swap.remove(prepare)
    recommender.pipeline.observers.remove(metrics.batch_done)


def _add_routes(app: FastAPI, metrics: Metrics, max_body_bytes: int, rooms: Sequence[str]) -> None:
    """The routers, their error handling and middleware, and the rooms mounted above them."""
    for router in ROUTERS:
        app.include_router(router)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    mount_rooms(app, rooms)
    # the routers' own routes: app.router holds included routers as wrappers without a path
    routes = [route for router in ROUTERS for route in router.routes]
    app.add_middleware(CountResponses, metrics=metrics, routes=routes)  # outermost


def mount_rooms(app: FastAPI, names: Sequence[str]) -> None:
    """Mount the rooms above the service (the explorer) by their entry points in the
    `towerline.rooms` group: a room imports serving, never the reverse, so it is found by
    name at start, not imported here."""
    found = {ep.name: ep for ep in entry_points(group=ROOMS_GROUP)}
    for name in names:
        if name not in found:
            raise ConfigError(
                f"--rooms: no room {name!r} is installed (installed: {sorted(found)}); "
                f"reinstall the package (`make env`) or drop it from the config"
            )
        found[name].load()(app)


def _prepare_search(svc: Services, bundle) -> None:
    """Load a served version's search (retrievers, query encoder, name completion) and warm it
    with the searches fans make (serving.api.search.warm), in the background, so the first
    /search and /suggest do not pay for it (~0.2 s on the demo, seconds on the 1 M set); then,
    where the config locks memory, pin the version's and the feature store's mapped files
    (serving.memory)."""

    def load() -> None:
        try:
            bundle.suggest.complete("a", 1)
            search.warm(svc, bundle)
        except Exception as e:  # a version built before search: /search says so itself
            log.info("search not prepared for %s: %s", bundle.index_version, e)
            return
        features = getattr(svc.recommender.features, "folder", None)  # an embedded store's
        memory.pin([bundle.index.folder, *([features] if features else [])])
        svc.search_warm = bundle.index_version  # /readyz: warmed, and pinned where asked

    threading.Thread(target=load, name="search-warm", daemon=True).start()


def _poll(recommender: Recommender, seconds: float, stop: threading.Event) -> None:
    """Swap in newly published versions until `stop`; keep serving what is loaded on errors."""
    while not stop.wait(seconds):
        try:
            recommender.refresh()
        except Exception as e:
            log.error("refresh failed: %s", e)
