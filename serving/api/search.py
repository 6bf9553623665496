"""`GET /search?q=…&user_id=…&k=…`: creators for a typed query from the served version's
retrievers (search.engine): lexical, semantic when the version has text vectors, and personal
(the user tower's score) when a known fan is given, fused as the config's `search` says, with
the popularity prior where that fusion weights it. Each item carries its rank in every list
that took part, so the explorer can show why it stands there.

A failing dependency degrades the answer, flagged: without the feature store or the user tower,
the personal retriever sits out (`degraded` names which), the others still answer; the query
encoder's server (Triton's second model) not answering moves the query's embedding into this
process (`query_encoder_in_process`).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from common.errors import MissingInputError
from data.schema import ID_PATTERN
from index.lexical import tokens
from search.engine import SearchSettings
from serving.api.schemas import ERRORS, MAX_ID_CHARS
from serving.api.state import ServicesDep

router = APIRouter(tags=["search"])

MAX_QUERY = 200
MAX_K = 100
MAX_EXCLUDE = 1000
BESIDE = ThreadPoolExecutor(8, thread_name_prefix="search-beside")
"""Where the fan's and the query's vectors are computed beside the lexical retriever."""
WARM_QUERIES = 96
"""Searches a process asks itself when a version arrives (`warm`). On the 1 M set the first
answers of a fresh worker took up to 290 ms at one request in flight, against p99 ~25 ms after
20 s of traffic: code, pages and thread pools not yet touched."""
NO_WORD = ("q has no letter or digit to search for ({q!r}): type a creator's name or a topic, "
           "e.g. 'watercolor comics'")  # fmt: skip


Exclude = Annotated[
    list[str] | None, Query(max_length=MAX_EXCLUDE, description="Creator ids never to return.")
]


class SearchItem(BaseModel):
    creator_id: str
    score: float = Field(description="The fused score (rrf or weighted: the config's method).")
    name: str
    category: str
    popularity: int
    ranks: dict[str, int] = Field(
        description="1-based rank in each list having it: the retrievers', and the popularity "
        "prior's (the text candidates by audience) where the fusion weights it."
    )


class SearchResponse(BaseModel):
    q: str
    user_id: str | None
    items: list[SearchItem]
    retrievers: list[str] = Field(description="The retrievers that answered.")
    fusion: dict = Field(
        description="method, c, weights, candidates per retriever, near, grams, reading, and "
        "query: name or topic (which fusion the config's `search` gave it)"
    )
    model_version: str
    index_version: str
    degraded: str | None = Field(
        None, description="What failed, comma-separated: feature_store_unavailable or "
        "user_tower_unavailable (the personal retriever sat out; a fan the store does not know: "
        "cold_start instead); query_encoder_in_process (its server did not answer, this process "
        "embedded the query) or query_encoder_unavailable (the semantic retriever sat out)."
    )  # fmt: skip
    cold_start: bool = False
    took_ms: float


RESPONSES = {422: ERRORS[422], 503: {**ERRORS[503], "description": ERRORS[503]["description"]
             + " Or the served version was built before search: rebuild it."}}  # fmt: skip


@router.get("/search", response_model=SearchResponse, responses=RESPONSES)
async def search(
    svc: ServicesDep,
    q: str = Query(max_length=MAX_QUERY, description="What the fan typed: a name, a topic."),
    k: int = Query(10, ge=1, le=MAX_K),
    user_id: str | None = Query(None, pattern=ID_PATTERN, max_length=MAX_ID_CHARS,
                                description="The fan searching, for the personal retriever."),
    exclude: Exclude = None,
) -> dict:  # fmt: skip
    started = time.perf_counter()
    if not tokens(q):
        raise HTTPException(422, NO_WORD.format(q=q[:40]))
    bundle = svc.bundle()
    out = await run_in_threadpool(_answer, svc, bundle, q, k, user_id, exclude or [])
    svc.metrics.timed("search", time.perf_counter() - started)
    svc.metrics.returned("search", len(out["items"]), k, out["cold_start"])
    return {**out, "q": q, "user_id": user_id, **bundle.versions,
            "took_ms": round((time.perf_counter() - started) * 1e3, 3)}  # fmt: skip


def warm(svc, bundle) -> None:
    """Ask the version's search what fans ask, the way /search does: popular creators' names,
    the same names cut short (a typo's trigram path), their categories; every other one with
    a fan (the caller then says so in `svc.search_warm`, which /readyz reports)."""
    from serving.pipeline.versions import sample_fans

    info, rows = bundle.catalog, np.asarray(bundle.popular[: WARM_QUERIES // 3])
    names = [str(info["name"][r]) for r in rows if info["name"][r]]
    queries = [q for n in names for q in (n, n[:-2])] + [str(info["category"][r]) for r in rows]
    try:
        fans = sample_fans(bundle.index.manifest["catalog"]["data_dir"], 8, seed=1)
    except OSError:  # the dataset moved: the personal path stays cold
        fans = ()
    for i, q in enumerate(q for q in queries[:WARM_QUERIES] if tokens(q)):
        fan = fans[i % len(fans)] if fans and i % 2 else None
        _answer(svc, bundle, q, 10, fan, [], observe=False)


def _retrieve(
    rec, bundle, q: str, user_id: str | None, s: SearchSettings, took: dict[str, float]
) -> tuple[dict, str | None, str | None]:
    """Each retriever's list, why the personal one sat out, and where the query was embedded
    if not where it should be. The fan's vector (features, then the user tower) and the
    query's (the query encoder) are computed, on Triton mostly waited for, while this thread
    asks the lexical retriever. `took`: each stage's seconds."""
    try:
        engine = bundle.search
    except MissingInputError as e:  # a version built before search
        raise HTTPException(503, str(e)) from e
    fan = (
        None
        if user_id is None
        else BESIDE.submit(timed, took, "search_fan_vector", rec.user_vector, user_id, bundle)
    )
    query = (
        None
        if engine.semantic is None
        else BESIDE.submit(timed, took, "search_query_vector", rec.query_vector, q, bundle)
    )
    lists = timed(took, "search_lexical", engine.candidates, q, s.candidates, semantic=False,
                  grams=s.grams)  # fmt: skip
    query_vector, query_why = (None, None) if query is None else query.result()
    if query_vector is not None:
        lists["semantic"] = timed(took, "search_semantic", engine.semantic.search_vectors,
                                  query_vector, s.candidates)  # fmt: skip
    vector, why = (None, None) if fan is None else fan.result()
    if vector is not None:
        lists["personal"] = timed(took, "search_personal", engine.personal, lists, vector, q,
                                  s.near, s.candidates)  # fmt: skip
    return lists, why, query_why


def timed(took: dict[str, float], stage: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), its seconds kept in `took[stage]` (the stage's histogram)."""
    started = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        took[stage] = time.perf_counter() - started


def _answer(
    svc, bundle, q: str, k: int, user_id: str | None, exclude: list[str], observe: bool = True
) -> dict:
    """/search's answer; `observe`: its stages' times go to the metrics (not the warm-up's)."""
    settings: SearchSettings = svc.search
    took: dict[str, float] = {}
    lists, why, query_why = _retrieve(svc.recommender, bundle, q, user_id, settings, took)
    started = time.perf_counter()
    banned = [bundle.row_of[c] for c in exclude if c in bundle.row_of]
    hits, chosen, name_like = bundle.search.routed(q, lists, k, settings, banned)
    with_fan, used = "personal" in lists, list(lists)
    info = bundle.catalog
    items = [{"creator_id": str(bundle.index.creator_id[h.row]), "score": h.score,
              "name": str(info["name"][h.row]), "category": str(info["category"][h.row]),
              "popularity": int(info["train_count"][h.row]), "ranks": h.ranks}
             for h in hits]  # fmt: skip
    fusion = {"method": chosen.method, "c": chosen.c, "weights": chosen.weights,
              "candidates": settings.candidates, "near": settings.near, "grams": settings.grams,
              "reading": settings.reading,
              "query": SearchSettings.route(name_like, with_fan)}  # fmt: skip
    took["search_fuse"] = time.perf_counter() - started
    for stage, seconds in took.items() if observe else ():
        svc.metrics.stage.labels(stage).observe(seconds)
    cold = why == "cold_start"
    degraded = [r for r in (None if cold else why, query_why) if r]
    return {"items": items, "retrievers": used, "fusion": fusion,
            "degraded": ",".join(degraded) or None, "cold_start": cold}  # fmt: skip
