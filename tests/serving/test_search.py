"""`GET /search`: the served version's retrievers fused as the config says, every item with its
rank in each retriever's list; a fan adds the personal retriever (the user tower's score); bad
input is a clear 422, never a 5xx."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from search import fusion
from search.engine import SearchSettings
from serving.api.search import MAX_QUERY, SearchResponse
from tests.serving.conftest import documented, ids


def ask(client, **params) -> dict:
    return documented(client.get("/search", params=params), SearchResponse)


def test_a_name_finds_its_creator_first_with_each_retrievers_rank(service):
    client, rec = service
    b = rec.bundle
    row = int(b.popular[3])
    name = str(b.catalog["name"][row])
    body = ask(client, q=name, k=10)
    assert body["retrievers"] == ["lexical", "semantic"]  # no fan: nothing personal
    namesakes = {str(b.index.creator_id[r]) for r in range(len(b.row_of))
                 if b.catalog["name"][r] == name}  # fmt: skip
    assert body["items"][0]["creator_id"] in namesakes
    assert body["items"][0]["ranks"]["lexical"] <= len(namesakes)
    assert body["index_version"] == b.index_version and body["fusion"]["method"] == "rrf"
    assert body["fusion"]["reading"] == "words" and body["fusion"]["query"] == "name"


def test_the_answer_is_the_fusion_of_the_retrievers_lists(service, fans):
    client, rec = service
    b = rec.bundle
    for user in (None, fans[0]):
        vector, why = (None, None) if user is None else rec.user_vector(user, b)
        assert why is None
        lists = b.search.candidates("comics music", 100, vector, near=SearchSettings().near)
        fused = fusion.rrf(lists, 60.0, {"lexical": 1.0, "semantic": 1.0, "personal": 1.0})
        body = ask(client, q="comics music", k=10, **({"user_id": user} if user else {}))
        assert ids(body) == [str(b.index.creator_id[r]) for r, _ in fused[:10]]
        assert np.allclose([i["score"] for i in body["items"]], [s for _, s in fused[:10]])
        assert body["fusion"]["query"] == ("fan topic" if user else "topic")  # which route
    assert "personal" in body["retrievers"]
    # the personal list ranks every candidate by the user tower's score
    rows, scores = lists["personal"]
    assert np.allclose(scores, np.asarray(b.embeddings[rows]) @ vector, atol=1e-5)
    assert np.all(np.diff(scores) <= 1e-6)


def test_the_configs_grams_ask_the_lexical_retriever(service):
    # trigrams only for words no name holds: the served lists are the engine's with that way
    from fastapi.testclient import TestClient

    from serving.api.app import create_app

    _, rec = service
    b, q = rec.bundle, "comics musc"
    settings = SearchSettings(grams="unknown")
    lists = b.search.candidates(q, 100, grams="unknown")
    assert b.search.lexical.unknown(["comics", "musc"]) == ["musc"]
    fused = fusion.rrf(lists, 60.0, settings.weights)
    app = create_app(rec, poll_seconds=None, search_settings=settings)
    with TestClient(app) as client:
        body = ask(client, q=q, k=10)
    assert body["fusion"]["grams"] == "unknown"
    assert ids(body) == [str(b.index.creator_id[r]) for r, _ in fused[:10]]
    assert lists["lexical"][0].tolist() != b.search.candidates(q, 100)["lexical"][0].tolist()


def test_a_weighted_popularity_prior_takes_part_and_says_its_rank(service):
    # the served prior: the text lists' candidates by the catalog's training counts, fused only
    # where the config weights it, its rank beside the retrievers' on every item it holds
    from fastapi.testclient import TestClient

    from search.engine import PRIOR
    from serving.api.app import create_app

    _, rec = service
    b, q = rec.bundle, "comics music"
    settings = SearchSettings("rrf", 5.0, {"lexical": 1.0, "semantic": 0.1, PRIOR: 0.5})
    lists = b.search.with_prior(b.search.candidates(q, 100))
    counts = b.catalog["train_count"]
    assert np.all(np.diff(counts[lists[PRIOR][0]]) <= 0)  # most followed first
    fused = fusion.rrf(lists, 5.0, settings.weights)
    app = create_app(rec, poll_seconds=None, search_settings=settings)
    with TestClient(app) as client:
        body = ask(client, q=q, k=10)
    assert body["retrievers"] == ["lexical", "semantic"] and body["fusion"]["weights"][PRIOR] == 0.5
    assert ids(body) == [str(b.index.creator_id[r]) for r, _ in fused[:10]]
    assert all(PRIOR in item["ranks"] for item in body["items"])


def test_read_by_slips_or_fit_a_typo_of_a_name_takes_the_name_route(service):
    from fastapi.testclient import TestClient

    from serving.api.app import create_app

    _, rec = service
    topics = rec.bundle.search.topics
    only = sorted(w for w, i in topics.vocabulary.items() if topics.name_only[i] and len(w) > 5)
    # two letters swapped mid-word: most of its trigrams still find the name ("fit" asks)
    typo = next(
        t for w in only for t in [w[:3] + w[4] + w[3] + w[5:]] if t not in topics.vocabulary
    )
    for reading, route in (("words", "topic"), ("slips", "name"), ("fit", "name")):
        settings = SearchSettings(reading=reading)
        app = create_app(rec, poll_seconds=None, search_settings=settings)
        with TestClient(app) as client:
            body = ask(client, q=typo, k=5)
        assert body["fusion"]["reading"] == reading and body["fusion"]["query"] == route, typo


def test_a_version_is_warmed_with_fans_searches_before_readyz_says_so(service):
    # a fresh process's first searches paid for untouched code and pages (up to 290 ms on the
    # 1 M set): the service asks them itself, and /readyz tells a load test when it is done
    import time

    client, rec = service
    deadline = time.monotonic() + 60
    while not (ready := client.get("/readyz").json())["search_warm"]:
        assert time.monotonic() < deadline, "search never warmed"
        time.sleep(0.2)
    version = rec.bundle.index_version
    assert client.app.state.services.search_warm == version == ready["index_version"]
    assert ready["memory_lock"]["locked"] is False  # the config did not ask (serving.memory)


def test_a_fan_nobody_knows_searches_without_the_personal_retriever(service):
    client, _ = service
    body = ask(client, q="comics", user_id="u_never_seen_before")
    assert body["cold_start"] and body["degraded"] is None
    assert "personal" not in body["retrievers"]


def test_excluded_creators_never_come_back(service):
    client, _ = service
    first = ids(ask(client, q="comics", k=5))
    again = ids(ask(client, q="comics", k=5, exclude=first[:2]))
    assert not set(first[:2]) & set(again) and again[:3] == first[2:5]


@pytest.mark.parametrize("q", ["   ", "🙂🙂🙂", "\x00\x01", "!!!"])
def test_a_query_with_no_word_is_a_422_saying_what_to_type(service, q):
    client, _ = service
    r = client.get("/search", params={"q": q})
    assert r.status_code == 422 and "q has no letter or digit" in r.json()["detail"]


def test_bad_input_is_a_422_naming_the_parameter(service):
    client, _ = service
    cases = [({}, "q"), ({"q": "x" * 10_000}, "q"), ({"q": "x" * (MAX_QUERY + 1)}, "q"),
             ({"q": "a", "k": 0}, "k"), ({"q": "a", "k": 101}, "k"),
             ({"q": "a", "user_id": "bad id!"}, "user_id")]  # fmt: skip
    for params, field in cases:
        r = client.get("/search", params=params)
        assert r.status_code == 422 and field in str(r.json()["detail"][0]["loc"]), params


def test_right_to_left_and_mixed_scripts_get_an_answer(service):
    client, _ = service
    for q in ("שלום עולם", "مرحبا comics", "COMICS\u200f"):
        assert ask(client, q=q)["items"] is not None  # 200: found or not, never a 5xx


def test_a_newly_published_version_answers_from_its_own_retrievers(
    store_root, features_dir, tiny_data, tmp_path
):
    """A version of another model published and swapped in: /search answers from it alone,
    its personal scores from its own embeddings, its retrievers read from its own folder."""
    import shutil

    from fastapi.testclient import TestClient

    from index import rebuild
    from serving.api.app import create_app
    from serving.features.embedded import EmbeddedStore
    from serving.pipeline.recommender import Recommender
    from serving.pipeline.towers import InProcessTowers
    from tests.index.conftest import index_config, train_tiny

    root = tmp_path / "store"
    shutil.copytree(store_root, root)
    rec = Recommender(root, EmbeddedStore.open(features_dir), InProcessTowers())
    assert rec.refresh()
    old = rec.bundle
    run = train_tiny(tiny_data, tmp_path / "run", epochs=1, seed=11, workers=0)
    assert rebuild.run(index_config(root, run, tiny_data, map_points=0)).status == "published"
    assert rec.refresh()
    new = rec.bundle
    assert new.index_version != old.index_version and new.model_version != old.model_version
    assert Path(new.search.lexical.folder).parent == new.index.folder
    assert Path(new.search.semantic.folder) == new.index.folder
    fan = next(iter(sample(new)))
    with TestClient(create_app(rec, poll_seconds=None)) as client:
        body = ask(client, q="comics", k=5, user_id=fan)
    assert body["index_version"] == new.index_version
    vector, _ = rec.user_vector(fan, new)
    lists = new.search.candidates("comics", 100, vector)
    assert ids(body) == [str(new.index.creator_id[r]) for r, _ in fusion.rrf(lists)[:5]]
    rows, scores = lists["personal"]
    assert np.allclose(scores, np.asarray(new.embeddings[rows]) @ vector, atol=1e-5)
    assert not np.allclose(np.asarray(old.embeddings[rows]) @ vector, scores, atol=1e-3)


def sample(bundle) -> list[str]:
    from serving.pipeline.versions import sample_fans

    return list(sample_fans(bundle.index.manifest["catalog"]["data_dir"], 3, seed=1))


def test_each_search_stage_is_timed_in_the_metrics(service, fans):
    # /search's time per stage (the fan's and the query's vectors, beside lexical; then
    # semantic, personal, fusion) shows where a slow search spends it
    client, _ = service

    def counts() -> dict[str, float]:
        text = client.get("/metrics").text
        out = {}
        for line in text.splitlines():
            if line.startswith(
                ("towerline_stage_seconds_count", "towerline_request_seconds_count")
            ):
                name, value = line.rsplit(" ", 1)
                out[name.split('"')[1]] = float(value)
        return out

    before = counts()
    ask(client, q="comics music", k=5, user_id=fans[1])
    after = counts()
    stages = ("search_lexical", "search_query_vector", "search_semantic", "search_fan_vector",
              "search_personal", "search_fuse", "search")  # fmt: skip
    for stage in stages:
        assert after[stage] == before.get(stage, 0.0) + 1, stage
