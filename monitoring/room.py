"""The monitoring room on the service: the latest relevance-monitor report for the explorer's
health view.

    GET /monitor/report?version=V   the report's rows for index version V (JSON), newest last
    GET /monitor/report.html        the self-contained HTML report itself

The service knows its answer log (`answer_log.path`), and the monitor writes beside it by
default (monitoring.monitor.out_dir): `<log folder>/monitor/`. `mount(app)` is the room's entry
point (pyproject's `towerline.rooms`): the service mounts it when its config lists
`monitoring` in `rooms`. A report is read when asked for, so a run of the monitor shows at the
next request with nothing to restart.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse

from monitoring.monitor import REPORT_HTML, REPORT_JSON

RUN = "python -m monitoring run --config configs/monitoring/<name>.yaml"


def mount(app: FastAPI) -> None:
    """Add the room's routes to a service app."""

    def report(version: str | None = Query(None, max_length=200)) -> dict:
        return _rows_of(_report_file(app, REPORT_JSON), version)

    def page() -> FileResponse:
        return FileResponse(_report_file(app, REPORT_HTML), media_type="text/html")

    tags = ["monitoring"]
    app.add_api_route("/monitor/report", report, methods=["GET"], tags=tags,
                      summary="The latest monitor report's rows for a version")  # fmt: skip
    app.add_api_route("/monitor/report.html", page, methods=["GET"], tags=tags,
                      summary="The latest monitor report (HTML)")  # fmt: skip


def _folder(app: FastAPI) -> Path:
    """Where the monitor writes for this service: beside its answer log (a 404 without one)."""
    log = app.state.services.answer_log
    if log is None:
        raise HTTPException(
            404, "this service keeps no answer log, so nothing is monitored: set "
            "`answer_log.path` in its config, send it traffic, then run `" + RUN + "`",
        )  # fmt: skip
    return Path(log.path).parent / "monitor"


def _report_file(app: FastAPI, name: str) -> Path:
    """The report file `name` in the monitor folder, read per request (a 404 until it exists)."""
    path = _folder(app) / name
    if not path.is_file():
        raise HTTPException(404, f"no monitor report at {path} yet: run `{RUN}`")
    return path


def _rows_of(path: Path, version: str | None) -> dict:
    """The JSON report at `path` cut to `version`'s rows (all when None), with a link to the
    HTML report; a 404 that lists the versions it has when `version` has none."""
    body = json.loads(path.read_text())
    rows = [r for r in body["rows"] if version is None or r["index_version"] == version]
    if not rows:
        raise HTTPException(
            404, f"the monitor report at {path} has no answers of version {version!r} "
            f"(it has {sorted({r['index_version'] for r in body['rows']})}); rerun `{RUN}` "
            f"once that version has served",
        )  # fmt: skip
    return {**body, "rows": rows, "html": "/monitor/report.html"}
