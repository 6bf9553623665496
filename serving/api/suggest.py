"""`GET /suggest?prefix=…`: name completion as a fan types, from the served version's keys
(index.suggest, search.suggest): the most popular creators whose name, from one of its words
on, starts with what was typed (case and accents ignored). Nothing typed: the most popular.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from common.errors import MissingInputError
from index.lexical import tokens
from serving.api.schemas import ERRORS
from serving.api.state import ServicesDep

router = APIRouter(tags=["search"])

MAX_PREFIX = 200
"""Characters; a name is at most ~100."""
MAX_N = 20


class Suggestion(BaseModel):
    creator_id: str
    name: str
    category: str
    popularity: int = Field(description="Training interactions: the order of suggestions.")


class SuggestResponse(BaseModel):
    prefix: str
    items: list[Suggestion]
    model_version: str
    index_version: str
    took_ms: float


NO_SEARCH = {503: {**ERRORS[503], "description": ERRORS[503]["description"]
                   + " Or the served version was built before search: rebuild it."}}  # fmt: skip


@router.get("/suggest", response_model=SuggestResponse, responses={422: ERRORS[422], **NO_SEARCH})
async def suggest(
    svc: ServicesDep,
    prefix: str = Query("", max_length=MAX_PREFIX, description="What the fan has typed so far."),
    n: int = Query(8, ge=1, le=MAX_N, description="How many names to suggest."),
) -> dict:
    started = time.perf_counter()
    bundle = svc.bundle()
    if prefix.strip() and not tokens(prefix):  # only symbols, emoji, controls: no name starts so
        found = []
    else:
        found = await run_in_threadpool(_complete, bundle, prefix, n)
    info = bundle.catalog
    items = [{"creator_id": str(bundle.index.creator_id[row]), "name": str(info["name"][row]),
              "category": str(info["category"][row]), "popularity": popularity}
             for row, popularity in found]  # fmt: skip
    return {"prefix": prefix, "items": items, **bundle.versions,
            "took_ms": round((time.perf_counter() - started) * 1e3, 3)}  # fmt: skip


def _complete(bundle, prefix: str, n: int) -> list[tuple[int, int]]:
    try:
        return bundle.suggest.complete(prefix, n)
    except MissingInputError as e:
        raise HTTPException(503, str(e)) from e
