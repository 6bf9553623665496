"""`POST /what-if`: the fan as stored gets /recommend's list; an edited history gets the list
the real tower gives for that history; the reasons are leave-one-out score differences of the
same tower; bad input is a 4xx naming the value."""

from __future__ import annotations

import numpy as np
import pytest

from data.contract import history_row, user_inputs
from serving.api.whatif import WhatIfResponse
from tests.serving.conftest import documented, ids


def ask(client, **body) -> dict:
    return documented(client.post("/what-if", json=body), WhatIfResponse)


def encode(rec, user_idx: int, trained: bool, history: list[int], attributes) -> np.ndarray:
    """The tower's vector for one fan, straight from the version's ONNX."""
    b = rec.bundle
    n = rec.features.manifest["history_len"]
    inputs = user_inputs(
        np.array([user_idx]), np.array([trained]), history_row(history, n)[None, :],
        np.asarray(attributes)[None, :], b.num_creators,
    )  # fmt: skip
    return b.tower.encode({k: np.ascontiguousarray(inputs[k]) for k in b.tower.inputs})[0]


def test_the_fan_as_stored_gets_the_recommend_list(service, fans):
    client, _ = service
    for fan in fans[:5]:
        rec_list = client.post("/recommend", json={"user_id": fan, "k": 10}).json()
        body = ask(client, user_id=fan, k=10)
        assert ids(body) == [i["creator_id"] for i in rec_list["items"]]
        assert body["source"] == "model" and body["history"]
        assert body["index_version"] == rec_list["index_version"]


def test_an_edited_history_gets_the_towers_list_for_it(service, fans):
    """Remove the newest history creator: the list is exact search (ANN here; recall checked)
    over the tower's vector for the edited history, without what the fan still follows."""
    client, rec = service
    b = rec.bundle
    hits = total = 0
    for fan in fans[:10]:
        before = ask(client, user_id=fan, k=10, why=0)
        edited = before["history"][:-1]
        after = ask(client, user_id=fan, history=edited, k=10, why=0)
        assert after["history"] == edited
        p = rec.profile(fan)
        idx, _ = b.vocabulary(edited)
        q = encode(rec, p.user_idx, p.trained, idx.tolist(), p.attributes)
        scores = np.asarray(b.embeddings @ q)
        kept = set(p.followed.tolist()) - {int(b.vocabulary([before["history"][-1]])[0][0])}
        scores[b.rows(np.asarray(sorted(kept | set(idx.tolist())), np.int64))] = -np.inf
        exact = {str(b.index.creator_id[i]) for i in np.argsort(-scores)[:10]}
        hits += len(exact & set(ids(after)))
        total += 10
    assert hits / total >= 0.9, f"what-if against exact search: recall {hits / total:.3f}"


def test_reasons_are_leave_one_out_differences_of_the_tower(service, fans):
    client, rec = service
    b = rec.bundle
    fan = fans[1]
    body = ask(client, user_id=fan, k=5, why=20)
    p = rec.profile(fan)
    history = p.items().tolist()
    full = encode(rec, p.user_idx, p.trained, history, p.attributes)
    for item in body["items"]:
        e = np.asarray(b.embeddings[b.row_of[item["creator_id"]]])
        assert item["score"] == pytest.approx(float(full @ e), abs=1e-4)
        assert len(item["why"]) == min(20, len(history))
        for reason in item["why"]:
            j = body["history"].index(reason["creator_id"])
            alone = encode(rec, p.user_idx, p.trained, history[:j] + history[j + 1 :],
                           p.attributes)  # fmt: skip
            assert reason["contribution"] == pytest.approx(float((full - alone) @ e), abs=1e-4)
        shown = [r["contribution"] for r in item["why"]]
        assert shown == sorted(shown, reverse=True)


def test_an_invented_fan_starts_cold_and_a_history_makes_it_personal(service, fans):
    client, _ = service
    cold = ask(client, k=5)
    assert (cold["source"], cold["cold_start"], cold["history"]) == ("popular", True, [])
    some = ask(client, user_id=fans[2], k=5)["history"][-3:]
    warm = ask(client, history=some, k=5)
    assert warm["source"] == "model" and warm["history"] == some
    assert not set(ids(warm)) & set(some)  # what the invented fan follows is not offered
    assert all(i["why"] for i in warm["items"])


def test_bad_input_names_the_value(service, fans):
    client, _ = service
    r = client.post("/what-if", json={"user_id": fans[0], "history": ["cr_nope", "x" * 100]})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert [d["loc"] for d in detail] == [["body", "history", 0], ["body", "history", 1]]
    assert detail[0]["input"] == "cr_nope" and "not in the served index" in detail[0]["msg"]
    assert len(detail[1]["input"]) < 100  # a short prefix, never the value whole
    r = client.post("/what-if", json={"user_id": fans[0], "why": 99})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "why"]
    assert client.post("/what-if", json={"history": ["a"] * 1001}).status_code == 422


