"""`GET /versions/{index_version}/health`: a published version at a glance, for the explorer's
health view: how its model trained (recall and NDCG@k by epoch, from the checkpoint's own
record), how well its index search finds what exact search finds (the rebuild's tuning curve),
what it recommends to a fixed sample of fans (catalog coverage, the popularity of the
creators in their lists against the catalog's), and how far it drifted from the version it
replaced (index.drift, measured by the rebuild before it published).

Everything but the sample comes from the version's manifest; the sample is the one the creator
view's audience uses (answered once per version and k, then cached). A drift figure's limit is
the one the rebuild judged it against: its config, kept in the manifest (`config.drift`); its
verdict is the rebuild's own (the drift entry's breaches), not judged again here.
"""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, HTTPException, Path
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from common.errors import MissingInputError
from index.drift import THRESHOLDS
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


class DriftFigure(BaseModel):
    figure: str = Field(description="Its name in drift.json (index.drift): cosine_shift, …")
    value: float | None = Field(
        description="None: not measured (too few creators in both versions, or the old "
        "version had no user tower to answer the fans' lists)."
    )
    threshold: str | None = Field(
        description="The index config's drift threshold that judges it (max_cosine_shift, "
        "…); None: no threshold judges this figure."
    )
    limit: float | None = Field(
        description="The threshold's value when the version was published; None: not set."
    )
    kind: Literal["max", "min", "abs"] | None = Field(
        description="max: over when the value is above the limit; min: below it; abs: when "
        "|value| is above it."
    )
    ok: bool | None = Field(
        description="False: the rebuild found it past its limit (a breach); None: not "
        "checked (no limit set, or no value)."
    )


class Drift(BaseModel):
    measured: bool
    reason: str | None = Field(
        description="Why no drift was measured, when none was: a first version has nothing "
        "to compare with."
    )
    against: str | None = Field(
        description="The version it was compared with: the one current when it was published."
    )
    k: int | None = Field(description="Neighbours and list length the overlaps are taken at.")
    forced: bool = Field(
        description="Published past at least one limit with --allow_drift true (the "
        "manifest's drift entry: allowed)."
    )
    figures: list[DriftFigure] = Field(description="The judged figures, and the unaligned shift.")
    context: dict = Field(
        description="drift.json's other figures: what the table's were measured on "
        "(creators_joined, fans, two_sample_null_se, popularity_old/new, …)."
    )
    report: str | None = Field(
        description="The full report's file in the version's folder (drift.html); the "
        "service does not serve version files."
    )


class HealthResponse(BaseModel):
    index_version: str
    model_version: str
    served: bool
    training: Training
    search: Search | None
    recommended: Recommended
    drift: Drift
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
        "search": search(m), "recommended": {**exposure, "k": k}, "drift": drift(m),
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


SHOWN = (
    "cosine_shift", "cosine_shift_unaligned", "neighbour_overlap", "list_overlap",
    "rank_correlation", "popularity_shift", "two_sample_auc",
)  # fmt: skip
"""The figures the health view tabulates: those a threshold can judge (index.drift.THRESHOLDS)
and, beside the shift, the shift without alignment (what the Procrustes rotation takes out)."""


def drift(manifest: dict) -> dict:
    """The version's drift from the one it replaced, each figure beside the limit it was
    judged against and the rebuild's verdict."""
    entry = manifest.get("drift") or {
        "reason": "the version records no drift (published before drift was measured)"
    }
    if not entry.get("measured"):
        return {
            "measured": False, "reason": entry.get("reason"), "against": None, "k": None,
            "forced": False, "figures": [], "context": {}, "report": None,
        }  # fmt: skip
    values, limits = entry["figures"], manifest["config"]["drift"]
    return {
        "measured": True, "reason": None, "against": entry["against"], "k": entry["k"],
        "forced": entry["allowed"],
        "figures": [judged(f, values.get(f), limits, entry["breaches"]) for f in SHOWN],
        "context": {f: v for f, v in values.items() if f not in SHOWN},
        "report": entry["report"],
    }  # fmt: skip


def judged(figure: str, value, limits: dict, breaches: list[dict]) -> dict:
    threshold, kind = next(((t, k) for f, t, k in THRESHOLDS if f == figure), (None, None))
    limit = limits[threshold] if threshold else None
    checked = limit is not None and value is not None
    over = any(b["figure"] == figure for b in breaches)
    return {
        "figure": figure, "value": value, "threshold": threshold, "limit": limit, "kind": kind,
        "ok": (not over) if checked else None,
    }  # fmt: skip
