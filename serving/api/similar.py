"""`GET /similar/{creator_id}`: the creators nearest to one creator of the served index."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException, Path, Query, Response

from data.schema import ID_PATTERN
from serving.api.schemas import ERRORS, MAX_ID_CHARS, MAX_K, Problem, RecommendResponse, response
from serving.api.state import ServicesDep

router = APIRouter(tags=["similar"])


@router.get(
    "/similar/{creator_id}",
    response_model=RecommendResponse,
    response_model_exclude={"user_id"},
    responses={
        404: {"model": Problem, "description": "The creator is not in the served index."},
        **ERRORS,
    },
)
def similar(
    svc: ServicesDep,
    creator_id: str = Path(pattern=ID_PATTERN, max_length=MAX_ID_CHARS),
    k: int = Query(20, ge=1, le=MAX_K),
) -> Response:
    started = time.perf_counter()
    served = svc.bundle()
    found = svc.recommender.similar(creator_id, k)
    if found is None:
        svc.metrics.requests.labels("similar", "404", "").inc()
        raise HTTPException(
            404, f"creator_id {creator_id!r} is not in the served index ({served.index_version})"
        )
    answer, bundle = found
    svc.metrics.answered("similar", answer, time.perf_counter() - started, k)
    svc.log_answer("similar", {"creator_id": creator_id, "k": k}, answer, bundle)
    return response(answer, bundle, started, creator_id=creator_id)
