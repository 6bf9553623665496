"""Creator search's labelled query sets (search.queries) and their evaluation (search.evaluation):
the noise a fan makes, the Last.fm tag hold-out that keeps topical queries out of the indexed
text, disjoint seeded halves, personal queries that never use a training pair, and the whole
evaluation on the tiny published version."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data import manifest as data_manifest
from data import tables
from data.sources.public import LastFmSource, tag_held_out
from index import store
from search import queries as qs
from search.engine import Engine, SearchSettings
from search.lexical import Lexical
from tests.conftest import datasets_root

# --- noise ---


def test_a_typo_is_one_slip():
    rng = np.random.default_rng(0)
    for word in ("inkwell", "synthwave", "ab"):
        cut = range(1, len(word))
        slips = {word[:j] + word[j + 1 :] for j in cut}  # dropped
        slips |= {word[: j - 1] + word[j] + word[j - 1] + word[j + 1 :] for j in cut}  # swapped
        slips |= {word[:j] + "x" + word[j + 1 :] for j in cut}  # replaced
        made = {qs.typo(word, rng) for _ in range(100)}
        assert made <= slips and len(made) > 2


def test_noise_kinds_and_determinism():
    name = "Clara Inkwell Draws Daily"
    made = Counter()
    for seed in range(200):
        a, b = (qs.noisy(name, np.random.default_rng(seed)) for _ in range(2))
        assert a == b  # by seed
        words = a.split()
        if a == qs.case_accents(name):
            made["case"] += 1
            assert a == "CLÁRÁ INKWÉLL DRÁWS DÁILY"
        elif len(words) == 3:
            made["dropped"] += 1
            assert set(words) < set(name.split())
        elif words[:3] == name.split()[:3] and words[3] == "Dai":
            made["prefix"] += 1
        else:
            made["typo"] += 1
            diff = [(w, x) for w, x in zip(words, name.split(), strict=True) if w != x]
            assert len(diff) == 1 and diff[0][1] == "Inkwell"  # the longest word
    assert set(made) == {"case", "dropped", "prefix", "typo"}


def test_navigational_relevance_is_every_creator_with_that_name(catalog):
    nav = qs.navigational(catalog, n=50, seed=1)
    assert len(nav) == 50 and nav.ids == qs.navigational(catalog, n=50, seed=1).ids
    for rows in nav.relevant:
        names = {catalog.name[r] for r in rows}
        assert len(names) == 1
        assert set(rows) == set(np.flatnonzero(catalog.name == names.pop()).tolist())


def test_navigational_targets_follow_their_weights(catalog):
    """Targets drawn by weight: rows weighted 0 are never drawn, and a set as large as the
    weighted rows takes each of them once; uniform draws are unchanged by the option."""
    named = np.flatnonzero([bool(x and x.strip()) for x in catalog.name])
    weights = np.zeros(len(catalog.name))
    weights[named[:7]] = np.arange(1, 8)
    nav = qs.navigational(catalog, n=50, seed=2, weights=weights)
    assert sorted(nav.ids) == sorted(f"nav-{r}" for r in named[:7])
    uniform = np.sort(np.random.default_rng([2, 1]).choice(named, 20, replace=False))
    assert qs.navigational(catalog, n=20, seed=2).ids == [f"nav-{r}" for r in uniform]
    fans = qs.audience(catalog)
    assert fans.shape == (len(catalog.creator_idx),) and fans.sum() > 0 and fans.min() >= 0


# --- the Last.fm tag hold-out ---


def write_lastfm(folder: Path) -> Path:
    """Ten taggers, two artists; tag 3 ('secret') only ever given by held-out users."""
    held = [u for u in map(str, range(2, 40)) if tag_held_out(u, 0.5)][:3]
    kept = [u for u in map(str, range(2, 40)) if not tag_held_out(u, 0.5)][:3]
    lines = [f"{u}\t51\t1\t1\t4\t2009" for u in kept + held]
    lines += [f"{u}\t52\t2\t1\t4\t2009" for u in kept] + [f"{u}\t51\t3\t1\t4\t2009" for u in held]
    lines += [f"{u}\t52\t3\t1\t4\t2009" for u in held]
    files = {
        "user_artists.dat": "userID\tartistID\tweight\n2\t51\t10\n3\t52\t7\n",
        "artists.dat": "id\tname\turl\tpictureURL\n51\tBjörk\tu\tp\n52\tSigur Rós\tu\tp\n",
        "tags.dat": "tagID\ttagValue\n1\tindie\n2\tpost-rock\n3\tsecret\n",
        "user_taggedartists.dat": "userID\tartistID\ttagID\tday\tmonth\tyear\n"
        + "\n".join(lines) + "\n",
    }  # fmt: skip
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_the_hold_out_splits_tag_assignments_by_user(tmp_path):
    folder = write_lastfm(tmp_path / "lastfm")
    source = LastFmSource(folder, tag_holdout=0.5)
    indexed, names = source.tag_assignments(held_out=False)
    held, _ = source.tag_assignments(held_out=True)
    assert len(indexed) + len(held) == len(LastFmSource(folder).tag_assignments()[0])
    assert not {u for u, _, _ in indexed} & {u for u, _, _ in held}
    assert {names[t] for _, _, t in held} == {"indie", "secret"}
    creators = {r["creator_id"]: r for r in source.creators().to_pylist()}
    text = json.dumps(creators)
    assert "secret" not in text  # in neither tags, category nor description
    assert creators["51"]["tags"] == ["indie"] and creators["52"]["tags"] == ["post-rock"]
    without = {r["creator_id"]: r for r in LastFmSource(folder).creators().to_pylist()}
    assert "secret" in without["51"]["tags"]  # off by default: nothing else changes


def test_topical_queries_are_held_out_tags_with_support(tmp_path):
    folder = write_lastfm(tmp_path / "lastfm")
    data = tmp_path / "data"
    data.mkdir()
    source = {"kind": "lastfm", "path": str(folder), "tag_holdout": 0.5}
    (data / "manifest.json").write_text(json.dumps(prepared(source)))
    ids = np.array(["51", "52"], dtype=object)
    cat = qs.Catalog(data, np.array([2, 3]), ids, ids, ids, np.array([[], []], dtype=object))
    top = qs.topical(cat, min_support=2)
    assert top.text == ["secret"] and top.relevant == [[0, 1]]
    assert qs.topical(cat, min_support=1).text == ["indie", "secret"]
    source["tag_holdout"] = 0.0
    (data / "manifest.json").write_text(json.dumps(prepared(source)))
    with pytest.raises(ValueError, match="tag hold-out"):
        qs.topical(cat)


def prepared(source: dict) -> dict:
    """The part of a prepared dataset's manifest the topical set reads."""
    return {"kind": data_manifest.KIND, "config": {"source": source}}


