"""`GET /versions/{v}/health`: the model's evaluations as training recorded them (kept in the
checkpoint, carried into the index manifest), the index's tuning against exact search, and
coverage and popularity of what the version recommends to the fixed fan sample, which match
/recommend's own lists for those fans."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from serving.api.version_health import HealthResponse
from serving.pipeline.versions import sample_fans


def health(client, version: str, **params) -> dict:
    r = client.get(f"/versions/{version}/health", params=params)
    assert r.status_code == 200, r.text
    out = r.json()
    assert HealthResponse.model_validate(out).model_dump() == out  # the documented shape
    return out


def test_training_keeps_its_evaluations_in_the_checkpoint(trained):
    # tests/index/conftest.py trains two epochs, evaluating after each on the tiny data's
    # validation split (test is read once, after the fit, on the kept epoch)
    assert [e["epoch"] for e in trained.evaluations] == [0, 1]
    assert all(type(e["epoch"]) is int and type(e["step"]) is int for e in trained.evaluations)
    assert all(e["split"] == "validation" and 0 <= e["recall@20"] <= 1
               for e in trained.evaluations)  # fmt: skip


def test_health_shows_training_search_and_what_is_recommended(service, trained):
    client, rec = service
    b = rec.bundle
    body = health(client, b.index_version, k=5, fans=30)
    assert body["served"] and body["index_version"] == b.index_version
    assert body["training"]["evaluations"] == trained.evaluations
    assert (body["training"]["checkpoint_epoch"], body["training"]["note"]) == (trained.epoch, None)
    tuning, search = b.index.manifest["tuning"], body["search"]
    assert (search["chosen"], search["curve"]) == (tuning["chosen"], tuning["curve"])

    # the sample's lists, asked of /recommend one fan at a time
    fans = sample_fans(b.index.manifest["catalog"]["data_dir"], 30, seed=0)
    slots = Counter(
        item["creator_id"]
        for fan in fans
        for item in client.post("/recommend", json={"user_id": fan, "k": 5}).json()["items"]
    )
    got = body["recommended"]
    assert (got["fans"], got["k"], got["slots"]) == (30, 5, sum(slots.values()))
    assert got["distinct"] == len(slots) and got["catalog"] == len(b.row_of)
    assert got["coverage"] == pytest.approx(len(slots) / len(b.row_of))
    popularity = {c: int(b.popularity[b.row_of[c]]) for c in slots}
    mean = sum(popularity[c] * n for c, n in slots.items()) / sum(slots.values())
    assert got["mean_popularity"] == pytest.approx(mean)
    bands = got["bands"]
    assert sum(x["catalog_share"] for x in bands) == pytest.approx(1.0)
    assert sum(x["recommended_share"] for x in bands) == pytest.approx(1.0)
    zero = sum(n for c, n in slots.items() if popularity[c] == 0) / sum(slots.values())
    assert bands[0]["label"] == "0" and bands[0]["recommended_share"] == pytest.approx(zero)
    assert np.mean(b.popularity == 0) == pytest.approx(bands[0]["catalog_share"])


def test_health_of_a_version_not_published_is_a_404_naming_it(service):
    client, _ = service
    r = client.get("/versions/v99999-nope/health")
    assert r.status_code == 404 and "v99999-nope" in r.json()["detail"]
    r = client.get("/versions/..%2Fetc/health")
    assert r.status_code in (404, 422)
    r = client.get("/versions/bad$name/health")
    assert r.status_code == 422 and "index_version" in r.text
