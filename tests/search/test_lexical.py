"""The lexical retriever against a brute-force BM25 on a tiny catalog: the same scores
(tantivy's BM25: k1 1.2, b 0.75, summed over fields, the whole name and the name's trigrams),
the same order; case, accents and a typo in a name still find it; an exact name comes first; a
query with no word finds nothing."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.tables import CREATORS
from index import lexical as built
from search.lexical import Lexical

K1, B = 1.2, 0.75
CATALOG = [  # creator_idx, name, category, tags, description
    (2, "Clara Inkwell", "comics", ["watercolor", "comics"], "Watercolor comics every week."),
    (3, "Café Noël", "music", ["synthwave"], "Synthwave mixes from a café in Lyon."),
    (4, "The Ink Academy", "education", ["drawing", "ink"], "Lessons in ink drawing."),
    (5, "Synthwave Sunday", "music", ["synthwave", "retro"], "Retro synthwave, every Sunday."),
    (6, "Paper Moon Comics", "comics", [], "Comics about the moon, on paper."),
    (7, "Lyon Eats", "food", ["cooking", "lyon"], "Food from Lyon."),
]


def build(root: Path, catalog: list[tuple]) -> Lexical:
    names = ("creator_idx", "name", "category", "tags", "description")
    columns = {n: [c[i] for c in catalog] for i, n in enumerate(names)}
    (root / CREATORS).parent.mkdir(parents=True)
    pq.write_table(pa.table(columns), root / CREATORS)
    creator_idx = np.array([c[0] for c in catalog], np.int64)
    record = built.build(root, creator_idx, root / "lexical")
    assert record["creators"] == len(catalog)
    return Lexical(root / "lexical")


@pytest.fixture(scope="module")
def lexical(tmp_path_factory):
    return build(tmp_path_factory.mktemp("lexical"), CATALOG)


def fields(row: int) -> dict[str, list[str]]:
    _, name, category, tags, description = CATALOG[row]
    return {"name": built.tokens(name), "category": built.tokens(category),
            "tags": built.tokens(" ".join(tags)), "description": built.tokens(description),
            built.GRAMS: built.trigrams(name), built.WHOLE: [built.whole_name(name)]}  # fmt: skip


def brute_force(query: str, grams: str = "every") -> np.ndarray:
    """BM25 of every creator for the query, by the book, summed over (field, term) pairs (the
    trigrams of every word, or of the words no name holds: `grams`="unknown")."""
    docs = [fields(r) for r in range(len(CATALOG))]
    terms = [(f, w) for w in built.tokens(query) for f in built.FIELDS]
    terms += [(built.WHOLE, built.whole_name(query))]
    typed = [w for w in built.tokens(query)
             if grams == "every" or not any(w in d["name"] for d in docs)]  # fmt: skip
    terms += [(built.GRAMS, g) for g in built.trigrams(" ".join(typed))]
    n, scores = len(docs), np.zeros(len(docs))
    for field, term in terms:
        df = sum(term in d[field] for d in docs)
        if not df:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        avg = sum(len(d[field]) for d in docs) / n
        for r, d in enumerate(docs):
            tf = Counter(d[field])[term]
            length = len(d[field])
            scores[r] += idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * length / avg)) if tf else 0
    return scores


QUERIES = ["watercolor comics", "synthwave", "lyon", "ink", "clara inkwel", "LYON EATS", "The Ink"]


@pytest.mark.parametrize("query", QUERIES)
def test_scores_are_bm25_by_the_book(lexical, query):
    rows, scores = lexical.search(query, k=len(CATALOG))
    expected = brute_force(query)
    assert set(rows.tolist()) == set(np.flatnonzero(expected > 0).tolist())
    assert np.allclose(scores, expected[rows], rtol=1e-4)
    assert np.all(np.diff(scores) <= 1e-6)  # best first


@pytest.mark.parametrize("query", QUERIES)
def test_only_words_no_name_holds_ask_for_trigrams(lexical, query):
    rows, scores = lexical.search(query, k=len(CATALOG), grams="unknown")
    expected = brute_force(query, grams="unknown")
    assert set(rows.tolist()) == set(np.flatnonzero(expected > 0).tolist())
    assert np.allclose(scores, expected[rows], rtol=1e-4)


def test_a_typo_still_finds_the_name_by_its_trigrams_alone(lexical):
    assert lexical.unknown(["clara", "inkwel", "synthwave"]) == ["inkwel"]
    assert lexical.search("inkwel", k=1, grams="unknown")[0].tolist() == [0]
    assert lexical.search("synthwav sunday", k=1, grams="unknown")[0].tolist() == [3]
    # a word a name holds is matched as itself: fewer terms, other scores than every trigram
    assert not np.allclose(brute_force("lyon", "unknown"), brute_force("lyon"))


@pytest.mark.parametrize(
    "query, creator",
    [("CAFE NOEL", 1), ("café noël", 1), ("clara inkwel", 0), ("Clara Inkwell", 0),
     ("synthwave sun", 3), ("paper moon", 4)],
)  # fmt: skip
def test_case_accents_typos_and_prefixes_find_the_name(lexical, query, creator):
    rows, _ = lexical.search(query, k=1)
    assert rows.tolist() == [creator]


def test_an_exact_name_comes_before_shorter_names_holding_its_words(tmp_path):
    # BM25's length norm alone ranks the shorter names first (seen on the 1 M set)
    kitchen = [(2, "Sunday Skillet Kitchen 25", "food", ["cooking"], ""),
               (3, "The Sunday Skillet Kitchen 25", "food", ["cooking"], ""),
               (4, "Sunday Skillet Kitchen", "food", ["cooking"], "")]  # fmt: skip
    lexical = build(tmp_path, kitchen)
    assert lexical.search("THÉ SUNDÁY SKILLÉT KITCHÉN 25", k=3)[0].tolist()[0] == 1
    assert lexical.search("sunday skillet kitchen", k=3)[0].tolist()[0] == 2


@pytest.mark.parametrize("query", ["", "   ", "!!! ???", "\u200f\u202e"])
def test_a_query_with_no_word_finds_nothing(lexical, query):
    rows, scores = lexical.search(query, k=5)
    assert len(rows) == len(scores) == 0


def test_the_rebuild_publishes_a_lexical_index_of_the_versions_creators(published):
    import pyarrow.parquet as pq

    from index import store

    m = store.read_manifest(published.store)
    folder = store.versions_dir(published.store) / m["version"]
    assert m["lexical"]["creators"] == m["count"]
    assert any(name.startswith(f"{store.LEXICAL}/") for name in m["files"])  # checksummed
    ids = pq.read_table(folder / store.CREATORS).column("creator_id").to_pylist()
    catalog = pq.read_table(Path(m["catalog"]["data_dir"]) / CREATORS).to_pylist()
    named = {c["creator_id"]: c["name"] for c in catalog if c["name"]}
    lexical = Lexical(folder / store.LEXICAL)
    for row in (0, len(ids) // 2, len(ids) - 1):
        found, _ = lexical.search(named[ids[row]], k=20)
        same = {r for r, i in enumerate(ids) if named.get(i) == named[ids[row]]}
        assert found[0] in same  # the exact name comes first (or a namesake)


def test_a_version_built_before_search_is_rebuilt(published):
    from index import rebuild, store

    m = store.read_manifest(published.store)
    inputs = rebuild.detect(published)
    assert rebuild.stale_reason(m, inputs) is None
    before = {k: v for k, v in m.items() if k not in ("lexical", "suggest")}
    assert "built before creator search" in rebuild.stale_reason(before, inputs)
    no_whole = {**m, "lexical": {**m["lexical"], "fields": [*built.FIELDS, built.GRAMS]}}
    assert "no whole-name field" in rebuild.stale_reason(no_whole, inputs)
