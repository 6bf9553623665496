"""Which creators a query's words describe, asked for a few rows at a time: each creator's name,
category and tag words as token ids (a row → words index over the version's catalog).

The personal retriever looks among the fan's nearest creators (the recommendation index) for
those the query is about: "synthwave" from a fan of synthwave should find the synthwave artist
the fan would love even when BM25 ranks ten thousand others who are tagged so too above it.
The lexical index answers "which creators, best first" over the whole catalog; this answers
"which of these thousand" in a fraction of a millisecond (a filtered tantivy query took ~10 ms
on the 1 M set: its set filter is built per query).

    topics = Topics(data_dir, creator_idx)           # by faiss row, built in memory once
    mask = topics.matching(rows, "synthwave")        # [len(rows)] bool

Words are the lexical index's own (index.lexical.tokens: case and accents folded), so a query
matches here exactly when it would match those fields there. The description is left out: its
words say what a creator does in passing, where category, tags and name say what it is.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from index.lexical import tokens, whole_name
from index.projection import catalog_columns

log = logging.getLogger(__name__)


class Topics:
    def __init__(self, data_dir: Path, creator_idx: np.ndarray):
        started = time.perf_counter()
        cols = catalog_columns(
            data_dir, creator_idx, {"name": "", "category": "", "tags": []}
        )  # fmt: skip
        self.vocabulary: dict[str, int] = {}
        every, topical, wholes = _Words(), set(), []
        for name, category, tags in zip(*cols.values(), strict=True):
            words = tokens(name)
            own = {self.vocabulary.setdefault(w, len(self.vocabulary)) for w in words}
            wholes.append(hash(" ".join(words)))  # whole_name(name), its words at hand
            rest = {self.vocabulary.setdefault(w, len(self.vocabulary))
                    for w in {*tokens(category), *tokens(" ".join(tags or []))}}  # fmt: skip
            topical |= rest
            every.add(own | rest)
        self.words, self.starts = every.arrays()
        self.name_only = np.ones(len(self.vocabulary), bool)
        self.name_only[list(topical)] = False
        # hashes, not the strings: a million names as a set of str would take ~100 MB a worker
        self.whole_names = np.unique(np.array(wholes, np.int64))
        log.info("topics of %d creators (%d words) in %.1f s", len(creator_idx),
                 len(self.vocabulary), time.perf_counter() - started)  # fmt: skip

    def _ids(self, query: str) -> list[int]:
        return [self.vocabulary[w] for w in tokens(query) if w in self.vocabulary]

    def matching(self, rows: np.ndarray, query: str) -> np.ndarray:
        """For each row, whether one of the query's words is in its name, category or tags."""
        return _holding(self.words, self.starts, np.asarray(rows, np.int64), self._ids(query))

    def reads_as_name(self, query: str, slips: bool = False) -> bool:
        """Whether the query uses a word that only names use (never a category or tag): a fan
        looking for someone, not for a topic. With `slips`, also when the query is a creator's
        whole name ('RADIOHEAD', though fans tag it too), or a word no creator's name, category
        or tags hold is one slip from a word only names use ('Paraomre' for Paramore)."""
        if self.name_only[self._ids(query)].any():
            return True
        if not slips:
            return False
        words = tokens(query)
        whole = hash(whole_name(query))
        at = np.searchsorted(self.whole_names, whole)
        if at < len(self.whole_names) and self.whole_names[at] == whole:
            return True
        return any(self._slip_of_name(w) for w in words if w not in self.vocabulary)

    def _slip_of_name(self, word: str) -> bool:
        near = [self.vocabulary[w] for w in one_slip(word) if w in self.vocabulary]
        return bool(near) and bool(self.name_only[near].any())


SLIP_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"


def one_slip(word: str) -> set[str]:
    """Every word one slip of the finger from `word`: a letter dropped, added or replaced, or
    two neighbours swapped (the noise of search.queries.typo and more)."""
    cuts = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    dropped = {a + b[1:] for a, b in cuts if b}
    swapped = {a + b[1] + b[0] + b[2:] for a, b in cuts if len(b) > 1}
    replaced = {a + c + b[1:] for a, b in cuts if b for c in SLIP_LETTERS}
    added = {a + c + b for a, b in cuts for c in SLIP_LETTERS}
    return (dropped | swapped | replaced | added) - {word}


class _Words:
    """Rows' word ids gathered as a CSR (starts [rows + 1], words)."""

    def __init__(self):
        self.ids: list[int] = []
        self.lengths: list[int] = []

    def add(self, ids) -> None:
        self.ids.extend(ids)
        self.lengths.append(len(ids))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.ids, np.int32), np.concatenate([[0], np.cumsum(self.lengths)])


def _holding(words: np.ndarray, starts: np.ndarray, rows: np.ndarray, wanted: list[int]):
    """For each row, whether its words (CSR `words`, `starts`) hold one of `wanted`."""
    if not wanted or not len(rows):
        return np.zeros(len(rows), bool)
    lengths = starts[rows + 1] - starts[rows]
    owner = np.repeat(np.arange(len(rows)), lengths)
    at = np.repeat(starts[rows] - np.cumsum(lengths) + lengths, lengths)
    hit = np.zeros(len(rows), bool)
    hit[owner[np.isin(words[at + np.arange(len(owner))], wanted)]] = True
    return hit
