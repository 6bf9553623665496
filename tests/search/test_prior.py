"""The popularity prior: the text retrievers' candidates ordered by audience, checked against a
brute-force ordering; fused only where the settings weight it, so that of creators a query fits
alike the most followed comes first, and never holding a creator only the fan's list found."""

from __future__ import annotations

import numpy as np
import pytest

from index import store
from search import evaluation as ev
from search import queries as qs
from search.engine import PRIOR, Engine, SearchSettings
from search.lexical import Lexical


@pytest.fixture(scope="module")
def parts(published):
    folder = store.versions_dir(published.store) / store.current_version(published.store)
    embeddings = np.load(folder / store.EMBEDDINGS, allow_pickle=False)
    return Lexical(folder / store.LEXICAL), embeddings


def audience_of(n: int) -> np.ndarray:
    """Audiences with ties (rows 0, 1, 2 … get 5, 0, 5, 3, 0, 5 …): the order's ties go by row."""
    return np.array([5, 0, 5, 3, 0, 5] * (n // 6 + 1))[:n]


def test_the_prior_orders_the_text_candidates_by_audience(parts):
    lexical, embeddings = parts
    audience = audience_of(len(embeddings))
    engine = Engine(lexical, None, embeddings, audience=audience)
    fan = embeddings[3] / np.linalg.norm(embeddings[3])
    lists = engine.candidates("comics music", 20, fan, prior=True)
    assert list(lists) == ["lexical", "personal", PRIOR]  # the prior last: ties keep the rest's
    text = set(lists["lexical"][0].tolist())
    want = sorted(text, key=lambda r: (-audience[r], r))  # brute force: most followed, then row
    rows, scores = lists[PRIOR]
    assert rows.tolist() == want and np.allclose(scores, np.log1p(audience[want]))
    # the fan's own list never feeds the prior: a search asked without the fan may fuse it
    elsewhere = next(r for r in range(len(embeddings)) if r not in text)
    fans_only = {"lexical": lists["lexical"], "personal": (np.array([elsewhere]), np.ones(1))}
    assert elsewhere not in engine.with_prior(fans_only)[PRIOR][0].tolist()
    assert PRIOR not in Engine(lexical, None, embeddings).candidates("comics", 20, prior=True)


def test_a_weighted_prior_lifts_the_most_followed_as_worked_by_hand(parts):
    lexical, embeddings = parts
    rows = Engine(lexical, None, embeddings).candidates("comics", 50)["lexical"][0]
    assert len(rows) >= 5, "the tiny catalog has several creators a category word fits"
    audience = np.zeros(len(embeddings))
    audience[rows[4]] = 100  # lexical's fifth is the one fans follow
    engine = Engine(lexical, None, embeddings, audience=audience)
    hits, used = engine.search("comics", 5, SearchSettings("rrf", 5.0, {"lexical": 1.0}))
    assert [h.row for h in hits] == rows[:5].tolist() and PRIOR not in hits[0].ranks
    hits, used = engine.search(
        "comics", 5, SearchSettings("rrf", 5.0, {"lexical": 1.0, PRIOR: 2.0})
    )
    assert used == ["lexical"] and hits[0].row == rows[4] and hits[0].ranks[PRIOR] == 1
    # by hand: Σ w / (5 + rank), the prior weighing 2; its order: audience, then row
    prior_rank = {
        r: i + 1 for i, r in enumerate(sorted(rows.tolist(), key=lambda r: (-audience[r], r)))
    }
    score = {r: 1 / (5 + i + 1) + 2 / (5 + prior_rank[r]) for i, r in enumerate(rows.tolist())}
    want = sorted(score, key=lambda r: -score[r])[:5]
    assert [h.row for h in hits] == want
    assert [h.score for h in hits] == pytest.approx([score[r] for r in want])


def test_settings_take_the_prior_and_refuse_unknown_lists():
    SearchSettings(weights={"lexical": 1.0, PRIOR: 0.1}, names={"weights": {PRIOR: 0.5}})
    with pytest.raises(ValueError, match="the lists are"):
        SearchSettings(weights={"lexical": 1.0, "popular": 0.1})


def test_the_grid_tries_the_prior_where_the_lists_have_it(parts, catalog):
    lexical, embeddings = parts
    engine = Engine(lexical, None, embeddings, audience=qs.audience(catalog))
    nav = qs.navigational(catalog, n=30, seed=0, weights=qs.audience(catalog) + 1.0)
    assert nav.kind == qs.BY_AUDIENCE and qs.PRIMARY[nav.kind] == "mrr@10"
    lists = ev.collect(engine, nav, 50)
    assert all(PRIOR in ls for ls in lists)
    _, _, tried = ev.choose("rrf", [(nav, lists, False)], 50)
    assert len(tried) == len(ev.C_GRID) * len(ev.PRIOR_WEIGHTS)
    assert {t["weights"][PRIOR] for t in tried} == set(ev.PRIOR_WEIGHTS)
    # weight 0 is the fusion without the prior, and the prior is not a single retriever
    off = SearchSettings("rrf", 5.0, {"lexical": 1.0, PRIOR: 0.0})
    without = [{n: v for n, v in ls.items() if n != PRIOR} for ls in lists]
    assert ev.fused(lists, off, 10, False, nav.exclude) == ev.fused(without, off, 10, False,
                                                                    nav.exclude)  # fmt: skip
    assert ev.best_singles([(nav, lists, False)]) == ev.best_singles([(nav, without, False)])
    assert all(set(ls[PRIOR][0].tolist()) == set(ls["lexical"][0].tolist()) for ls in lists)
