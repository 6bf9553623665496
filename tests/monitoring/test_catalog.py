"""The monitor's catalog (monitoring.catalog): from a real published index version and its
prepared dataset, checked against those files read directly; from arrays, refusing bad ones
with a message that names the value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from common.errors import ConfigError, IntegrityError, MissingInputError
from data import tables
from index import store
from monitoring import answers, metrics
from monitoring.catalog import Catalog
from tests.index import conftest as index_fixtures
from tests.monitoring.helpers import T0, record, write_log

# the index tests' tiny model and its published store (package scope: built once here)
one_thread = index_fixtures.one_thread
tiny_data = index_fixtures.tiny_data
tiny_checkpoint = index_fixtures.tiny_checkpoint
published = index_fixtures.published


@pytest.fixture(scope="module")
def version(published) -> tuple[Path, Path, dict]:
    """(the store, the version's folder, its dataset's training pairs as columns)."""
    root = Path(published.store)
    folder = store.versions_dir(root) / store.current_version(root)
    train = pq.read_table(Path(published.data) / tables.TRAIN).to_pydict()
    return root, folder, train


def test_a_published_version_gives_its_creators_and_its_fans(version, published):
    root, folder, train = version
    catalog = Catalog.from_version(root, later_split="test")
    served = pq.read_table(folder / store.CREATORS).to_pydict()
    assert catalog.creator_ids.tolist() == served["creator_id"]
    assert catalog.version == folder.name
    np.testing.assert_allclose(catalog.embeddings, np.load(folder / store.EMBEDDINGS))
    creators = pq.read_table(Path(published.data) / tables.CREATORS).to_pydict()
    by_idx = {i: row for row, i in enumerate(creators["creator_idx"])}
    for row, idx in enumerate(served["creator_idx"]):  # each row as the dataset has it
        mine = by_idx[idx]
        assert catalog.popularity[row] == creators["train_count"][mine]
        assert catalog.category[row] == (creators["category_idx"][mine] or 1)
        assert catalog.first_seen[row] == creators["created_at"][mine].timestamp()
    assert catalog.num_users == len(set(train["user_idx"]))
    users = pq.read_table(Path(published.data) / tables.USERS).to_pydict()
    fan = dict(zip(users["user_idx"], users["user_id"], strict=True))
    category = {
        i: c or 1 for i, c in zip(creators["creator_idx"], creators["category_idx"], strict=True)
    }
    someone = train["user_idx"][0]
    want = np.bincount(
        [
            category[c]
            for u, c in zip(train["user_idx"], train["creator_idx"], strict=True)
            if u == someone
        ],
        minlength=catalog.num_categories,
    )
    mine = catalog.fan_rows([fan[someone]])[0]
    assert catalog.history[mine].toarray().ravel().tolist() == want.tolist()
    test = pq.read_table(Path(published.data) / tables.TEST).num_rows
    assert len(catalog.later) + catalog.later.dropped == test and len(catalog.later) > 0
    assert np.isinf(catalog.later.ts).all()  # the split is after every logged answer


def test_a_log_of_the_version_is_measured_against_it(version, tmp_path):
    """Answers naming the version's creators bind with nothing unknown, and every figure is
    a number (the later interactions are the test split's)."""
    root, _, _ = version
    catalog = Catalog.from_version(root, later_split="test")
    ids, fans = catalog.creator_ids, catalog.fan_ids
    rng = np.random.default_rng(0)
    records = [
        record(T0 + i, str(fans[i % len(fans)]), rng.choice(ids, 10, replace=False))
        for i in range(200)
    ]
    a = answers.read(write_log(tmp_path / "answers.arrows", records), catalog)
    assert a.unknown == 0 and (a.fan_rows >= 0).all()
    figures = metrics.compute(a, catalog)
    assert all(np.isfinite(v) for v in figures.values()), figures
    assert figures["later_interactions"] > 0 and 0 < figures["coverage"] <= 1


def test_a_version_whose_dataset_is_gone_or_corrupted_is_refused(version, tmp_path):
    import shutil

    root, folder, _ = version
    copy = tmp_path / "store"
    shutil.copytree(root, copy)
    manifest = store.read_manifest(copy)
    manifest["catalog"]["data_dir"] = str(tmp_path / "gone")
    store.write_manifest(store.versions_dir(copy) / folder.name, manifest)
    with pytest.raises(MissingInputError, match=r"gone.*restore that prepared dataset"):
        Catalog.from_version(copy)
    embeddings = store.versions_dir(copy) / folder.name / store.EMBEDDINGS
    embeddings.write_bytes(embeddings.read_bytes()[:-8])
    with pytest.raises(IntegrityError, match=r"embeddings.npy .*truncated"):
        Catalog.from_version(copy)


BASE = dict(
    creator_ids=["a", "b"],
    popularity=[3, 1],
    first_seen=[T0, T0],
    category=[0, 1],
    embeddings=[[1.0, 0.0], [0.0, 2.0]],
)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"popularity": [3]}, r"1 popularity for 2 creator ids"),
        ({"creator_ids": ["a", "a"]}, r"creator ids repeat"),
        ({"embeddings": [[1.0, np.nan], [0.0, 1.0]]}, r"finite"),
        ({"embeddings": [[1.0, 0.0], [0.0, 0.0]]}, r"1 embeddings are all zeros \(e.g. row 1\)"),
        ({"category": [0, -1]}, r"category codes span \[-1, 0\]"),
        ({"popularity": [30, 1]}, r"num_users=10 with a creator of popularity 30"),
    ],
)
def test_bad_arrays_are_refused_naming_the_value(change, message):
    with pytest.raises(ConfigError, match=message):
        Catalog.build(**{**BASE, **change}, num_users=10)


def test_arrays_are_normalised_and_later_creators_it_lacks_are_dropped():
    catalog = Catalog.build(
        **BASE, num_users=10, history=(["f"], [1]), later=(["f", "f"], ["b", "zz"], [T0, np.inf])
    )
    np.testing.assert_allclose(catalog.embeddings, [[1, 0], [0, 1]])
    assert catalog.later.rows.tolist() == [1] and catalog.later.dropped == 1
    assert catalog.rows(["b", "q", "a"]).tolist() == [1, -1, 0]
    with pytest.raises(ConfigError, match=r"2 fan ids, 1 creator ids and 2 times"):
        catalog.interactions(["f", "g"], ["a"], [T0, T0])
