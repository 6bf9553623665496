"""`GET /map`, `POST /map/place`: the served version's creator map (index.projection: a 2-D UMAP
of a sample stratified by popularity and category) for the explorer's map view, as columns; and
where any creators sit on it (a creator not in the sample sits at its nearest sampled neighbour).
The sample, not the corpus: at most the version's `map_points` (50,000) creators."""

from __future__ import annotations

import json
import threading

import numpy as np
from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from serving.api.schemas import ERRORS, Id, Problem
from serving.api.state import ServicesDep

router = APIRouter(tags=["explore"])

NO_MAP = {404: {"model": Problem, "description": "The served version was built without a map."}}


class PlaceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[Id] = Field(max_length=1000, description="Creator ids of the served index.")


def _map_of(svc):
    bundle = svc.bundle()
    m = bundle.creator_map
    if m is None:
        raise HTTPException(
            404, f"index version {bundle.index_version} has no creator map: rebuild it with "
            f"map_points > 0 (`python -m index rebuild --map_points 50000`)",
        )  # fmt: skip
    return bundle, m


@router.get("/map", responses={**NO_MAP, 503: ERRORS[503]})
async def creator_map(svc: ServicesDep) -> Response:
    """The map as columns: ids, names, category codes (into `categories`), popularity, x, y."""
    bundle, _ = await run_in_threadpool(_map_of, svc)
    body = await run_in_threadpool(map_body, bundle)
    return Response(body, media_type="application/json")


def map_body(bundle) -> bytes:
    """The served version's map as JSON, encoded once per version (50,000 points: ~4 MB and
    ~0.3 s to encode; the explorer asks for it on each visit)."""
    with _LOCK:
        if bundle.index_version in _BODIES:
            return _BODIES[bundle.index_version]
    m = bundle.creator_map
    categories, codes = np.unique(m["category"].astype(str), return_inverse=True)
    body = json.dumps({
        "index_version": bundle.index_version, "points": len(m["row"]),
        "creator_id": m["creator_id"].tolist(), "name": m["name"].tolist(),
        "categories": categories.tolist(), "category": codes.tolist(),
        "popularity": m["train_count"].tolist(),
        "x": np.round(m["x"], 3).tolist(), "y": np.round(m["y"], 3).tolist(),
    }, separators=(",", ":")).encode()  # fmt: skip
    with _LOCK:
        _BODIES.clear()  # the served version's only
        _BODIES[bundle.index_version] = body
    return body


_BODIES: dict[str, bytes] = {}
_LOCK = threading.Lock()


@router.post("/map/place", responses={**NO_MAP, **ERRORS})
async def place(req: PlaceRequest, svc: ServicesDep) -> dict:
    """Where creators sit on the map; ids the index does not hold are left out."""
    bundle, _ = await run_in_threadpool(_map_of, svc)
    ids = [c for c in req.ids if c in bundle.row_of]
    rows = np.asarray([bundle.row_of[c] for c in ids], np.int64)
    xy, on_map = (
        await run_in_threadpool(bundle.place, rows) if len(rows) else (np.zeros((0, 2)), [])
    )
    return {
        "index_version": bundle.index_version,
        "creators": [{"creator_id": c, "x": float(p[0]), "y": float(p[1]), "on_map": bool(o)}
                     for c, p, o in zip(ids, xy, on_map, strict=True)],
    }  # fmt: skip
