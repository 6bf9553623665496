"""The explorer room: its page and its pinned libraries, mounted on the service's app.

    /explorer                 the page (explorer/static/index.html)
    /explorer/static/...      its script and style
    /explorer/vendor/...      the npm libraries it uses, from explorer/web/node_modules

`mount(app)` is the room's entry point (pyproject's `towerline.rooms`); the service calls it
when its config lists `explorer` in `rooms`. It also has each served version's explorer data
made in the background as soon as the version is loaded (`warm`), so no partner's first click
waits for it: the catalog's labels, the training pairs, the map, and the fan sample's answers.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from common.errors import MissingInputError
from serving.api.creator_map import map_body
from serving.pipeline.versions import sample_fans

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
NODE_MODULES = HERE / "web" / "node_modules"
VENDOR = {  # what the page loads, by the package that ships it
    "plotly": NODE_MODULES / "plotly.js-dist-min",
    "axe-core": NODE_MODULES / "axe-core",
}
SAMPLE = {"k": 10, "fans": 1000}
COMPARE_FANS = 200  # the page's "Summarise over 200 fans"
"""The fan sample the page asks about first (its default k): audience and health."""


def mount(app: FastAPI) -> None:
    """Add the explorer's routes to a service app."""
    missing = [str(path) for path in VENDOR.values() if not path.is_dir()]
    if missing:
        raise MissingInputError(
            f"the explorer's libraries are not installed ({', '.join(missing)}): run `make env` "
            f"(npm ci in explorer/web)"
        )

    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.add_api_route("/explorer", page, methods=["GET"], include_in_schema=False)
    app.mount("/explorer/static", StaticFiles(directory=STATIC), name="explorer-static")
    for name, folder in VENDOR.items():
        app.mount(f"/explorer/vendor/{name}", StaticFiles(directory=folder), name=f"vendor-{name}")
    recommender = app.state.services.recommender
    recommender.on_swap.append(lambda bundle: _in_background(recommender, bundle))
    if recommender.bundle is not None:
        _in_background(recommender, recommender.bundle)


def _in_background(recommender, bundle) -> None:
    threading.Thread(
        target=warm, args=(recommender, bundle), name="explorer-warm", daemon=True
    ).start()


def _comparison(recommender, bundle) -> None:
    """The version the page compares the served one with first (the newest other published),
    loaded with its fan sample answered; and the comparison's own fan sample drawn."""
    others = [v["index_version"] for v in recommender.versions.published()]
    others = [v for v in others if v != bundle.index_version]
    sample_fans(Path(bundle.index.manifest["catalog"]["data_dir"]), COMPARE_FANS, 0)
    if others:
        recommender.audience(recommender.bundle_of(others[-1]), SAMPLE["k"], SAMPLE["fans"])


def warm(recommender, bundle) -> None:
    """Make what the explorer reads of a version: each piece is made once and kept (a failure
    is logged; the request that needs the piece then makes it, or says why it cannot)."""
    started = time.perf_counter()
    steps = {
        "labels": lambda: bundle.catalog,
        "followers": lambda: bundle.followers,
        "map": lambda: bundle.creator_map is not None and map_body(bundle),
        "name completion": lambda: bundle.suggest,
        "fan sample": lambda: recommender.audience(bundle, SAMPLE["k"], SAMPLE["fans"]),
        "comparison": lambda: _comparison(recommender, bundle),
    }
    for name, step in steps.items():
        try:
            step()
        except Exception as e:
            log.warning(
                "explorer: could not prepare the %s of %s: %s", name, bundle.index_version, e
            )
    log.info("explorer: %s ready in %.1f s", bundle.index_version, time.perf_counter() - started)
