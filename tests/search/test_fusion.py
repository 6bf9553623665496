"""Fusion against hand-worked examples: reciprocal-rank fusion adds w / (c + rank) over the
lists that hold a creator; weighted fusion adds w · min-max-normalised scores; ties keep the
first list's order; the per-retriever ranks say where each creator came from."""

from __future__ import annotations

import numpy as np
import pytest

from search.fusion import ranks, rrf, weighted

LEXICAL = (np.array([7, 3, 9]), np.array([12.0, 8.0, 2.0]))  # BM25
SEMANTIC = (np.array([3, 5]), np.array([0.9, 0.7]))  # cosine


def test_rrf_by_hand():
    # c = 60: 3 is 2nd and 1st → 1/62 + 1/61; 7 is 1st once → 1/61; 5 → 1/62; 9 → 1/63
    got = rrf({"lexical": LEXICAL, "semantic": SEMANTIC}, c=60)
    assert [r for r, _ in got] == [3, 7, 5, 9]
    assert got[0][1] == pytest.approx(1 / 62 + 1 / 61)
    assert got[1][1] == pytest.approx(1 / 61) and got[3][1] == pytest.approx(1 / 63)


def test_rrf_weights_and_constant():
    got = dict(rrf({"lexical": LEXICAL, "semantic": SEMANTIC}, c=1,
                   weights={"lexical": 2.0, "semantic": 0.5}))  # fmt: skip
    assert got[3] == pytest.approx(2 / 3 + 0.5 / 2)  # 2nd lexically, 1st semantically
    assert got[5] == pytest.approx(0.5 / 3) and got[9] == pytest.approx(2 / 4)


def test_weighted_by_hand():
    # lexical normalised: 7 → 1, 3 → 0.6, 9 → 0; semantic: 3 → 1, 5 → 0
    got = weighted({"lexical": LEXICAL, "semantic": SEMANTIC}, {"lexical": 0.5, "semantic": 1.0})
    assert dict(got) == pytest.approx({7: 0.5, 3: 0.5 * 0.6 + 1.0, 9: 0.0, 5: 0.0})
    assert [r for r, _ in got] == [3, 7, 9, 5]  # 9 and 5 tie at 0: the first list's first


def test_one_candidate_and_empty_lists():
    one = (np.array([4]), np.array([3.3]))
    empty = (np.array([], np.int64), np.array([]))
    assert weighted({"a": one, "b": empty}, {"a": 1.0, "b": 1.0}) == [(4, 1.0)]
    assert rrf({"a": empty}) == []


def test_ranks_say_where_each_came_from():
    assert ranks({"lexical": LEXICAL, "semantic": SEMANTIC}) == {
        7: {"lexical": 1},
        3: {"lexical": 2, "semantic": 1},
        9: {"lexical": 3},
        5: {"semantic": 2},
    }
