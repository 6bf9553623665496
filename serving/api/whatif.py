"""`POST /what-if`: a fan's recommendations with the reasons for each, for the fan as stored, the
fan with an edited history, or a fan nobody knows; the relevance explorer's questions "why this
creator?" and "what if they followed that one?" (serving.pipeline.whatif).

The answer comes from the served model and index versions through the same stages as
/recommend (an unedited fan gets /recommend's list), and each recommended creator names the
history creators that add most to its score, measured by leaving each out in one batched call
to the user tower.
"""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from common.errors import UnavailableError
from serving.api import schemas
from serving.api.guard import echo
from serving.api.schemas import ERRORS, MAX_K, Id, Item
from serving.api.state import ServicesDep
from serving.pipeline.stages import Request

router = APIRouter(tags=["explore"])

MAX_HISTORY = 1000
MAX_WHY = 20


class WhatIfRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Id | None = Field(
        None, description="The fan to start from; none: a fan nobody knows (no id, nothing yet)."
    )
    history: list[Id] | None = Field(
        None,
        max_length=MAX_HISTORY,
        description="Creator ids, oldest first, replacing the fan's stored history (what they "
        "follow loses the creators left out and gains those added); none: the stored history. "
        "The tower reads the newest it was trained with (the answer's `history`).",
    )
    k: int = Field(20, ge=1, le=MAX_K, description="How many creators to return.")
    exclude: list[Id] = Field(default_factory=list, max_length=MAX_HISTORY)
    why: int = Field(
        3, ge=0, le=MAX_WHY,
        description="History creators to name per recommended creator, those adding most to "
        "its score; 0: none (no extra tower call).",
    )  # fmt: skip


class Reason(BaseModel):
    creator_id: str
    contribution: float = Field(
        description="The score with this history creator minus the score without it."
    )


class WhyItem(Item):
    why: list[Reason] = Field(default_factory=list)


class WhatIfResponse(BaseModel):
    user_id: str | None
    history: list[str] = Field(description="The history the user tower read, oldest first.")
    since: list[int | None] = Field(
        description="When the fan last interacted with each history creator in the training "
        "data (ms since the epoch); null: not there (added in this what-if, or no fan)."
    )
    items: list[WhyItem]
    model_version: str
    index_version: str
    source: str = Field(description="model: the towers ranked these; popular: a fallback list")
    cold_start: bool
    degraded: str | None
    why_unavailable: str | None = Field(
        None, description="Why the reasons are missing (the user tower did not answer)."
    )
    took_ms: float


UNKNOWN_CREATOR = " Or a history creator is not in the served index."
NO_FAN = "No index loaded yet, or the feature store did not answer for the fan; retry shortly."
RESPONSES = {
    413: ERRORS[413],
    422: {**ERRORS[422], "description": ERRORS[422]["description"] + UNKNOWN_CREATOR},
    503: {**ERRORS[503], "description": NO_FAN},
}


@router.post("/what-if", response_model=WhatIfResponse, responses=RESPONSES)
async def what_if(req: WhatIfRequest, svc: ServicesDep):
    started = time.perf_counter()
    svc.bundle()
    out = await run_in_threadpool(_answer, svc, req)
    if isinstance(out, JSONResponse):
        return out
    body, answer = out
    seconds = time.perf_counter() - started
    svc.metrics.answered("what_if", answer, seconds, req.k)
    return JSONResponse(body | {"took_ms": round(seconds * 1e3, 3)})


def _answer(svc, req: WhatIfRequest):
    rec, bundle = svc.recommender, svc.bundle()  # one bundle: the history's ids are its model's
    if req.history is not None:
        creators, missing = bundle.vocabulary(req.history)
        if missing:
            return _unknown_creators(req.history, missing, bundle.index_version)
    try:
        profile = rec.profile(req.user_id)
    except UnavailableError as e:
        return JSONResponse({"detail": f"the feature store did not answer: {e}"}, status_code=503)
    if req.history is not None:
        profile = profile.edited(creators.tolist())
    answer = rec.what_if(profile, Request(req.user_id or "", req.k, tuple(req.exclude)), bundle)
    items = [item | {"why": []} for item in schemas.items(answer)]
    names = bundle.ids(profile.items())  # the history's ids (None: not in the index)
    known = [j for j, c in enumerate(names) if c is not None]
    history = [names[j] for j in known]
    since = (
        bundle.since(req.user_id, profile.items()[known]) if req.user_id else [None] * len(known)
    )
    out = {"user_id": req.user_id, "history": history, "since": since, "items": items,
           **bundle.versions,
           "source": answer.source, "cold_start": answer.cold_start,
           "degraded": answer.degraded, "why_unavailable": None}  # fmt: skip
    if req.why and answer.source == "model" and len(profile.items()):
        out["why_unavailable"] = _reasons(rec, profile, bundle, answer, items, names, req.why)
    return out, answer


def _reasons(rec, profile, bundle, answer, items: list[dict], names: list, top: int):
    """Fill each item's `why` with the history creators (`names`, by history position) adding
    most to its score; the reason when the tower cannot say, else None."""
    try:
        delta, _ = rec.why(profile, bundle, answer.creator_ids)  # [history, items]
    except UnavailableError as e:
        return str(e)
    for r, item in enumerate(items):
        best = [j for j in np.argsort(-delta[:, r], kind="stable") if names[j] is not None]
        item["why"] = [{"creator_id": names[j], "contribution": round(float(delta[j, r]), 6)}
                       for j in best[:top]]  # fmt: skip
    return None


def _unknown_creators(history: list[str], missing: list[str], version: str) -> JSONResponse:
    gone = set(missing)
    detail = [
        {"loc": ["body", "history", i], "msg": f"creator not in the served index ({version}): "
         "use ids /recommend or /similar return", "type": "unknown_creator", "input": echo(c)}
        for i, c in enumerate(history) if c in gone
    ][:20]  # fmt: skip
    return JSONResponse({"detail": detail}, status_code=422)
