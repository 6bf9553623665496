"""The lexical retriever at query time: a version's tantivy index (index.lexical) asked for a
query's words in every text field and its trigrams in the name, BM25 summed over the fields.

    lexical = Lexical(version_folder / store.LEXICAL)
    rows, scores = lexical.search("clara inkwel", k=10)   # faiss rows of the version
    rows, scores = lexical.search("clara inkwel", k=10, grams="unknown")

Trigrams make a typo or a cut-off word find the name, and they are most of the work: on the
1 M set a noisy name's trigrams took 5.9 of its 7.4 ms (p50), as common ones ('_th', 'stu')
each hold 8–28 % of the creators. `grams="unknown"` asks them only for the words no creator's
name holds, which are the typos and the cut-offs; a word spelt right is matched as itself. It
costs some accuracy, because the trigrams of known words also rank near-namesakes. Both are
measured side by side in benchmarks/lexical_speed.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tantivy

from common.errors import MissingInputError
from index import lexical as built

MAX_TERMS = 256
"""Query terms asked at most (words × fields plus trigrams): a 10 KB query costs no more."""
GRAMS = ("every", "unknown")
"""Whose trigrams a query asks for: every word's, or only those of words no name holds."""


class Lexical:
    def __init__(self, folder: Path):
        if not Path(folder).is_dir():
            raise MissingInputError(
                f"no lexical index at {folder}: the version was built before search; rebuild it "
                f"(`python -m index rebuild --config ...`)"
            )
        self.folder = Path(folder)
        self.index = tantivy.Index.open(str(folder))
        self.schema = self.index.schema
        self.searcher = self.index.searcher()
        self.whole = _has_field(self.schema, built.WHOLE)  # not in versions built before it

    def query(self, text: str, grams: str = "every") -> tantivy.Query | None:
        """Every word in every text field, the query as a whole name, and in the name's
        trigrams those of every word (`grams`="every") or of the words no name holds
        ("unknown"); None for a query with no word in it."""
        words = built.tokens(text)
        terms = [(f, w) for w in words for f in built.FIELDS]
        terms += [(built.WHOLE, built.whole_name(text))] if words and self.whole else []
        typed = words if grams == "every" else self.unknown(words[:MAX_TERMS])
        terms += [(built.GRAMS, g) for g in built.trigrams(" ".join(typed))]
        should = [(tantivy.Occur.Should, tantivy.Query.term_query(self.schema, f, t))
                  for f, t in terms[:MAX_TERMS]]  # fmt: skip
        return tantivy.Query.boolean_query(should) if should else None

    def unknown(self, words: list[str]) -> list[str]:
        """The words no creator's name holds (a typo, a cut-off word); ~2 µs a word."""
        return [w for w in words if not self.searcher.doc_freq(built.NAME, w)]

    def search(self, text: str, k: int, grams: str = "every") -> tuple[np.ndarray, np.ndarray]:
        """The k best faiss rows for a query and their BM25 scores, best first (`grams`: as
        `query` says)."""
        query = self.query(text, grams)
        if query is None or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        hits = self.searcher.search(query, k, count=False).hits
        # the row from its fast field, not the stored document (~0.5 ms less for 100 hits)
        rows = self.searcher.fast_field_values(built.ROW, [address for _, address in hits])
        return np.asarray(rows, np.int64), np.asarray([s for s, _ in hits], np.float32)


def _has_field(schema: tantivy.Schema, field: str) -> bool:
    try:
        tantivy.Query.term_query(schema, field, "")
    except ValueError:
        return False
    return True
