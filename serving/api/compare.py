"""`GET /versions`, `POST /compare`, `POST /compare/sample`: two published model + index versions
side by side, for one fan (both lists, overlap@k, rank changes) and over a fixed sample of fans
(mean overlap@k, share of lists changed, the popularity of what each recommends). A version
other than the served one is loaded on demand with its tower in-process
(serving.pipeline.versions); comparisons are answered off the books (no metrics, no log).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from common.errors import MissingInputError
from serving.api.schemas import ERRORS, MAX_K, Id, Item, Problem, items
from serving.api.state import ServicesDep
from serving.pipeline.stages import Request
from serving.pipeline.versions import overlap, sample_fans

router = APIRouter(tags=["explore"])

MAX_FANS = 1000
Version = str | None
VERSION = "A published index version; none: the served one (a) or the one before it (b)."
NOT_FOUND = {404: {"model": Problem, "description": "A version asked for is not published."}}


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Id
    a: Version = Field(None, description=VERSION, max_length=200)
    b: Version = Field(None, description=VERSION, max_length=200)
    k: int = Field(20, ge=1, le=MAX_K)


class SampleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    a: Version = Field(None, description=VERSION, max_length=200)
    b: Version = Field(None, description=VERSION, max_length=200)
    k: int = Field(20, ge=1, le=MAX_K)
    fans: int = Field(200, ge=1, le=MAX_FANS, description="Fans in the fixed sample.")
    seed: int = Field(0, ge=0, description="The sample: the same seed, the same fans.")


class Side(BaseModel):
    index_version: str
    model_version: str
    items: list[Item]
    source: str


class RankChange(BaseModel):
    creator_id: str
    rank_a: int | None = Field(description="1-based; none: not in a's top k")
    rank_b: int | None


class CompareResponse(BaseModel):
    user_id: str
    k: int
    a: Side
    b: Side
    overlap: float = Field(description="|a's top k ∩ b's top k| / k")
    changes: list[RankChange] = Field(description="Every creator of either list, a's first.")
    took_ms: float


class SampleResponse(BaseModel):
    a: str
    b: str
    k: int
    fans: int
    mean_overlap: float
    share_changed: float = Field(description="Share of fans whose top k differ in any way.")
    popularity: dict[str, float] = Field(
        description="Mean training interactions of the creators each version recommends."
    )
    took_ms: float


@router.get("/versions", responses={503: ERRORS[503]})
def versions(svc: ServicesDep) -> dict:
    """Published versions, oldest first, and the one served."""
    served = svc.bundle()
    return {"served": served.index_version, "versions": svc.recommender.versions.published()}


@router.post("/compare", response_model=CompareResponse, responses={**NOT_FOUND, **ERRORS})
async def compare(req: CompareRequest, svc: ServicesDep) -> dict:
    started = time.perf_counter()
    a, b = await run_in_threadpool(_pair, svc, req.a, req.b)
    answers = await run_in_threadpool(_both, svc, [Request(req.user_id, req.k)], a, b)
    (x,), (y,) = answers
    return {
        "user_id": req.user_id, "k": req.k, "a": _side(a, x), "b": _side(b, y),
        "overlap": overlap(x.creator_ids, y.creator_ids, req.k),
        "changes": _changes(x.creator_ids, y.creator_ids),
        "took_ms": round((time.perf_counter() - started) * 1e3, 3),
    }  # fmt: skip


@router.post("/compare/sample", response_model=SampleResponse, responses={**NOT_FOUND, **ERRORS})
async def compare_sample(req: SampleRequest, svc: ServicesDep) -> dict:
    started = time.perf_counter()
    a, b = await run_in_threadpool(_pair, svc, req.a, req.b)
    data_dir = Path(a.index.manifest["catalog"]["data_dir"])
    fans = await run_in_threadpool(sample_fans, data_dir, req.fans, req.seed)  # reads a table
    xs, ys = await run_in_threadpool(_both, svc, [Request(f, req.k) for f in fans], a, b)
    overlaps = [overlap(x.creator_ids, y.creator_ids, req.k) for x, y in zip(xs, ys, strict=True)]
    changed = [x.creator_ids != y.creator_ids for x, y in zip(xs, ys, strict=True)]
    return {
        "a": a.index_version, "b": b.index_version, "k": req.k, "fans": len(fans),
        "mean_overlap": float(np.mean(overlaps)) if fans else 0.0,
        "share_changed": float(np.mean(changed)) if fans else 0.0,
        "popularity": {"a": _popularity(a, xs), "b": _popularity(b, ys)},
        "took_ms": round((time.perf_counter() - started) * 1e3, 3),
    }  # fmt: skip


def _pair(svc, a: str | None, b: str | None):
    """The two bundles; b defaults to the version published before a."""
    rec = svc.recommender
    try:
        first = rec.bundle_of(a)
        return first, rec.bundle_of(b or _before(rec, first.index_version))
    except MissingInputError as e:
        raise HTTPException(404, str(e)) from e


def _before(rec, version: str) -> str:
    names = [v["index_version"] for v in rec.versions.published()]
    earlier = names[: names.index(version)] if version in names else []
    if not earlier:
        raise MissingInputError(f"no version was published before {version}: name b")
    return earlier[-1]


def _both(svc, requests: list[Request], a, b):
    """Both versions' answers, side by side in two threads: each spends most of its time in
    the tower and the index search, which release the GIL."""
    other = _SIDE.submit(svc.recommender.answer, requests, b)
    return svc.recommender.answer(requests, a), other.result()


_SIDE = ThreadPoolExecutor(max_workers=2, thread_name_prefix="compare")


def _side(bundle, answer) -> dict:
    return {**bundle.versions, "items": items(answer), "source": answer.source}


def _changes(a: list[str], b: list[str]) -> list[dict]:
    rank_a = {c: i + 1 for i, c in enumerate(a)}
    rank_b = {c: i + 1 for i, c in enumerate(b)}
    order = [*a, *(c for c in b if c not in rank_a)]
    return [{"creator_id": c, "rank_a": rank_a.get(c), "rank_b": rank_b.get(c)} for c in order]


def _popularity(bundle, answers) -> float:
    rows = [bundle.row_of[c] for x in answers for c in x.creator_ids if c in bundle.row_of]
    return float(np.mean(bundle.popularity[rows])) if rows else 0.0
