"""`POST /recommend`: the creators a fan will love.

Requests are answered in batches (serving.api.batcher) through the online pipeline; every answer
names the model and index versions it came from, and fallbacks are flagged in the body
(`source`, `cold_start`, `degraded`), never a 5xx.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Response

from serving.api.metrics import trace_id
from serving.api.schemas import ERRORS, RecommendRequest, RecommendResponse, response
from serving.api.state import ServicesDep
from serving.pipeline.stages import Request

router = APIRouter(tags=["recommend"])


@router.post(
    "/recommend",
    response_model=RecommendResponse,
    response_model_exclude={"creator_id"},
    responses=ERRORS,
)
async def recommend(req: RecommendRequest, svc: ServicesDep) -> Response:
    started = time.perf_counter()
    svc.bundle()
    request = Request(
        req.user_id, req.k, tuple(req.exclude), req.mmr, req.calibration, trace_id=trace_id()
    )
    answer, bundle = await svc.batcher.submit(request)
    svc.metrics.answered("recommend", answer, time.perf_counter() - started, req.k)
    svc.log_answer("recommend", req.model_dump(exclude_none=True), answer, bundle)
    return response(answer, bundle, started, user_id=req.user_id)