def test_no_held_out_assignment_reaches_the_real_catalog():
    folder = datasets_root() / "lastfm-hetrec2011-2k"
    if not folder.exists():
        pytest.skip(f"Last.fm HetRec not found at {folder}")
    source = LastFmSource(folder, tag_holdout=0.5)
    indexed, names = source.tag_assignments(held_out=False)
    given = {(a, names.get(t)) for _, a, t in indexed}
    for r in source.creators().to_pylist():
        assert all((r["creator_id"], t) in given for t in r["tags"] or [])


# --- halves and personal queries ---


def test_halves_are_disjoint_and_seeded(catalog):
    nav = qs.navigational(catalog, n=60, seed=0)
    a, b = nav.split(seed=3)
    assert len(a) == len(b) == 30 and not set(a.ids) & set(b.ids)
    assert set(a.ids) | set(b.ids) == set(nav.ids)
    assert a.ids == nav.split(seed=3)[0].ids and a.ids != nav.split(seed=4)[0].ids
    assert [a.text[i] for i in range(3)] == [nav.text[nav.ids.index(q)] for q in a.ids[:3]]


def test_personal_queries_never_use_a_training_pair(catalog):
    fan = qs.personal(catalog, n=40, seed=0)
    assert len(fan) == 40
    users = pq.read_table(catalog.data_dir / tables.USERS, columns=["user_idx", "user_id"])
    idx_of = dict(zip(users["user_id"].to_pylist(), users["user_idx"].to_pylist(), strict=True))
    train = pq.read_table(catalog.data_dir / tables.TRAIN, columns=["user_idx", "creator_idx"])
    trained: dict[int, set[int]] = {}
    for u, c in zip(*(train[n].to_pylist() for n in ("user_idx", "creator_idx")), strict=True):
        trained.setdefault(u, set()).add(c)
    for q, text, rel, user, ex in zip(fan.ids, fan.text, fan.relevant, fan.fans, fan.exclude,
                                      strict=True):  # fmt: skip
        mine = trained.get(idx_of[user], set())
        assert not {int(catalog.creator_idx[r]) for r in rel} & mine
        assert {int(catalog.creator_idx[r]) for r in ex} == mine & set(catalog.creator_idx)
        target = int(q.rsplit("-", 1)[1])
        assert target in rel and text in qs._topics(catalog, target)


