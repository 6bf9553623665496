"""The JSON shapes of the HTTP API (OpenAPI at /openapi.json): what a request may carry, and
what every answer says: the creators, the versions that answered, and how (model or fallback).
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

from data.schema import ID_PATTERN

MAX_K = 1000
MAX_EXCLUDE = 10_000


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(pattern=ID_PATTERN, description="The fan's platform id.")
    k: int = Field(20, ge=1, le=MAX_K, description="How many creators to return.")
    exclude: list[str] = Field(
        default_factory=list,
        max_length=MAX_EXCLUDE,
        description="Creator ids never to return (on top of what the fan already follows).",
    )


class Item(BaseModel):
    creator_id: str
    score: float


class RecommendResponse(BaseModel):
    user_id: str | None = None
    creator_id: str | None = None
    items: list[Item]
    model_version: str
    index_version: str
    source: str = Field(description="model: the towers ranked these; popular: a fallback list")
    cold_start: bool = Field(False, description="the user is unknown to the feature store")
    degraded: str | None = Field(
        None, description="why a fallback answered: feature_store_unavailable, "
        "user_tower_unavailable",
    )  # fmt: skip
    took_ms: float


def response(answer, bundle, started: float, **who) -> RecommendResponse:
    """The body of an answer (a pipeline Answer from a Bundle), `who` naming the user or
    creator it is for."""
    return RecommendResponse(
        **who,
        items=[
            Item(creator_id=c, score=s)
            for c, s in zip(answer.creator_ids, answer.scores, strict=True)
        ],
        **bundle.versions,
        source=answer.source,
        cold_start=answer.cold_start,
        degraded=answer.degraded,
        took_ms=round((time.perf_counter() - started) * 1e3, 3),
    )
