"""`GET /healthz` (liveness), `GET /readyz` (readiness) and `GET /metrics` (Prometheus text or
OpenMetrics, as the scraper asks: serving.api.metrics)."""

from __future__ import annotations

import os

from fastapi import APIRouter, Header, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS

from serving import memory
from serving.api.state import ServicesDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict:
    """The process is up (liveness)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "Not ready: the same body, with the failing checks false."}},
)
def readyz(response: Response, svc: ServicesDep) -> dict:
    """Ready when answers can come from the model: an index is loaded, the feature store
    answers, and the user tower runs (on its server, or in-process while the server does not
    answer: ready, with `degraded` saying so). Not ready when only the popular list is left."""
    report = readiness(svc)
    response.status_code = 200 if report["ready"] else 503
    return report


def readiness(svc) -> dict:
    """Each dependency's state, the checks as booleans, and what answers are degraded by."""
    rec = svc.recommender
    bundle = rec.bundle
    deps = _dependencies(rec, bundle)
    checks = {name: deps[name]["ok"] for name in ("index", "feature_store", "user_tower")}
    out = {"ready": all(checks.values()), "checks": checks, "degraded": _degraded(deps, checks)}
    warm = bundle is not None and svc.search_warm == bundle.index_version
    out |= {"dependencies": deps, "swaps": rec.swaps, "pid": os.getpid(), "search_warm": warm,
            "memory_lock": memory.status}  # fmt: skip
    if bundle is not None:
        out |= bundle.versions | {"encoder": bundle.encoder_name}
    if rec.last_refresh_error:
        out["last_refresh_error"] = rec.last_refresh_error
    return out


def _dependencies(rec, bundle) -> dict:
    """Every dependency's state, keyed by name in the order the report lists them: the three
    readiness checks first, then the supervised servers' statuses, the query encoder, the
    ranker."""
    deps = {
        "index": {"ok": bundle is not None, **(bundle.versions if bundle else {})},
        "feature_store": {
            "ok": _ping(rec.features),
            "breaker": rec.breakers["feature_store"].status(),
        },
    }
    # each status read once: in a worker, Triton's is a file the parent writes
    health = {name: status() for name, status in rec.health.items()}
    deps |= {"user_tower": _tower(rec, bundle, health.get("triton")), **health}
    deps["query_encoder"] = _query_encoder(rec, bundle)
    deps["ranker"] = _ranker(rec, bundle)
    return deps


def _degraded(deps: dict, checks: dict) -> list[str]:
    """What answers are degraded by, a reason per dependency that is down or whose model runs
    in this process because its server does not answer (the report's `degraded`)."""
    return [reason for reason, on in (
        ("feature_store_unavailable", not checks["feature_store"]),
        ("user_tower_in_process", checks["user_tower"] and not deps["user_tower"]["server_ok"]),
        ("user_tower_unavailable", not checks["user_tower"]),
        ("query_encoder_in_process", not deps["query_encoder"]["server_ok"]),
        ("ranker_in_process", not deps["ranker"]["server_ok"]),
    ) if on]  # fmt: skip


def _tower(rec, bundle, server: dict | None) -> dict:
    """The user tower: its server is trusted while the breaker is closed and (for a Triton the
    service supervises, `server` its status) the server runs; the in-process fallback covers
    the rest."""
    breaker = rec.breakers["user_tower"].status()
    server_ok = breaker["state"] == "closed" and (server is None or server["state"] == "running")
    fallback = bundle is not None and bundle.tower.fallback is not None
    return {
        "ok": bundle is not None and (server_ok or fallback),
        "server_ok": server_ok,
        "encoder": bundle.encoder_name if bundle else None,
        "fallback": "onnxruntime in-process" if fallback else None,
        "breaker": breaker,
    }


def _query_encoder(rec, bundle) -> dict:
    """Creator search's query encoder: on the tower's server (Triton's second model) while its
    breaker is closed, else in this process, as it always is without a server. Not a
    readiness check: recommendations do not need it, and search answers without it."""
    breaker = rec.breakers["query_encoder"].status()
    on_server = bundle is not None and bundle.tower.query_name is not None
    return {
        "server_ok": not on_server or breaker["state"] == "closed",
        "encoder": bundle.tower.query_name if on_server else "onnxruntime in-process",
        "breaker": breaker,
    }


def _ranker(rec, bundle) -> dict:
    """The rank stage: the served version's ranker (on Triton while its breaker is closed,
    else in this process), or none (the towers' order: no ranking store configured, or none
    trained for this version). Not a readiness check: the towers' order is still an answer."""
    breaker = rec.breakers["ranker"].status()
    ranker = bundle.tower.ranker if bundle is not None else None
    if ranker is None or rec.rank.candidates == 0:
        why = "no rank store configured" if rec.rank.candidates == 0 else "none for this version"
        return {"server_ok": True, "model": None, "order": f"the towers' ({why})"}
    chosen = ranker.manifest.get("chosen", {})
    return {
        "server_ok": ranker.fallback is None or breaker["state"] == "closed",
        "model": ranker.name,
        "chosen": chosen.get("chosen"),
        "candidates": rec.rank.candidates,
        "trained_on": ranker.manifest.get("candidates"),
        "breaker": breaker,
    }


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}, OPENMETRICS: {}},
                     "description": "Prometheus text, or OpenMetrics (with exemplars) when "
                     "the Accept header asks for it"}},
)  # fmt: skip
def prometheus(svc: ServicesDep, accept: str | None = Header(None)) -> Response:
    svc.metrics.dependencies(readiness(svc))
    body, content_type = svc.metrics.exposition(accept)
    return Response(body, headers={"Content-Type": content_type})


def _ping(features) -> bool:
    try:
        return bool(features.ping())
    except Exception:
        return False
