"""`GET /versions/{v}/health`: the model's evaluations as training recorded them (kept in the
checkpoint, carried into the index manifest), the index's tuning against exact search,
coverage and popularity of what the version recommends to the fixed fan sample, which match
/recommend's own lists for those fans, and the drift the rebuild measured against the version
it replaced, each figure beside the limit it was judged against."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index import store
from serving.api.app import create_app
from serving.api.version_health import HealthResponse
from serving.features.embedded import EmbeddedStore
from serving.pipeline.recommender import Recommender
from serving.pipeline.towers import InProcessTowers
from serving.pipeline.versions import sample_fans

LIMITS = {"max_cosine_shift": 2.0, "min_list_overlap": 1.0, "max_popularity_shift": None}
"""Past a limit of 1 for a second model's list overlap, inside the widest cosine shift; the
popularity shift not checked."""


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


@pytest.fixture(scope="module")
def drifted(published, features_dir, tiny_data, tmp_path_factory):
    """A store whose first version was replaced by a second model's (another seed), published
    past a drift limit with --allow_drift true and served: (client, recommender, first)."""
    from index import rebuild
    from tests.index.conftest import index_config, train_tiny

    root = tmp_path_factory.mktemp("drifted") / "store"
    shutil.copytree(published.store, root)  # store_root may hold more versions by now
    first = store.current_version(root)
    run = train_tiny(tiny_data, tmp_path_factory.mktemp("run2"), epochs=1, seed=7, workers=0)
    cfg = index_config(root, run, tiny_data, map_points=0, drift=LIMITS, allow_drift=True)
    result = rebuild.run(cfg)
    assert result.status == "published", result.summary
    rec = Recommender(root, EmbeddedStore.open(features_dir), InProcessTowers())
    assert rec.refresh() and rec.bundle.index_version == result.version
    with TestClient(create_app(rec, poll_seconds=None)) as client:
        yield client, rec, first


def test_a_first_version_says_it_has_no_drift(service):
    client, rec = service
    d = health(client, rec.bundle.index_version, k=5, fans=30)["drift"]
    assert not d["measured"] and "no current version to compare with" in d["reason"]
    assert (d["against"], d["forced"], d["figures"]) == (None, False, [])


def test_drift_shows_each_figure_its_limit_and_the_rebuilds_verdict(drifted):
    client, rec, first = drifted
    b = rec.bundle
    body = health(client, b.index_version, k=5, fans=30)
    d = body["drift"]
    assert body["served"] and d["measured"] and d["against"] == first and d["k"] == 10
    folder = store.versions_dir(rec.index_root) / b.index_version
    recorded = json.loads((folder / "drift.json").read_text())["figures"]
    shown = {f["figure"]: f for f in d["figures"]}
    assert set(shown) == {"cosine_shift", "cosine_shift_unaligned", "neighbour_overlap",
                          "list_overlap", "rank_correlation", "popularity_shift",
                          "two_sample_auc"}  # fmt: skip
    assert {k: f["value"] for k, f in shown.items()} == {k: recorded[k] for k in shown}
    assert d["context"]["fans"] == recorded["fans"] > 0
    assert d["context"]["creators_joined"] == len(b.row_of)

    lists, shift = shown["list_overlap"], shown["cosine_shift"]
    assert 0 <= lists["value"] < 1  # another model: some list changed
    assert (lists["threshold"], lists["limit"], lists["kind"], lists["ok"]) == (
        "min_list_overlap", 1.0, "min", False)  # fmt: skip
    assert (shift["limit"], shift["kind"], shift["ok"]) == (2.0, "max", True)
    assert shown["popularity_shift"]["limit"] is None and shown["popularity_shift"]["ok"] is None
    unaligned = shown["cosine_shift_unaligned"]
    assert unaligned["value"] >= shift["value"]  # the rotation only takes shift out
    assert (unaligned["threshold"], unaligned["limit"], unaligned["ok"]) == (None, None, None)
    # the verdicts are the rebuild's: its breaches, recorded in the manifest
    assert [x["figure"] for x in b.index.manifest["drift"]["breaches"]] == ["list_overlap"]
    assert d["forced"] is True and d["report"] == "drift.html"