def test_creators_are_labelled_from_the_catalog(service, tiny_data):
    import pyarrow.parquet as pq

    from data import tables

    client, rec = service
    known = list(rec.bundle.row_of)[:3]
    r = client.post("/creators", json={"ids": [*known, "cr_not_there"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["index_version"] == rec.bundle.index_version
    t = pq.read_table(tiny_data / tables.CREATORS).to_pylist()
    catalog = {row["creator_id"]: row for row in t}
    for c in body["creators"][:3]:
        row = catalog[c["creator_id"]]
        assert c["indexed"] and (c["name"], c["category"]) == (row["name"], row["category"])
        assert c["popularity"] == row["train_count"]
    assert body["creators"][3] == {
        "creator_id": "cr_not_there", "indexed": False, "name": None, "category": None,
        "popularity": None,
    }  # fmt: skip
    assert client.post("/creators", json={"ids": ["a"] * 1001}).status_code == 422


def test_the_map_is_served_as_columns_and_places_any_creator(service):
    client, rec = service
    b = rec.bundle
    body = client.get("/map").json()
    n = body["points"]
    assert n == b.creator_map["row"].size > 0
    assert all(len(body[c]) == n for c in ("creator_id", "name", "category", "x", "y"))
    assert max(body["category"]) < len(body["categories"])
    on_map = body["creator_id"][:3]
    placed = client.post("/map/place", json={"ids": [*on_map, "cr_nope"]}).json()
    got = {c["creator_id"]: c for c in placed["creators"]}
    assert "cr_nope" not in got
    for i, c in enumerate(on_map):
        assert got[c]["on_map"] and (got[c]["x"], got[c]["y"]) == pytest.approx(
            (body["x"][i], body["y"][i]), abs=1e-3
        )


def test_a_creator_off_the_map_sits_at_its_nearest_neighbour_on_it(service):
    """The tiny catalog is all on its map: keep the first 100 points, place the others."""
    import copy

    _, rec = service
    b = copy.copy(rec.bundle)
    full = rec.bundle.creator_map
    part = {k: v[:100] for k, v in full.items() if k != "at"}
    part["at"] = {int(r): i for i, r in enumerate(part["row"])}
    b.__dict__["creator_map"] = part  # the cached property, replaced on the copy only
    rows = full["row"][100:110]
    xy, on_map = b.place(rows)
    sample = np.asarray(b.embeddings[part["row"]])
    nearest = np.argmax(np.asarray(b.embeddings[rows]) @ sample.T, axis=1)
    assert not on_map.any()
    assert np.allclose(xy, np.stack([part["x"][nearest], part["y"][nearest]], axis=1))
    xy, on_map = b.place(part["row"][:5])
    assert on_map.all() and np.allclose(xy[:, 0], part["x"][:5])


def test_a_creators_audience_is_the_category_mix_of_the_fans_it_is_recommended_to(service):
    from collections import Counter

    from serving.pipeline.versions import sample_fans

    client, rec = service
    b = rec.bundle
    fans = sample_fans(b.index.manifest["catalog"]["data_dir"], 50, seed=0)
    tops = {f: ids(client.post("/recommend", json={"user_id": f, "k": 5}).json()) for f in fans}
    creator = Counter(c for top in tops.values() for c in top).most_common(1)[0][0]
    r = client.get(f"/creators/{creator}/audience", params={"k": 5, "fans": 50})
    assert r.status_code == 200, r.text
    body = r.json()
    got = [f for f, top in tops.items() if creator in top]
    assert body["fans"] == 50 and body["recommended_to"] == len(got) > 0
    category = b.catalog["category"]
    expected = Counter()
    for f in got:
        history = b.rows(rec.features.lookup([f]).history[0])
        for cat, n in Counter(str(category[r]) for r in history).items():
            expected[cat] += n / len(history) / len(got)
    assert {c: round(v, 6) for c, v in body["mix"].items() if v} == {
        c: round(v, 6) for c, v in expected.items()
    }
    assert sum(body["overall"].values()) == pytest.approx(1.0)
    assert client.get("/creators/cr_nope/audience").status_code == 404


def test_fans_of_a_creator_are_found_newest_first(service, tiny_data):
    import pyarrow.parquet as pq

    from data import tables

    client, rec = service
    pairs = pq.read_table(tiny_data / tables.TRAIN).to_pylist()
    users = {
        r["user_idx"]: r["user_id"] for r in pq.read_table(tiny_data / tables.USERS).to_pylist()
    }
    creator = next(iter(rec.bundle.row_of))
    idx = int(rec.bundle.vocabulary([creator])[0][0])
    newest: dict[str, int] = {}
    for p in pairs:
        if p["creator_idx"] == idx:
            u = users[p["user_idx"]]
            newest[u] = max(newest.get(u, p["ts"]), p["ts"])
    expected = sorted(newest, key=lambda u: -newest[u])
    body = client.get(f"/creators/{creator}/fans", params={"limit": 1000}).json()
    assert body["total"] == len(expected) > 0
    assert sorted(body["fans"]) == sorted(expected)
    times = [newest[u] for u in body["fans"]]
    assert times == sorted(times, reverse=True)
    assert len(client.get(f"/creators/{creator}/fans", params={"limit": 2}).json()["fans"]) == 2
    assert client.get("/creators/cr_nope/fans").status_code == 404


def test_history_says_since_when_the_fan_follows_each_creator(service, fans, tiny_data):
    import pyarrow.parquet as pq

    from data import tables

    client, rec = service
    fan = fans[6]
    pairs = pq.read_table(tiny_data / tables.TRAIN).to_pylist()
    users = {
        r["user_id"]: r["user_idx"] for r in pq.read_table(tiny_data / tables.USERS).to_pylist()
    }
    newest: dict[int, int] = {}
    for p in pairs:
        if p["user_idx"] == users[fan]:
            newest[p["creator_idx"]] = max(p["ts"], newest.get(p["creator_idx"], p["ts"]))
    body = ask(client, user_id=fan, k=5, why=0)
    idx, _ = rec.bundle.vocabulary(body["history"])
    assert body["since"] == [newest[int(c)] for c in idx] and body["since"]
    added = ids(body)[0]  # a creator the fan does not follow, added here: no date
    edited = ask(client, user_id=fan, history=[*body["history"], added], k=5, why=0)
    assert edited["since"] == [*body["since"], None]
    assert ask(client, history=[added], k=5, why=0)["since"] == [None]  # a fan nobody knows
