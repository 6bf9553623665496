"""`POST /creators`: what the explorer shows of a creator (name, category, popularity) for ids of
the served index; an id the index does not hold comes back with `indexed` false."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from serving.api.schemas import ERRORS, Id
from serving.api.state import ServicesDep

router = APIRouter(tags=["explore"])

MAX_IDS = 1000


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
