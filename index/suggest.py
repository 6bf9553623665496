"""Name completion of an index version (creator search's `/suggest`, issue 16), written by the
rebuild job into the version folder (`suggest/`, store.SUGGEST): every creator's name from each
of its first words on ("clara inkwell", "inkwell"), folded (index.lexical.tokens), sorted, so
that what a fan has typed so far is one contiguous range of keys (a binary search away), each
key with its creator's faiss row and training popularity.

    keys.npy        [E] bytes, KEY_BYTES wide: the name from a word on, UTF-8, cut
    rows.npy        [E] int32 faiss row of each key's creator
    popularity.npy  [N] int64 training interactions by faiss row (the order of suggestions)

Plain .npy files, loaded memory-mapped without pickle.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from common.io import save_npy
from index.lexical import tokens
from index.projection import catalog_info

log = logging.getLogger(__name__)

KEY_BYTES = 32
"""A key's width: typed prefixes are compared on their first KEY_BYTES - 1 bytes."""
MAX_STARTS = 6
"""Words of a name a completion may start at: "inkwell" finds "Clara Inkwell"."""
KEYS, ROWS, POPULARITY = "keys.npy", "rows.npy", "popularity.npy"


def key(text: str) -> bytes:
    """What a name or a typed prefix is compared as: folded words, one space apart, cut."""
    return " ".join(tokens(text)).encode()[: KEY_BYTES - 1]


def entries(names: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(keys, rows) sorted by key then row: each name from each of its first words on."""
    keys, rows = [], []
    for row, name in enumerate(names):
        words = tokens(name)
        for start in range(min(len(words), MAX_STARTS)):
            keys.append(" ".join(words[start:]).encode()[: KEY_BYTES - 1])
            rows.append(row)
    keys_a = np.asarray(keys, dtype=f"S{KEY_BYTES}")
    rows_a = np.asarray(rows, dtype=np.int32)
    order = np.lexsort((rows_a, keys_a))
    return keys_a[order], rows_a[order]


def build(data_dir: Path, creator_idx: np.ndarray, folder: Path) -> dict:
    """Write the version's completion keys to `folder`; the manifest's record of them."""
    started = time.perf_counter()
    info = catalog_info(data_dir, np.asarray(creator_idx, np.int64))
    names, popularity = info["name"].tolist(), info["train_count"]
    keys, rows = entries(names)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    save_npy(folder / KEYS, keys)
    save_npy(folder / ROWS, rows)
    save_npy(folder / POPULARITY, popularity)
    seconds = time.perf_counter() - started
    log.info("name completion: %d keys of %d creators in %.1f s", len(keys), len(names), seconds)
    return {"keys": len(keys), "creators": len(names), "key_bytes": KEY_BYTES,
            "seconds": round(seconds, 1)}  # fmt: skip
