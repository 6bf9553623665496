"""`/versions`, `/compare`, `/compare/sample`: two published versions side by side, the second
loaded on demand with its tower in-process, for one fan and over a fixed sample."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.api.app import create_app
from serving.api.compare import CompareResponse, SampleResponse
from serving.features.embedded import EmbeddedStore
from serving.pipeline.recommender import Recommender
from serving.pipeline.towers import InProcessTowers


@pytest.fixture(scope="module")
def two(store_root, features_dir, tiny_data, tmp_path_factory):
    """A store with the tiny model's version and a second model's (another seed), the first
    served: (client, recommender, first, second)."""
    from index import rebuild
    from tests.index.conftest import index_config, train_tiny

    root = tmp_path_factory.mktemp("compare") / "store"
    shutil.copytree(store_root, root)
    rec = Recommender(root, EmbeddedStore.open(features_dir), InProcessTowers())
    assert rec.refresh()
    first = rec.bundle.index_version
    run = train_tiny(tiny_data, tmp_path_factory.mktemp("run2"), epochs=1, seed=7, workers=0)
    result = rebuild.run(index_config(root, run, tiny_data, map_points=0))
    assert result.status == "published", result.summary
    with TestClient(create_app(rec, poll_seconds=None)) as client:
        yield client, rec, first, result.version


def test_versions_lists_both_and_the_served_one(two):
    client, _, first, second = two
    body = client.get("/versions").json()
    assert body["served"] == first
    assert [v["index_version"] for v in body["versions"]] == [first, second]
    assert all(0 < v["recall"] <= 1 for v in body["versions"])


def test_one_fan_side_by_side_matches_each_versions_own_answer(two, fans):
    client, rec, first, second = two
    r = client.post("/compare", json={"user_id": fans[0], "a": first, "b": second, "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert CompareResponse.model_validate(body).model_dump() == body
    a = [i["creator_id"] for i in body["a"]["items"]]
    b = [i["creator_id"] for i in body["b"]["items"]]
    served = client.post("/recommend", json={"user_id": fans[0], "k": 10}).json()
    assert a == [i["creator_id"] for i in served["items"]]  # a is the served version
    assert body["b"]["index_version"] == second and body["b"]["source"] == "model"
    # b is the second version's own tower and index, straight
    other = rec.versions.get(second)
    f = rec.features.lookup([fans[0]])
    inputs = f.inputs(other.num_creators)
    q = other.tower.encode({k: np.ascontiguousarray(inputs[k]) for k in other.tower.inputs})[0]
    scores = np.asarray(other.embeddings @ q)
    scores[other.rows(f.followed[0])] = -np.inf
    exact = {str(other.index.creator_id[i]) for i in np.argsort(-scores)[:10]}
    assert len(exact & set(b)) >= 8
    assert body["overlap"] == len(set(a) & set(b)) / 10
    ranks = {c["creator_id"]: (c["rank_a"], c["rank_b"]) for c in body["changes"]}
    assert set(ranks) == set(a) | set(b)
    assert all(ranks[c][0] == i + 1 for i, c in enumerate(a))
    # b defaults to the version before a
    again = client.post("/compare", json={"user_id": fans[0], "a": second, "k": 10}).json()
    assert again["b"]["index_version"] == first


def test_a_fixed_sample_summarises_the_change(two):
    client, _, first, second = two
    ask = {"a": first, "b": second, "k": 10, "fans": 30, "seed": 3}
    body = client.post("/compare/sample", json=ask).json()
    assert SampleResponse.model_validate(body).model_dump() == body
    assert body["fans"] == 30 and 0 <= body["mean_overlap"] < 1 and body["share_changed"] > 0
    assert body["popularity"]["a"] > 0 and body["popularity"]["b"] > 0
    again = client.post("/compare/sample", json=ask).json()
    assert {k: v for k, v in again.items() if k != "took_ms"} == {
        k: v for k, v in body.items() if k != "took_ms"
    }  # the same fans, the same figures
    same = client.post("/compare/sample", json={**ask, "b": first}).json()
    assert same["mean_overlap"] == 1.0 and same["share_changed"] == 0.0


def test_an_unknown_version_is_a_404_naming_the_published_ones(two, fans):
    client, _, first, _ = two
    r = client.post("/compare", json={"user_id": fans[0], "a": "v99999-nope"})
    assert r.status_code == 404 and first in r.json()["detail"]
