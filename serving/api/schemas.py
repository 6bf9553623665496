"""The JSON shapes of the HTTP API (OpenAPI at /openapi.json): what a request may carry, and
what every answer says: the creators, the versions that answered, and how (model or fallback).
"""

from __future__ import annotations

import json
import math
import time
from typing import Annotated, Any

from fastapi import Query, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from data.schema import ID_PATTERN

MAX_K = 1000
MAX_EXCLUDE = 10_000
MAX_ID_CHARS = 128
"""The longest id data.schema.ID_PATTERN admits: checked first, so a huge id costs nothing."""

Id = Annotated[str, Field(max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]

SampleK = Annotated[int, Query(ge=1, le=100, description="List length for each sampled fan.")]
SampleFans = Annotated[
    int, Query(ge=10, le=5000, description="The fixed, seeded fan sample's size.")
]
"""The fan sample that answers "who gets this creator" and a version's health (the recommender's
audience): one sample per version and k, answered once."""


class TradeOffs(BaseModel):
    """The rank stage's trade-offs a request may set for itself (ranking.diversity)."""

    model_config = ConfigDict(extra="forbid")

    mmr: float | None = Field(
        None, ge=0.0, le=1.0, description="MMR's trade-off for this request (0 = the ranked "
        "order); default: the service's `rank.mmr`. Not with `calibration` above 0.",
    )  # fmt: skip
    calibration: float | None = Field(
        None, ge=0.0, le=1.0, description="Calibration's trade-off for this request (0 = the "
        "ranked order); default: the service's `rank.calibration`.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _one_trade_off(self):
        if (self.mmr or 0) > 0 and (self.calibration or 0) > 0:
            raise ValueError(
                f"mmr={self.mmr} and calibration={self.calibration}: each picks the list by its "
                f"own objective; set one of them to 0"
            )
        return self


class RecommendRequest(TradeOffs):
    user_id: Id = Field(description="The fan's platform id.")
    k: int = Field(20, ge=1, le=MAX_K, description="How many creators to return.")
    exclude: list[Id] = Field(
        default_factory=list,
        max_length=MAX_EXCLUDE,
        description="Creator ids never to return (on top of what the fan already follows).",
    )


class Problem(BaseModel):
    """A 4xx or 503: what was wrong and what to do."""

    detail: str


class FieldProblem(BaseModel):
    loc: list[str | int] = Field(description="where: body, then the field (and list position)")
    msg: str
    type: str
    input: str | None = Field(None, description="a short prefix of the offending value")


class ValidationProblem(BaseModel):
    """A 422: each field that failed, with its rule."""

    detail: list[FieldProblem]


ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": Problem, "description": "The body is over the limit (--max_body_bytes, 1 MiB)."},
    422: {
        "model": ValidationProblem,
        "description": "A field is missing, malformed or out of "
        "range (non-finite numbers included), or the body is not JSON.",
    },
    503: {"model": Problem, "description": "No index version is loaded yet; retry shortly."},
}
"""The error answers every route documents in the OpenAPI spec."""


class Item(BaseModel):
    creator_id: str
    score: float = Field(description="the towers' score (retrieval's, before any re-ranking)")
    before: int | None = Field(
        None, description="1-based place in the towers' order, where the rank stage moved it",
    )  # fmt: skip


class RecommendResponse(BaseModel):
    user_id: str | None = None
    creator_id: str | None = None
    items: list[Item]
    model_version: str
    index_version: str
    source: str = Field(description="model: the towers ranked these; popular: a fallback list")
    cold_start: bool = Field(False, description="the user is unknown to the feature store")
    degraded: str | None = Field(
        None, description="why a fallback answered or ranked: feature_store_unavailable, "
        "user_tower_unavailable, user_tower_in_process, ranker_in_process, ranker_unavailable",
    )  # fmt: skip
    took_ms: float


def response(answer, bundle, started: float, **who) -> Response:
    """The body of an answer (a pipeline Answer from a Bundle), `who` naming the user or
    creator it is for: RecommendResponse's shape, dumped straight to JSON. The routes declare
    RecommendResponse for the spec; building the model and having FastAPI validate and
    serialise it again cost ~8% of the service's CPU under load (tests check the shape)."""
    body = {
        **who,
        "items": items(answer),
        **bundle.versions,
        "source": answer.source,
        "cold_start": answer.cold_start,
        "degraded": answer.degraded,
        "took_ms": round((time.perf_counter() - started) * 1e3, 3),
    }
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


def items(answer) -> list[dict]:
    """An answer's creators and scores as Item bodies (a non-finite score is null, as pydantic
    would render it: JSON has no NaN)."""
    before = answer.before or [None] * len(answer.creator_ids)
    return [
        {"creator_id": c, "score": s if math.isfinite(s) else None, "before": b}
        for c, s, b in zip(answer.creator_ids, answer.scores, before, strict=True)
    ]
