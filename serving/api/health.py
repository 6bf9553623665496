"""`GET /healthz` (liveness), `GET /readyz` (readiness) and `GET /metrics` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

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
    """Ready to answer from the model: an index is loaded and the feature store answers."""
    rec = svc.recommender
    bundle = rec.bundle
    checks = {"index": bundle is not None, "feature_store": _ping(rec.features)}
    ok = all(checks.values())
    response.status_code = 200 if ok else 503
    out = {"ready": ok, "checks": checks, "swaps": rec.swaps}
    if bundle is not None:
        out |= bundle.versions | {"encoder": bundle.encoder_name}
    if rec.last_refresh_error:
        out["last_refresh_error"] = rec.last_refresh_error
    return out


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
def prometheus(svc: ServicesDep) -> Response:
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _ping(features) -> bool:
    try:
        return bool(features.ping())
    except Exception:
        return False
