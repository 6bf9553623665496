"""The creator map of an index version: a sample stratified by popularity and category (the
long tail shows), laid out in 2-D, written with the version and checked by its manifest."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from index import projection, store


def test_popularity_bands_are_powers_of_two():
    bands = projection.popularity_band(np.array([0, 1, 2, 3, 4, 7, 8, 1000]))
    assert bands.tolist() == [0, 1, 2, 2, 3, 3, 4, 10]


def test_every_stratum_gets_an_equal_share_and_small_ones_are_taken_whole():
    # a long tail: 10,000 creators nobody follows, 100 with a few fans, 5 stars
    strata = np.array(["tail"] * 10_000 + ["mid"] * 100 + ["star"] * 5)
    rows = projection.stratified_sample(strata, 300, seed=1)
    assert len(rows) == 300 and len(set(rows.tolist())) == 300
    assert np.all(np.diff(rows) > 0)
    got = Counter(strata[rows].tolist())
    assert got["star"] == 5 and got["mid"] == 100 and got["tail"] == 195
    # a uniform draw would have taken ~285 of the tail and no star at all, most likely
    assert projection.stratified_sample(strata, 10**6).size == len(strata)  # n > catalog
    again = projection.stratified_sample(strata, 300, seed=1)
    assert np.array_equal(rows, again)  # seeded


def test_a_small_catalog_is_laid_out_by_its_principal_components():
    x = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    xy, method = projection.project(x)
    assert method == "pca" and xy.shape == (10, 2) and np.isfinite(xy).all()


def test_the_published_version_carries_its_map(published):
    root = Path(published.store)
    folder = store.versions_dir(root) / store.current_version(root)
    manifest = store.read_manifest(root)
    record = manifest["map"]
    assert record["file"] == store.MAP and store.MAP in manifest["files"]  # checksummed
    table = pq.read_table(folder / store.MAP)
    assert table.num_rows == record["points"] > 0
    rows = pq.read_table(folder / store.CREATORS)
    ids = rows["creator_id"].to_pylist()
    for r in table.slice(0, 20).to_pylist():
        assert ids[r["row"]] == r["creator_id"] and r["name"] and r["category"]
        assert np.isfinite([r["x"], r["y"]]).all()
    xy = np.stack([table["x"].to_numpy(), table["y"].to_numpy()], axis=1)
    assert xy.std(axis=0).min() > 0  # laid out, not collapsed to a point
