"""The rank stage served: the version's ranker re-orders the towers' top N by features computed
online from the feature store, answers the same on Triton as in-process (which scores as the
trees it was exported from: tests/ranking/test_ranker.py), and degrades stage by stage."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ranking import store as ranking_store
from ranking.features import FEATURES, features
from ranking.ranker import INPUT, OnnxRanker
from serving.api.app import create_app
from serving.api.schemas import RecommendResponse
from serving.features.embedded import EmbeddedStore
from serving.pipeline.bundle import version_number
from serving.pipeline.recommender import Recommender
from serving.pipeline.stages import (
    RANKER_IN_PROCESS,
    RANKER_UNAVAILABLE,
    Rank,
    Request,
    rank_inputs,
)
from serving.pipeline.towers import InProcessTowers
from serving.triton.repository import RANKER_MODEL_NAME
from tests.serving.conftest import on_local_triton

N = 50


@pytest.fixture(scope="module")
def ranked(store_root, features_dir, rank_store):
    rec = Recommender(store_root, EmbeddedStore.open(features_dir),
                      InProcessTowers(rank_store=rank_store), rank=Rank(N))  # fmt: skip
    assert rec.refresh() and rec.bundle.tower.ranker is not None
    return rec


def offline_order(rec, batch, j: int, model: OnnxRanker):
    """Model request j's candidates scored as training computes features (the window's rows
    for the fan, not the feature store's): (features, order)."""
    b, i = rec.bundle, batch.model[j]
    rows, scores = batch.candidates[j]
    user = batch.features.user_idx[[i]]
    x = features(b.tower.ranker.window, user, b.index.creator_idx[rows][None], scores[None])
    return x, np.argsort(-model.score(x)[0], kind="stable")


def test_the_ranker_orders_the_towers_top_n_by_features_computed_online(ranked, rank_store, fans):
    folder = ranking_store.find(rank_store, ranked.bundle.index_version)
    model = OnnxRanker(folder / ranking_store.RANKER)
    batch = ranked.pipeline.run([Request(f, 10) for f in fans[:8]], ranked.bundle)
    window = ranked.bundle.tower.ranker.window
    assert window.als is not None  # the factors the ranker was trained with, loaded beside it
    online, lengths = rank_inputs(batch, window)
    assert (online[..., FEATURES.index("als_score")] != 0).any()
    moved = 0
    for j, i in enumerate(batch.model):
        assert lengths[j] == N  # the towers retrieved N for the ranker, not k
        x, order = offline_order(ranked, batch, j, model)
        np.testing.assert_allclose(online[j], x[0], atol=1e-5)
        answer, ids = batch.answers[i], ranked.bundle.index.creator_id
        assert answer.creator_ids == [str(ids[r]) for r in batch.candidates[j][0][order[:10]]]
        assert answer.before == (order[:10] + 1).tolist() and answer.degraded is None
        moved += answer.before != list(range(1, 11))
    assert moved > 0  # the ranker changed some fan's list


def test_without_a_ranker_for_the_version_the_towers_order_is_served(store_root, features_dir,
                                                                    fans, tmp_path):  # fmt: skip
    rec = Recommender(store_root, EmbeddedStore.open(features_dir),
                      InProcessTowers(rank_store=tmp_path / "empty"), rank=Rank(N))  # fmt: skip
    rec.refresh()
    plain = Recommender(store_root, EmbeddedStore.open(features_dir), InProcessTowers())
    plain.refresh()
    for fan in fans[:3]:
        a, _ = rec.recommend(fan, 10)
        b, _ = plain.recommend(fan, 10)
        assert a.creator_ids == b.creator_ids and a.before is None


def test_a_ranker_trained_on_other_features_is_not_served(store_root, features_dir, rank_store,
                                                          fans, tmp_path):  # fmt: skip
    """A ranker's columns mean what its manifest lists: one trained before a feature was added
    (or after one was removed) would read the wrong columns, so the towers' order is served."""
    import json
    import shutil

    shutil.copytree(rank_store, tmp_path / "ranks")
    for manifest in (tmp_path / "ranks").glob("*/manifest.json"):
        m = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**m, "features": m["features"][:-1]}))
    rec = Recommender(store_root, EmbeddedStore.open(features_dir),
                      InProcessTowers(rank_store=tmp_path / "ranks"), rank=Rank(N))  # fmt: skip
    assert rec.refresh() and rec.bundle.tower.ranker is None
    answer, _ = rec.recommend(fans[0], 10)
    assert answer.before is None and answer.creator_ids


def test_a_failing_ranker_server_falls_back_in_process_then_to_the_towers_order(ranked, fans):
    ranker, requests = ranked.bundle.tower.ranker, [Request(f, 10) for f in fans[:4]]
    want = ranked.pipeline.run(requests, ranked.bundle).answers

    def down(_inputs):
        raise TimeoutError("the ranker's server did not answer")

    real_score, real_fallback = ranker.score, ranker.fallback
    try:
        ranker.score, ranker.fallback = down, real_score
        got = ranked.pipeline.run(requests, ranked.bundle).answers
        assert [a.creator_ids for a in got] == [a.creator_ids for a in want]
        assert {a.degraded for a in got} == {RANKER_IN_PROCESS}
        ranker.fallback = down
        got = ranked.pipeline.run(requests, ranked.bundle).answers
        assert {a.degraded for a in got} == {RANKER_UNAVAILABLE}
        assert all(a.before is None and a.source == "model" for a in got)
        assert all(a.scores == sorted(a.scores, reverse=True) for a in got)  # towers' order
    finally:
        ranker.score, ranker.fallback = real_score, real_fallback
        ranked.breakers["ranker"].success()  # closed again for the tests after this one


