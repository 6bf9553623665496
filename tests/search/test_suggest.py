"""Name completion against a brute-force scan: for any typed prefix, the most popular creators
whose name from one of its first words on starts with it (folded), each once, ties by row."""

from __future__ import annotations

import numpy as np
import pytest

from index import suggest as built
from index.lexical import tokens
from search.suggest import Suggest

NAMES = ["Clara Inkwell", "The Ink Academy", "Inkwell Studio", "Café Noël", "Clarabelle",
         "", None, "The Clara Show", "Synthwave Sunday", "Noel the Baker"]  # fmt: skip


def make(tmp_path, names: list, popularity: np.ndarray) -> Suggest:
    keys, rows = built.entries(names)
    folder = tmp_path / "suggest"
    folder.mkdir()
    for name, array in ((built.KEYS, keys), (built.ROWS, rows), (built.POPULARITY, popularity)):
        np.save(folder / name, array, allow_pickle=False)
    return Suggest(folder)


def brute_force(names: list, popularity: np.ndarray, typed: str, n: int) -> list:
    prefix = built.key(typed).decode() + (" " if typed[-1:].isspace() and tokens(typed) else "")
    hits = [r for r, name in enumerate(names)
            if any(" ".join(tokens(name)[s:])[: built.KEY_BYTES - 1].startswith(prefix)
                   for s in range(min(len(tokens(name)), built.MAX_STARTS)))]  # fmt: skip
    hits.sort(key=lambda r: (-popularity[r], r))
    return [(r, int(popularity[r])) for r in hits[:n]]


@pytest.mark.parametrize(
    "typed", ["c", "cl", "CLARA", "clara ", "clara i", "ink", "inkwell s", "the", "noel",
              "NOËL", "cafe n", "x", "", "   ", "s"],
)  # fmt: skip
def test_completion_is_the_most_popular_prefix_matches(tmp_path, typed):
    popularity = np.array([5, 9, 5, 1, 7, 3, 0, 9, 2, 4], np.int64)
    got = make(tmp_path, NAMES, popularity).complete(typed, n=3)
    assert got == brute_force(NAMES, popularity, typed, 3)


def test_a_large_random_catalog_matches_the_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    words = ["ink", "inkwell", "clara", "studio", "the", "noel", "nova", "sun", "sunday", "art"]
    names = [" ".join(rng.choice(words, rng.integers(1, 5))) for _ in range(3000)]
    popularity = rng.integers(0, 50, len(names))
    suggest = make(tmp_path, names, popularity)
    for typed in ["i", "in", "ink", "inkw", "s", "sun", "sunday s", "t", "the ", "a", "zz", "n"]:
        assert suggest.complete(typed, 10) == brute_force(names, popularity, typed, 10), typed


def test_the_rebuild_publishes_completion_for_the_versions_creators(published):
    from index import store

    m = store.read_manifest(published.store)
    folder = store.versions_dir(published.store) / m["version"]
    assert m["suggest"]["creators"] == m["count"]
    suggest = Suggest(folder / store.SUGGEST)
    assert len(suggest.popularity) == m["count"]
    top = suggest.complete("", n=5)  # nothing typed: the most popular of all
    assert [p for _, p in top] == sorted(suggest.popularity, reverse=True)[:5]
