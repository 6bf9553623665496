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
        every, names, topical, wholes = _Words(), _Words(), set(), []
        for name, category, tags in zip(*cols.values(), strict=True):
            words = tokens(name)
            own = [self.vocabulary.setdefault(w, len(self.vocabulary)) for w in words]
            names.add(own)
            wholes.append(hash(" ".join(words)))  # whole_name(name), its words at hand
            rest = {self.vocabulary.setdefault(w, len(self.vocabulary))
                    for w in {*tokens(category), *tokens(" ".join(tags or []))}}  # fmt: skip
            topical |= rest
            every.add(set(own) | rest)
        self.words, self.starts = every.arrays()
        self.name_words, self.name_starts = names.arrays()
        self.spelling = np.array(list(self.vocabulary), dtype=object)  # word id → word
        self.name_only = np.ones(len(self.vocabulary), bool)
        self.name_only[list(topical)] = False
        # hashes, not the strings: a million names as a set of str would take ~100 MB a worker
        self.whole_names = np.unique(np.array(wholes, np.int64))
        log.info("topics of %d creators (%d words) in %.1f s", len(creator_idx),
                 len(self.vocabulary), time.perf_counter() - started)  # fmt: skip

    def _ids(self, words: list[str]) -> list[int]:
        return [self.vocabulary[w] for w in words if w in self.vocabulary]

    def matching(self, rows: np.ndarray, query: str) -> np.ndarray:
        """For each row, whether one of the query's words is in its name, category or tags."""
        wanted = self._ids(tokens(query))
        return _holding(self.words, self.starts, np.asarray(rows, np.int64), wanted)

    def reads_as_name(self, query: str, reading: str = "words", first: int | None = None) -> bool:
        """Whether the query reads as a fan looking for someone rather than for a topic, by
        `reading` (READINGS). All three start from a word only names use (never a category or
        tag). "slips" adds the query being a creator's whole name ('RADIOHEAD', though fans tag
        it too) and a word no creator's text holds one slip from a word only names use
        ('Paraomre' for Paramore). "fit" adds a word no creator's text holds (a typo, a cut-off
        word) where `first`, the lexical retriever's first creator for the query, has a name
        that fits every word of it ('Nirvna' for Nirvana, though 'nirvana' is a tag too)."""
        words = tokens(query)
        if self.name_only[self._ids(words)].any():
            return True
        if reading == "fit":
            return first is not None and self._fits(words, int(first))
        if reading != "slips":
            return False
        whole = hash(whole_name(query))
        at = np.searchsorted(self.whole_names, whole)
        if at < len(self.whole_names) and self.whole_names[at] == whole:
            return True
        return any(self._slip_of_name(w) for w in words if w not in self.vocabulary)

    def _slip_of_name(self, word: str) -> bool:
        near = [self.vocabulary[w] for w in one_slip(word) if w in self.vocabulary]
        return bool(near) and bool(self.name_only[near].any())

    def name(self, row: int) -> np.ndarray:
        """A creator's name as its words (index.lexical.tokens), an array of str."""
        return self.spelling[self.name_words[self.name_starts[row] : self.name_starts[row + 1]]]

    def _fits(self, words: list[str], row: int) -> bool:
        if all(w in self.vocabulary for w in words):
            return False  # every word spelt as some creator's text has it: the words decide
        name = self.name(row).tolist()
        return bool(words) and all(any(fits(w, v) for v in name) for w in words)


READINGS = ("words", "slips", "fit")
"""How a query is told to read as a name (Topics.reads_as_name; SearchSettings.reading)."""


def fits(word: str, name_word: str) -> bool:
    """Whether a typed word may be a name's word as a fan types it: the word, its start (a
    cut-off), or either with one slip of the finger (one_apart) in a word of 3 letters or
    more (a slip in 'ab' is another word)."""
    if name_word.startswith(word):
        return True
    if len(word) < 3:
        return False
    return any(one_apart(word, name_word[:n]) for n in {len(word) - 1, len(word), len(word) + 1})


def one_apart(a: str, b: str) -> bool:
    """Whether b is one slip from a: a letter dropped, added or replaced, or two neighbours
    swapped (one_slip, without spelling out its ~70 words a letter)."""
    if len(a) < len(b):
        a, b = b, a
    if len(a) - len(b) > 1 or a == b:
        return False
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(b))
    if len(a) > len(b):
        return a[i + 1 :] == b[i:]
    swapped = i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :]
    return swapped or a[i + 1 :] == b[i + 1 :]


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
