"""The creator map of an index version: a 2-D projection of a sample of its creator embeddings,
made when the version is built, for the relevance explorer (`map.parquet` in the version).

The sample is stratified by popularity and category, not the first N rows or a uniform draw,
so the long tail shows: creators are put in strata by (popularity band, category), popularity
bands being 0 training interactions, then powers of two, and every stratum gets an equal share
of the points; a stratum smaller than its share gives the rest to the others (water-filling).
A uniform draw of 50,000 out of 1 M would be mostly creators with one or two fans.

The projection is UMAP (umap-learn, cosine distance, seeded): neighbourhoods of the embedding
space stay neighbourhoods on the map. Catalogs too small for a neighbour graph are laid out by
their two principal components.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.io import write_parquet
from data.tables import CREATORS as CATALOG_CREATORS

log = logging.getLogger(__name__)

MIN_UMAP = 32
"""Fewer creators than this are laid out by PCA (UMAP needs a neighbour graph)."""


def popularity_band(train_count: np.ndarray) -> np.ndarray:
    """0 for creators nobody trained on, else 1 + floor(log2(count)): 1, 2-3, 4-7, ..."""
    counts = np.maximum(np.asarray(train_count, np.int64), 0)
    bands = np.zeros(len(counts), np.int64)
    some = counts > 0
    bands[some] = 1 + np.floor(np.log2(counts[some])).astype(np.int64)
    return bands


def stratified_sample(strata: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Row positions, ascending: up to `n`, an equal share per stratum (water-filled)."""
    rng = np.random.default_rng(seed)
    labels, inverse, sizes = np.unique(strata, return_inverse=True, return_counts=True)
    quota = _water_fill(sizes, min(n, len(strata)))
    picked = []
    for s in range(len(labels)):
        members = np.flatnonzero(inverse == s)
        picked.append(rng.choice(members, quota[s], replace=False) if quota[s] else members[:0])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def _water_fill(sizes: np.ndarray, n: int) -> np.ndarray:
    """Equal shares of n over strata of `sizes`, each capped at its size."""
    quota = np.zeros(len(sizes), np.int64)
    open_ = np.ones(len(sizes), bool)
    left = n
    while left > 0 and open_.any():
        share = max(left // int(open_.sum()), 1)
        for s in np.flatnonzero(open_):
            take = min(share, sizes[s] - quota[s], left)
            quota[s] += take
            left -= take
            if quota[s] == sizes[s]:
                open_[s] = False
            if left == 0:
                break
    return quota


def project(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """[n, d] → [n, 2] float32 coordinates, and the method used."""
    x = np.asarray(x, np.float32)
    if len(x) < MIN_UMAP:
        centred = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        out = np.zeros((len(x), 2), np.float32)
        k = min(2, vt.shape[0])
        out[:, :k] = centred @ vt[:k].T
        return out, "pca"
    import umap  # slow to import (numba): only when a map is made

    reducer = umap.UMAP(
        n_components=2, n_neighbors=15, min_dist=0.1, metric="cosine", random_state=seed,
        n_jobs=1, low_memory=True,
    )  # fmt: skip
    return reducer.fit_transform(x).astype(np.float32), "umap"


def catalog_info(data_dir: Path, creator_idx: np.ndarray) -> dict[str, np.ndarray]:
    """Name, category and training count of each vocabulary index (blank, 0 when missing)."""
    out = catalog_columns(data_dir, creator_idx, {"name": "", "category": "", "train_count": 0})
    out["train_count"] = out["train_count"].astype(np.int64)
    return out


def catalog_columns(data_dir: Path, creator_idx: np.ndarray, blanks: dict) -> dict[str, np.ndarray]:
    """Catalog columns (object arrays) for each vocabulary index, in the order given; a value
    the catalog lacks (no such creator, or null) is the column's blank."""
    cat = pq.read_table(Path(data_dir) / CATALOG_CREATORS, columns=["creator_idx", *blanks])
    idx = cat["creator_idx"].to_numpy().astype(np.int64)
    order = np.argsort(idx, kind="stable")
    want = np.asarray(creator_idx, np.int64)
    pos = np.minimum(np.searchsorted(idx[order], want), max(len(idx) - 1, 0))
    hit = idx[order][pos] == want
    take = order[pos]
    out = {}
    for name, blank in blanks.items():
        values = np.empty(len(idx), dtype=object)  # one object each, lists included
        values[:] = cat[name].to_pylist()
        values = values[take]
        for i in np.flatnonzero(~hit | np.equal(values, None)):
            values[i] = blank  # one by one: a list blank ([] tags) is one value, not a sequence
        out[name] = values
    return out


def write_map(
    path: Path, embeddings: np.ndarray, creator_idx: np.ndarray, creator_id: np.ndarray,
    data_dir: Path, points: int, seed: int,
) -> dict:  # fmt: skip
    """Sample, project and write the map of a version (`creator_idx`, `creator_id`: the index's
    rows); returns its manifest record."""
    started = time.perf_counter()
    info = catalog_info(data_dir, creator_idx)
    bands = popularity_band(info["train_count"])
    strata = np.asarray([f"{b}|{c}" for b, c in zip(bands, info["category"], strict=True)])
    rows = stratified_sample(strata, points, seed)
    xy, method = project(embeddings[rows], seed)
    table = pa.table({
        "row": pa.array(rows, pa.int64()),
        "creator_id": pa.array(np.asarray(creator_id)[rows].tolist(), pa.string()),
        "name": pa.array(info["name"][rows].tolist(), pa.string()),
        "category": pa.array(info["category"][rows].tolist(), pa.string()),
        "train_count": pa.array(info["train_count"][rows], pa.int64()),
        "popularity_band": pa.array(bands[rows], pa.int64()),
        "x": pa.array(xy[:, 0]),
        "y": pa.array(xy[:, 1]),
    })  # fmt: skip
    write_parquet(path, table)
    seconds = time.perf_counter() - started
    log.info("creator map: %d of %d creators by %s in %.1f s", len(rows), len(strata), method,
             seconds)  # fmt: skip
    return {
        "file": path.name, "points": len(rows), "creators": len(strata),
        "strata": len(np.unique(strata)), "method": method, "seed": seed,
        "seconds": round(seconds, 1),
    }  # fmt: skip