# --- the evaluation end to end ---


def test_evaluation_on_the_tiny_version(published, catalog):
    from search import evaluation as ev

    folder = store.versions_dir(published.store) / store.current_version(published.store)
    embeddings = np.load(folder / store.EMBEDDINGS, allow_pickle=False)
    engine = Engine(Lexical(folder / store.LEXICAL), None, embeddings)
    nav = qs.navigational(catalog, n=40, seed=0)
    fan = qs.personal(catalog, n=20, seed=0)
    vectors = [embeddings[r[0]] for r in fan.relevant]  # a fan who is exactly the target
    nav_lists, fan_lists = ev.collect(engine, nav, 50), ev.collect(engine, fan, 50, vectors)
    lexical = ev.single(nav_lists, "lexical", 10, nav.exclude)
    scores = ev.evaluate(nav, lexical, ["mrr@10", "hit_rate@1"])
    assert 0.5 < scores["mrr@10"] <= 1 and scores["hit_rate@1"] <= scores["mrr@10"]
    sets = [(nav, nav_lists, False), (fan, fan_lists, True)]
    chosen, objective, tried = ev.choose("weighted", sets, 50)
    assert len(tried) == len(ev.PERSONAL_WEIGHTS) and list(objective) == max(
        t["objective"] for t in tried)  # fmt: skip
    # each set counts as its ratio to its best single retriever: names have lexical alone here
    assert all(t["sets"]["navigational"] == 1.0 for t in tried)
    assert objective[0] == min(objective[:2])  # the worst set first (leximin)
    # a route per set: each set gets the best of every setting for it alone
    routes = {"name": [np.ones(len(nav), bool), np.zeros(len(fan), bool)],
              "fan topic": [np.zeros(len(nav), bool), np.ones(len(fan), bool)]}  # fmt: skip
    picked, _, ratios = ev.choose_routes(sets, 50, routes)
    assert set(picked) == {"name", "fan topic"} and ratios["navigational"] == 1.0
    assert ratios["personal"] >= max(t["sets"]["personal"] for t in tried)
    assert isinstance(chosen, SearchSettings) and chosen.method == "weighted"
    with_fan = ev.fused(fan_lists, chosen, 10, True, fan.exclude)
    without = ev.fused(fan_lists, chosen, 10, False, fan.exclude)
    assert all(not set(r) & set(ex) for r, ex in zip(with_fan, fan.exclude, strict=True))
    report = ev.compare(fan, ("with", with_fan), ("without", without), "mrr@10")
    assert report["a_score"] >= report["b_score"] and 0 <= report["p_value"] <= 1
