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

from index.lexical import tokens
from index.projection import catalog_columns

log = logging.getLogger(__name__)


class Topics:
    def __init__(self, data_dir: Path, creator_idx: np.ndarray):
        started = time.perf_counter()
        cols = catalog_columns(
            data_dir, creator_idx, {"name": "", "category": "", "tags": []}
        )  # fmt: skip
        self.vocabulary: dict[str, int] = {}
        every, topical = _Words(), set()
        for name, category, tags in zip(*cols.values(), strict=True):
            own = {self.vocabulary.setdefault(w, len(self.vocabulary)) for w in tokens(name)}
            rest = {self.vocabulary.setdefault(w, len(self.vocabulary))
                    for w in {*tokens(category), *tokens(" ".join(tags or []))}}  # fmt: skip
            topical |= rest
            every.add(own | rest)
        self.words, self.starts = every.arrays()
        self.name_only = np.ones(len(self.vocabulary), bool)
        self.name_only[list(topical)] = False
        log.info("topics of %d creators (%d words) in %.1f s", len(creator_idx),
                 len(self.vocabulary), time.perf_counter() - started)  # fmt: skip

    def _ids(self, query: str) -> list[int]:
        return [self.vocabulary[w] for w in tokens(query) if w in self.vocabulary]

    def matching(self, rows: np.ndarray, query: str) -> np.ndarray:
        """For each row, whether one of the query's words is in its name, category or tags."""
        return _holding(self.words, self.starts, np.asarray(rows, np.int64), self._ids(query))

    def reads_as_name(self, query: str) -> bool:
        """Whether the query uses a word that only names use (never a category or tag): a fan
        looking for someone, not for a topic."""
        return bool(self.name_only[self._ids(query)].any())


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
