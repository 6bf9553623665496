"""The personal retriever's own candidates: the fan's nearest creators (the recommendation
index) whose name, category or tags hold one of the query's words (search.topics), checked
against a brute-force reading of the catalog."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from index import store
from index.lexical import tokens
from index.projection import catalog_columns
from search.engine import Engine
from search.lexical import Lexical
from search.topics import Topics


@pytest.fixture(scope="module")
def version(published):
    index = store.load(published.store)
    data_dir = Path(index.manifest["catalog"]["data_dir"])
    topics = Topics(data_dir, index.creator_idx)
    embeddings = np.load(index.folder / store.EMBEDDINGS, allow_pickle=False)
    cols = catalog_columns(data_dir, index.creator_idx, {"name": "", "category": "", "tags": []})
    fields = zip(cols["name"], cols["category"], cols["tags"], strict=True)
    words = [set(tokens(n)) | set(tokens(c)) | set(tokens(" ".join(t))) for n, c, t in fields]
    return index, topics, embeddings, words


def test_matching_is_the_catalogs_words(version):
    index, topics, _, words = version
    rows = np.arange(len(index.creator_idx))[::-1]  # any order, repeats allowed
    rows = np.concatenate([rows, rows[:5]])
    for query in ("comics", "MUSIC Podcasts", "nothing-like-it", "Ünïcode comics"):
        want = [bool(set(tokens(query)) & words[r]) for r in rows]
        assert topics.matching(rows, query).tolist() == want, query
    assert topics.matching(np.zeros(0, np.int64), "comics").shape == (0,)


def test_the_personal_list_adds_the_fans_nearest_creators_the_query_describes(version):
    index, topics, embeddings, words = version
    engine = Engine(Lexical(index.folder / store.LEXICAL), None, embeddings, index.index, topics)
    fan = embeddings[7] / np.linalg.norm(embeddings[7])
    query = "comics"
    alone = engine.candidates(query, 2, fan)  # near 0: the lexical list's two, re-ranked
    assert set(alone["personal"][0]) == set(alone["lexical"][0])
    lists = engine.candidates(query, 50, fan, near=len(embeddings))
    scores = embeddings @ fan
    described = [r for r in range(len(words)) if "comics" in words[r]]
    expected = sorted(set(described) | set(lists["lexical"][0].tolist()),
                      key=lambda r: (-scores[r], r))[:50]  # fmt: skip
    assert lists["personal"][0].tolist() == expected
    assert np.allclose(lists["personal"][1], scores[expected], atol=1e-5)


def name_and_topic_words(index):
    """The catalog's columns, the words its names use and those its categories and tags use."""
    cols = catalog_columns(Path(index.manifest["catalog"]["data_dir"]), index.creator_idx,
                           {"name": "", "category": "", "tags": []})  # fmt: skip
    in_names = {w for n in cols["name"] for w in tokens(n)}
    topical = {w for c, t in zip(cols["category"], cols["tags"], strict=True)
               for w in tokens(c) + tokens(" ".join(t))}  # fmt: skip
    return cols, in_names, topical


def test_a_query_reads_as_a_name_when_it_uses_a_word_only_names_use(version):
    index, topics, embeddings, _ = version
    _, in_names, topical = name_and_topic_words(index)
    only = sorted(in_names - topical)
    assert only and topical, "the tiny catalog has both kinds of words"
    engine = Engine(Lexical(index.folder / store.LEXICAL), None, embeddings, index.index, topics)
    topic = sorted(topical)[0]
    for query, name_like in ((only[0].upper(), True), (f"{topic} {only[-1]}", True),
                             (topic, False), ("zzqx unknown", False), ("!!", False)):  # fmt: skip
        assert topics.reads_as_name(query) is name_like, query
        assert engine.reads_as_name(query) is name_like
    assert Engine(engine.lexical, None, embeddings).reads_as_name(only[0]) is False


def test_a_name_like_query_is_fused_by_the_name_setting():
    from search.engine import SearchSettings

    lean = {"method": "weighted", "weights": {"lexical": 1.0, "personal": 0.25}}
    s = SearchSettings("rrf", 20.0, {"lexical": 1.0, "personal": 2.0}, names=lean)
    assert s.for_query(False) is s
    name = s.for_query(True)
    assert (name.method, name.c, name.weights, name.names) == (
        "weighted", 20.0, {"lexical": 1.0, "personal": 0.25}, None)  # fmt: skip
    assert SearchSettings().for_query(True) == SearchSettings()
    with pytest.raises(ValueError, match="it takes method, c, weights"):
        SearchSettings(names={"k": 3})
    with pytest.raises(ValueError, match="use rrf or weighted"):
        SearchSettings(names={"method": "max"})


