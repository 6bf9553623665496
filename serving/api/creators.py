"""`POST /creators`: what the explorer shows of a creator (name, category, popularity) for ids of
the served index; an id the index does not hold comes back with `indexed` false."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from data.schema import ID_PATTERN
from serving.api.schemas import ERRORS, MAX_ID_CHARS, Id, Problem, SampleFans, SampleK
from serving.api.state import ServicesDep

router = APIRouter(tags=["explore"])

MAX_IDS = 1000
CREATOR_ID = Path(pattern=ID_PATTERN, max_length=MAX_ID_CHARS)
NOT_INDEXED = {404: {"model": Problem, "description": "Not in the served index."}}


class CreatorsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[Id] = Field(max_length=MAX_IDS, description="Creator ids, answered in this order.")


class Creator(BaseModel):
    creator_id: str
    indexed: bool
    name: str | None = None
    category: str | None = None
    popularity: int | None = Field(None, description="Training interactions.")


class CreatorsResponse(BaseModel):
    index_version: str
    creators: list[Creator]


@router.post("/creators", response_model=CreatorsResponse, responses=ERRORS)
async def creators(req: CreatorsRequest, svc: ServicesDep) -> dict:
    bundle = svc.bundle()
    info = await run_in_threadpool(lambda: bundle.catalog)  # read once per version
    out = []
    for c in req.ids:
        row = bundle.row_of.get(c)
        if row is None:
            out.append({"creator_id": c, "indexed": False})
            continue
        out.append({
            "creator_id": c, "indexed": True, "name": str(info["name"][row]),
            "category": str(info["category"][row]), "popularity": int(info["train_count"][row]),
        })  # fmt: skip
    return {"index_version": bundle.index_version, "creators": out}


class AudienceResponse(BaseModel):
    creator_id: str
    index_version: str
    fans: int = Field(description="Fans in the fixed sample.")
    recommended_to: int = Field(description="Sampled fans with the creator in their top k.")
    degraded: int = Field(
        description="Sampled fans a fallback answered (a dependency failed): "
        "the figures are not the model's; ask again shortly."
    )
    mix: dict[str, float] = Field(description="Their history's mean category mix.")
    overall: dict[str, float] = Field(description="The whole sample's, for comparison.")


@router.get(
    "/creators/{creator_id}/audience",
    response_model=AudienceResponse,
    responses={**NOT_INDEXED, **ERRORS},
)
async def audience(
    svc: ServicesDep,
    creator_id: str = CREATOR_ID,
    k: SampleK = 20,
    fans: SampleFans = 1000,
) -> dict:
    """Which kinds of fans get this creator recommended: the category mix of the histories of
    the sampled fans whose top k hold it (the sample is answered once per version, then cached)."""
    bundle, _ = _indexed(svc, creator_id)
    who = await run_in_threadpool(svc.recommender.audience, bundle, k, fans)
    count, mix = who.of(creator_id)
    return {
        "creator_id": creator_id, "index_version": bundle.index_version, "fans": len(who.fans),
        "recommended_to": count, "degraded": who.degraded, "mix": mix, "overall": who.overall(),
    }  # fmt: skip


@router.get(
    "/creators/{creator_id}/fans",
    responses={**NOT_INDEXED, **ERRORS},
)
async def fans(
    svc: ServicesDep,
    creator_id: str = CREATOR_ID,
    limit: int = Query(20, ge=1, le=1000),
) -> dict:
    """Fans who follow the creator in the training data, newest first: how the explorer finds
    a fan by a creator they follow."""
    bundle, row = _indexed(svc, creator_id)
    indptr, users = await run_in_threadpool(lambda: bundle.followers)
    start, end = int(indptr[row]), int(indptr[row + 1])
    return {
        "creator_id": creator_id, "index_version": bundle.index_version, "total": end - start,
        "fans": [str(u) for u in users[start : min(end, start + limit)]],
    }  # fmt: skip


def _indexed(svc, creator_id: str):
    """The served bundle and the creator's row in it; a 404 naming the version when it is
    not there."""
    bundle = svc.bundle()
    row = bundle.row_of.get(creator_id)
    if row is None:
        raise HTTPException(404, f"creator_id {creator_id!r} is not in {bundle.index_version}")
    return bundle, row
