"""The lexical retriever of an index version (creator search, issue 16): BM25 over each
creator's name, category, tags and description, and over its name's character trigrams (so a
typo, a dropped letter or a cut-off word still finds the name), in a tantivy index written by
the rebuild job into the version folder (`lexical/`, store.LEXICAL); the whole name is one more
term, so an exact name stands first.

tantivy over bm25s, by measurement on the 1 M-creator catalog, side by side on the same tokens
(benchmarks/lexical_choice.py, BENCHMARKS.md): noisy names found as well (MRR@10 0.770 against
0.775), queries answered 2× faster for names (p50 5.2 against 10.4 ms) and 5× for topics
(1.3 against 6.5 ms), in a quarter of the disk (63 against 270 MB), built in half the time.

Text is folded and split here, for the index and for queries alike (`tokens`, `trigrams`): the
index stores our tokens as they are (tantivy's whitespace tokenizer), so a query can never be
analysed differently from the text it should match.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
import unicodedata
from importlib.metadata import version
from pathlib import Path

import numpy as np
import tantivy

from index.projection import catalog_columns

log = logging.getLogger(__name__)

NAME = "name"
FIELDS = (NAME, "category", "tags", "description")
GRAMS = "grams"
"""The name's character trigrams (padded words, `_` for the padding)."""
WHOLE = "whole"
"""The whole name, folded, as one term (`whole_name`): a query that is exactly a creator's name
matches it, so that creator comes before the shorter names BM25's length norm favours ('The
Sunday Skillet Kitchen 25' before 'Sunday Skillet Kitchen 25')."""
ROW = "row"
"""The creator's faiss row in the version: the id every retriever of a version shares."""
WRITER_HEAP = 256_000_000
_WORD = re.compile(r"\w+")


def fold(text: str) -> str:
    """Casefolded, accents stripped: 'Café NOËL' → 'cafe noel'."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def tokens(text: str | None) -> list[str]:
    """The words of a text as the index holds them."""
    return _WORD.findall(fold(text or ""))


def trigrams(text: str | None) -> list[str]:
    """Character trigrams of each word padded with `_`: 'Ink' → _in, ink, nk_."""
    return [w[i : i + 3] for w in (f"_{w}_" for w in tokens(text)) for i in range(len(w) - 2)]


def whole_name(text: str | None) -> str:
    """A name or a query as the `WHOLE` field's one term: its words joined by a space."""
    return " ".join(tokens(text))


def schema() -> tantivy.Schema:
    b = tantivy.SchemaBuilder()
    b.add_integer_field(ROW, stored=True, indexed=True, fast=True)
    for field in (*FIELDS, GRAMS):
        b.add_text_field(field, tokenizer_name="whitespace", index_option="freq")
    b.add_text_field(WHOLE, tokenizer_name="raw", index_option="basic")
    return b.build()


def creator_text(data_dir: Path, creator_idx: np.ndarray) -> dict[str, np.ndarray]:
    """Name, category, tags and description of each faiss row (creator_idx by row), from the
    catalog the version is built from; blank where the catalog has none."""
    return catalog_columns(data_dir, creator_idx, {f: "" for f in FIELDS} | {"tags": []})


def build(data_dir: Path, creator_idx: np.ndarray, folder: Path) -> dict:
    """Write the lexical index of the version's creators (faiss rows 0..N-1) to `folder`;
    the manifest's record of it."""
    started = time.perf_counter()
    text = creator_text(data_dir, np.asarray(creator_idx, np.int64))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    index = tantivy.Index(schema(), path=str(folder))
    writer = index.writer(heap_size=WRITER_HEAP, num_threads=2)
    for row in range(len(creator_idx)):
        tags = text["tags"][row]
        doc = {
            "name": tokens(text["name"][row]), "category": tokens(text["category"][row]),
            "tags": tokens(" ".join(tags or [])), "description": tokens(text["description"][row]),
        }  # fmt: skip
        writer.add_document(tantivy.Document(
            **{ROW: row, GRAMS: " ".join(trigrams(text["name"][row])),
               WHOLE: whole_name(text["name"][row])},
            **{f: " ".join(words) for f, words in doc.items()},
        ))  # fmt: skip
    writer.commit()
    writer.wait_merging_threads()
    seconds = time.perf_counter() - started
    log.info("lexical index: %d creators in %.1f s", len(creator_idx), seconds)
    return {"library": f"tantivy {version('tantivy')}", "creators": len(creator_idx),
            "fields": [*FIELDS, GRAMS, WHOLE], "seconds": round(seconds, 1)}  # fmt: skip