def test_a_topic_asked_by_a_fan_is_fused_by_the_fan_setting():
    from search.engine import SearchSettings

    lean = {"method": "rrf", "c": 5.0, "weights": {"lexical": 1.0, "personal": 0.25}}
    fan = {"weights": {"lexical": 1.0, "semantic": 0.5, "personal": 4.0}}
    s = SearchSettings("weighted", 20.0, {"lexical": 1.0, "semantic": 2.0}, names=lean, fans=fan)
    assert s.for_query(False) is s and s.for_query(False, with_fan=False) is s
    topic = s.for_query(False, with_fan=True)
    assert (topic.method, topic.c, topic.weights, topic.names, topic.fans) == (
        "weighted", 20.0, fan["weights"], None, None)  # fmt: skip
    assert s.for_query(True, with_fan=True).weights == lean["weights"]  # a name wins the route
    routes = [SearchSettings.route(n, f) for n, f in ((True, True), (False, True), (False, False))]
    assert routes == ["name", "fan topic", "topic"]
    with pytest.raises(ValueError, match=r"search.fans has \['k'\]"):
        SearchSettings(fans={"k": 3})
    with pytest.raises(ValueError, match="use rrf or weighted"):
        SearchSettings(fans={"method": "max"})
    with pytest.raises(ValueError, match=r"search.grams='some'"):
        SearchSettings(grams="some")
    with pytest.raises(ValueError, match=r"search.reading='guess'"):
        SearchSettings(reading="guess")


def test_one_slip_is_every_word_a_finger_slip_away():
    from search.topics import one_slip

    near = one_slip("ab")
    assert {"a", "b", "ba", "xb", "ax", "abc", "cab", "acb"} <= near and "ab" not in near
    assert all(abs(len(w) - 2) <= 1 for w in near)
    assert one_slip("") == set("abcdefghijklmnopqrstuvwxyz0123456789")  # a letter added


def test_read_by_slips_a_whole_name_or_a_slip_of_a_names_word_reads_as_a_name(version):
    from search.topics import one_slip

    index, topics, embeddings, _ = version
    cols, in_names, topical = name_and_topic_words(index)
    only = sorted(w for w in in_names - topical if len(w) > 3)
    # a slip of a word only names use, which no creator's text holds: a name
    slip = next(s for w in only for s in [w[0] + w[2] + w[1] + w[3:]] if s not in topics.vocabulary)
    assert topics.reads_as_name(slip, reading="slips") and not topics.reads_as_name(slip)
    # a slip of a topic's word: still a topic
    slipped = [w[:-1] + "q" for w in sorted(topical - in_names) if len(w) > 3 and w[-1] != "q"]
    names_near = lambda s: {x for x in one_slip(s) if x in in_names - topical}  # noqa: E731
    slipped = next(s for s in slipped if s not in topics.vocabulary and not names_near(s))
    assert not topics.reads_as_name(slipped, reading="slips")
    # a creator's whole name made only of topic words reads as a name with slips only
    # a creator's whole name reads as a name even when every word is a topic's too: as if
    # no word were the names' own (the tiny catalog has no such name)
    shared = copy.copy(topics)
    shared.name_only = np.zeros_like(topics.name_only)
    whole = next(n for n in cols["name"] if len(tokens(n)) > 1)
    assert shared.reads_as_name(whole.upper(), reading="slips")
    assert not shared.reads_as_name(whole) and not shared.reads_as_name(tokens(whole)[0], "slips")
    engine = Engine(Lexical(index.folder / store.LEXICAL), None, embeddings, index.index, topics)
    assert engine.reads_as_name(slip, "slips") and not engine.reads_as_name(slip)


def test_one_apart_is_one_slip():
    from search.topics import one_apart, one_slip

    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcx"), n)) for n in rng.integers(0, 6, 300)]
    for a in words:
        near = one_slip(a)
        for b in [*words[:60], *sorted(near)[::7]]:
            assert one_apart(a, b) == (b in near), (a, b)


def test_fits_is_a_word_its_start_or_either_one_slip_away():
    from search.topics import fits

    assert fits("ink", "inkwell") and fits("inkwel", "inkwell") and fits("inkwelll", "inkwell")
    assert fits("ikn", "inkwell") and fits("nikwell", "inkwell") and fits("inkwxll", "inkwell")
    assert not fits("inkxxll", "inkwell") and not fits("well", "inkwell")
    assert not fits("xn", "inkwell") and fits("in", "inkwell")  # a slip needs 3 letters


def test_read_by_fit_a_typo_reads_as_the_name_the_lexical_retriever_puts_first(version):
    from search.topics import fits

    index, topics, embeddings, _ = version
    cols, _, _ = name_and_topic_words(index)
    shared = copy.copy(topics)  # every name word a topic's too: the words rule says topic
    shared.name_only = np.zeros_like(topics.name_only)
    row = next(r for r, n in enumerate(cols["name"]) if len(tokens(n)) > 1
               and len(tokens(n)[-1]) > 4)  # fmt: skip
    words = tokens(cols["name"][row])
    last = words[-1]
    typo = " ".join([*words[:-1], last[0] + last[2] + last[1] + last[3:]])
    assert typo.split()[-1] not in topics.vocabulary
    other = next(r for r, n in enumerate(cols["name"])
                 if not all(any(fits(w, v) for v in tokens(n)) for w in tokens(typo)))  # fmt: skip
    assert shared.reads_as_name(typo, "fit", first=row)
    assert not shared.reads_as_name(typo, "fit", first=other)  # the first creator must fit
    assert not shared.reads_as_name(typo, "fit") and not shared.reads_as_name(typo)
    assert not shared.reads_as_name(" ".join(words), "fit", first=row)  # spelt right: words'
    assert list(shared.name(row)) == words
    engine = Engine(Lexical(index.folder / store.LEXICAL), None, embeddings, index.index, shared)
    assert engine.reads_as_name(typo, "fit")  # the lexical retriever asked for its first
    lists = {"lexical": (np.array([other]), np.array([1.0], np.float32))}
    assert not engine.reads_as_name(typo, "fit", lists)  # the query's own lists, when given
