"""The explorer room: its page and its pinned libraries, mounted on the service's app.

    /explorer                 the page (explorer/static/index.html)
    /explorer/static/...      its script and style
    /explorer/vendor/...      the npm libraries it uses, from explorer/web/node_modules

`mount(app)` is the room's entry point (pyproject's `towerline.rooms`); the service calls it
when its config lists `explorer` in `rooms`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from common.errors import MissingInputError

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
NODE_MODULES = HERE / "web" / "node_modules"
VENDOR = {  # what the page loads, by the package that ships it
    "plotly": NODE_MODULES / "plotly.js-dist-min",
    "axe-core": NODE_MODULES / "axe-core",
}


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