def test_the_ranker_on_triton_scores_as_in_process_and_is_reported(
    store_root, features_dir, rank_store, ranked, fans, tmp_path_factory
):
    tmp = tmp_path_factory.mktemp("ranker-triton")
    with on_local_triton(store_root, tmp, timeout_s=2.0) as (root, triton, towers):
        towers.rank_store = rank_store
        rec = Recommender(root, EmbeddedStore.open(features_dir), towers, rank=Rank(N))
        assert rec.refresh()
        number = version_number(rec.bundle.index_version)
        assert triton.model_ready(RANKER_MODEL_NAME, number)
        ranker = rec.bundle.tower.ranker
        assert ranker.name.endswith(f"{RANKER_MODEL_NAME}/{number}")
        batch = rec.pipeline.run([Request(f, 10) for f in fans[:6]], rec.bundle)
        x, _ = rank_inputs(batch, ranker.window)
        np.testing.assert_allclose(ranker.score({INPUT: x}), ranker.fallback({INPUT: x}),
                                   atol=1e-5)  # fmt: skip
        local = ranked.pipeline.run([Request(f, 10) for f in fans[:6]], ranked.bundle)
        assert [a.creator_ids for a in batch.answers] == [a.creator_ids for a in local.answers]
        assert {a.degraded for a in batch.answers} == {None}
        with TestClient(create_app(rec, poll_seconds=None)) as client:
            body = client.post("/recommend", json={"user_id": fans[0], "k": 5}).json()
            RecommendResponse.model_validate(body)
            assert [i.get("before") for i in body["items"]] == batch.answers[0].before[:5]
            ready = client.get("/readyz").json()
            assert ready["dependencies"]["ranker"]["model"] == ranker.name
            assert "ranker_in_process" not in ready["degraded"]


def served_figures(rec, fans, **trade_offs) -> dict:
    """ILD and calibration KL (ranking.diversity) of the lists served to `fans`."""
    from ranking import diversity

    b = rec.bundle
    codes, count = b.category_codes
    vectors = np.asarray(b.embeddings, np.float32)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    batch = rec.pipeline.run([Request(f, 10, (), **trade_offs) for f in fans], b)
    lists = [np.asarray([b.row_of[c] for c in a.creator_ids]) for a in batch.answers]
    histories = [diversity.history_mix(codes[b.rows(np.asarray(f, np.int64))], count)
                 for f in batch.features.followed]  # fmt: skip
    return diversity.list_figures(lists, vectors, codes, histories, len(codes))


def test_the_trade_offs_move_the_served_lists_as_asked_and_bad_ones_are_refused(ranked, fans):
    plain = served_figures(ranked, fans[:20])
    diverse = served_figures(ranked, fans[:20], mmr=0.6)
    calibrated = served_figures(ranked, fans[:20], calibration=0.9)
    assert diverse["intra_list_diversity"] > plain["intra_list_diversity"]
    assert calibrated["calibration_kl"] < plain["calibration_kl"]
    answer = ranked.pipeline.run([Request(fans[0], 10, (), 0.6)], ranked.bundle).answers[0]
    assert answer.before is not None and len(answer.creator_ids) == 10
    with TestClient(create_app(ranked, poll_seconds=None)) as client:
        for body, named in (({"mmr": 0.5, "calibration": 0.5}, "set one of them to 0"),
                            ({"mmr": 1.5}, "mmr")):  # fmt: skip
            r = client.post("/recommend", json={"user_id": fans[0], "k": 5, **body})
            assert r.status_code == 422 and named in r.text
        r = client.post("/recommend", json={"user_id": fans[0], "k": 5, "calibration": 0.9})
        assert r.status_code == 200 and all("before" in i for i in r.json()["items"])


def test_rank_explains_where_each_creator_stood_and_what_moved_it(ranked, fans):

    with TestClient(create_app(ranked, poll_seconds=None)) as client:
        body = client.post(
            "/rank", json={"user_id": fans[1], "k": 10, "features": len(FEATURES)}
        ).json()
        answer = ranked.pipeline.run([Request(fans[1], 10)], ranked.bundle).answers[0]
        assert [i["creator_id"] for i in body["items"]] == answer.creator_ids
        assert [i["before"] for i in body["items"]] == answer.before
        assert [i["after"] for i in body["items"]] == list(range(1, 11))
        assert body["explained"] and body["candidates"] == N and body["chosen"] == "lambdarank"
        # TreeSHAP: two creators' score gap is the gap of their features' shares
        a, b = body["items"][0], body["items"][-1]
        assert {m["feature"] for m in a["moved_by"]} == set(FEATURES)
        gap = sum(m["contribution"] for m in a["moved_by"]) - sum(
            m["contribution"] for m in b["moved_by"]
        )
        assert gap == pytest.approx(a["rank_score"] - b["rank_score"], abs=1e-3)
        live = client.post("/rank", json={"user_id": fans[1], "k": 10, "calibration": 0.9})
        assert live.json()["calibration"] == 0.9 and len(live.json()["items"][0]["moved_by"]) == 3
        cold = client.post("/rank", json={"user_id": "nobody-we-know", "k": 5}).json()
        assert cold["items"] == [] and cold["source"] == "popular"
        bad = client.post("/rank", json={"user_id": fans[1], "mmr": 0.5, "calibration": 0.5})
        assert bad.status_code == 422 and "set one of them to 0" in bad.text
