"""`GET /versions/{index_version}/health`: a published version at a glance, for the explorer's
health view: how its model trained (recall and NDCG@k by epoch, from the checkpoint's own
record), how well its index search finds what exact search finds (the rebuild's tuning curve),
and what it recommends to a fixed sample of fans (catalog coverage, the popularity of the
creators in their lists against the catalog's).

Everything but the sample comes from the version's manifest; the sample is the one the creator
view's audience uses (answered once per version and k, then cached).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException, Path
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from common.errors import MissingInputError
from serving.api.schemas import ERRORS, Problem, SampleFans, SampleK
from serving.api.state import ServicesDep

router = APIRouter(tags=["explore"])

VERSION = Path(
    pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=200,
    description="A published index version (GET /versions).",
)  # fmt: skip
NOT_PUBLISHED = {404: {"model": Problem, "description": "The version is not published."}}


class Training(BaseModel):
    evaluations: list[dict] = Field(
        description="One record per evaluation, as training wrote it (epoch -1: before the "
        "first step); metrics are named metric@k."
    )
    checkpoint_epoch: int | None = Field(description="The epoch the served weights are from.")
    note: str | None = Field(None, description="Why there are no evaluations, when none.")


class Search(BaseModel):
    factory: str
    k: int
    recall_target: float
    queries: int = Field(description="Real user vectors the recall was measured on.")
    exact_qps: float
    chosen: dict = Field(description="The settings served: params, recall, qps.")
    curve: list[dict] = Field(description="Every setting measured: params, recall, qps.")


class Band(BaseModel):
    label: str = Field(description="Training interactions: 0, 1, 2–3, 4–7, …")
    catalog_share: float = Field(description="Share of the catalog's creators in the band.")
    recommended_share: float = Field(description="Share of the sample's list slots.")


class Recommended(BaseModel):
    fans: int
    degraded: int = Field(
        description="Sampled fans a fallback answered (Triton or the feature "
        "store failed): the figures are not the model's; ask again."
    )
    k: int
    slots: int = Field(description="fans × k, less short lists.")
    distinct: int = Field(description="Distinct creators in the sample's lists.")
    catalog: int
    coverage: float = Field(description="distinct / catalog")
    top_1pct_share: float = Field(description="Slots going to the catalog's 1 % most popular.")
    mean_popularity: float = Field(description="Mean training interactions per slot.")
    catalog_mean_popularity: float
    bands: list[Band]


class HealthResponse(BaseModel):
    index_version: str
    model_version: str
    served: bool
    training: Training
    search: Search | None
    recommended: Recommended
    took_ms: float


@router.get(
    "/versions/{index_version}/health",
    response_model=HealthResponse,
    responses={**NOT_PUBLISHED, **ERRORS},
)
async def version_health(
    svc: ServicesDep,
    index_version: str = VERSION,
    k: SampleK = 10,
    fans: SampleFans = 1000,
) -> dict:
    started = time.perf_counter()
    served = svc.bundle()
    try:
        bundle = await run_in_threadpool(svc.recommender.bundle_of, index_version)
    except MissingInputError as e:
        raise HTTPException(404, str(e)) from e
    who = await run_in_threadpool(svc.recommender.audience, bundle, k, fans)
    exposure = await run_in_threadpool(who.exposure, bundle.row_of, bundle.popularity)
    m = bundle.index.manifest
    return {
        **bundle.versions, "served": bundle is served, "training": training(m["model"]),
        "search": search(m), "recommended": {**exposure, "k": k},
        "took_ms": round((time.perf_counter() - started) * 1e3, 3),
    }  # fmt: skip


def training(model: dict) -> dict:
    found = model.get("evaluations") or []
    note = None if found else (
        "the checkpoint records no evaluations (trained before training kept them in the "
        "checkpoint, or with no evaluation): retrain to see the curve"
    )  # fmt: skip
    return {"evaluations": found, "checkpoint_epoch": model.get("epoch"), "note": note}


def search(manifest: dict) -> dict | None:
    t = manifest.get("tuning")
    if not t:
        return None
    return {
        "factory": manifest["index"]["factory"], "k": t["k"], "recall_target": t["recall_target"],
        "queries": t["queries"], "exact_qps": t["exact_qps"], "chosen": t["chosen"],
        "curve": t["curve"],
    }  # fmt: skip
