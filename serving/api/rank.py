"""`POST /rank`: the rank stage of one fan's answer, explained (the relevance explorer's "what did
ranking change, and why?").

The fan is answered through the same stages as /recommend, with the trade-offs the request sets
(MMR or calibration, live). Each creator of the answer comes with its place in the towers' order
and in the answer, the towers' and the ranker's scores, and the features that lifted or sank it
most against the other candidates: LightGBM's TreeSHAP share of each feature in the ranker's
score (the trees the ranker was exported from, ranking.store.TREES), less the candidates' mean
share (ranking.ranker.contributions).
"""

from __future__ import annotations

import functools
import time

import numpy as np
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ranking import ranker as ranking_ranker
from ranking import store as ranking_store
from ranking.features import FEATURES
from ranking.ranker import INPUT
from serving.api.schemas import ERRORS, MAX_K, Id, TradeOffs
from serving.api.state import ServicesDep
from serving.pipeline.stages import Request, rank_inputs

router = APIRouter(tags=["explore"])


class RankRequest(TradeOffs):
    user_id: Id = Field(description="The fan's platform id.")
    k: int = Field(20, ge=1, le=MAX_K, description="How many creators to return.")
    features: int = Field(3, ge=0, le=len(FEATURES), description="Features named per creator.")


class Moved(BaseModel):
    feature: str
    contribution: float = Field(description="Its share of the ranker's score, less the "
                                "candidates' mean share: > 0 lifted the creator")  # fmt: skip
    value: float = Field(description="The feature's value for this fan and creator")


class RankedItem(BaseModel):
    creator_id: str
    name: str
    category: str
    after: int = Field(description="1-based place in the answer")
    before: int = Field(description="1-based place in the towers' order")
    retrieval_score: float
    rank_score: float | None = Field(None, description="The ranker's score; none: no ranker")
    moved_by: list[Moved]


class RankResponse(BaseModel):
    user_id: str
    items: list[RankedItem]
    candidates: int = Field(description="How many of the towers' top creators were ranked")
    ranker: str | None = Field(description="Where the ranker ran; none: the towers' order")
    chosen: str | None = Field(description="What validation chose: lambdarank or the "
                               "retrieval order")  # fmt: skip
    explained: bool = Field(description="Whether features are named (the ranker's trees)")
    mmr: float
    calibration: float
    source: str
    degraded: str | None
    model_version: str
    index_version: str
    took_ms: float


@router.post("/rank", response_model=RankResponse, responses={413: ERRORS[413], 422: ERRORS[422]})
async def rank(req: RankRequest, svc: ServicesDep):
    started = time.perf_counter()
    svc.bundle()
    body = await run_in_threadpool(_explain, svc, req)
    return JSONResponse(body | {"took_ms": round((time.perf_counter() - started) * 1e3, 3)})


@functools.lru_cache(maxsize=4)
def _trees(folder: str):
    path = f"{folder}/{ranking_store.TREES}"
    try:
        return ranking_ranker.load_trees(path)
    except Exception:  # a passthrough ranker has none; one that fails to load explains nothing
        return None


def _explain(svc, req: RankRequest) -> dict:
    rec, bundle = svc.recommender, svc.bundle()
    mmr, calibration = rec.rank.trade_offs(
        Request(req.user_id, req.k, (), req.mmr, req.calibration)
    )
    batch = rec.pipeline.run([Request(req.user_id, req.k, (), mmr, calibration)], bundle)
    answer, ranker = batch.answers[0], bundle.tower.ranker
    out = _header(req, bundle, answer, ranker, mmr, calibration)
    if not batch.model:  # a cold start or a fallback: nothing was ranked
        return out
    rows, scores = batch.candidates[0]
    before = answer.before or list(range(1, len(answer.creator_ids) + 1))
    at = np.asarray(before) - 1  # positions into the candidates
    scored = _scored(rec, batch, ranker, len(rows))
    out["items"] = _items(bundle, at, rows, scores, scored, req.features)
    out |= {"candidates": len(rows), "explained": scored[2] is not None}
    return out


def _header(req: RankRequest, bundle, answer, ranker, mmr: float, calibration: float) -> dict:
    """The response less its items: what it is when nothing was ranked (a cold start or a
    fallback), the trade-offs as applied rather than as asked."""
    return {"user_id": req.user_id, "items": [], "candidates": 0, "explained": False,
            "ranker": ranker.name if ranker else None, "mmr": mmr, "calibration": calibration,
            "chosen": ranker.manifest.get("chosen", {}).get("chosen") if ranker else None,
            "source": answer.source, "degraded": answer.degraded, **bundle.versions}  # fmt: skip


def _scored(rec, batch, ranker, n: int) -> tuple:
    """(inputs, scores, shares) of the ranker over the fan's `n` candidates: all None where no
    ranker ran, shares None where its trees are missing (nothing to explain it with)."""
    x = rank_scores = shares = None
    if ranker is not None and rec.rank.candidates > 0:
        x, _ = rank_inputs(batch, ranker.window)
        run = ranker.fallback or ranker.score
        rank_scores = run({INPUT: x})[0]
        trees = _trees(str(ranker.folder)) if ranker.folder else None
        if trees is not None:
            shares = ranking_ranker.contributions(trees, x[0, :n])
    return x, rank_scores, shares


def _items(bundle, at, rows, scores, scored: tuple, features: int) -> list[dict]:
    """One item per creator of the answer, in the answer's order; `at` holds their positions
    among the candidates (the towers' order), `scored` what _scored returned."""
    x, rank_scores, shares = scored
    info, items = bundle.catalog, []
    for place, (position, row) in enumerate(zip(at, rows[at], strict=True), start=1):
        moved = _moved(x, shares, position, features)
        items.append({
            "creator_id": str(bundle.index.creator_id[row]), "name": str(info["name"][row]),
            "category": str(info["category"][row]), "after": place, "before": int(position) + 1,
            "retrieval_score": float(scores[position]),
            "rank_score": None if rank_scores is None else float(rank_scores[position]),
            "moved_by": moved,
        })  # fmt: skip
    return items


def _moved(x, shares, position: int, features: int) -> list[dict]:
    """The `features` features whose shares moved the candidate at `position` most, up or
    down; none where nothing was explained or none were asked for."""
    if shares is None or not features:
        return []
    top = np.argsort(-np.abs(shares[position]))[:features]
    return [{"feature": FEATURES[f], "contribution": float(shares[position, f]),
             "value": float(x[0, position, f])} for f in top]  # fmt: skip
