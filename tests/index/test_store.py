"""The versioned store: loading verifies everything it serves, and refuses clearly otherwise."""

import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from common import errors
from index import store, tune


@pytest.fixture
def root(published, tmp_path) -> Path:
    """A private copy of the published store."""
    copy = tmp_path / "store"
    shutil.copytree(published.store, copy)
    return copy


def index_file(root: Path) -> Path:
    return store.versions_dir(root) / store.current_version(root) / store.INDEX_FILE


def test_load_serves_the_tuned_index_in_creator_indices(published):
    loaded = store.load(published.store, use_gpu=False)
    m = loaded.manifest
    assert loaded.version == store.current_version(Path(published.store))
    assert (m["kind"], m["count"], loaded.index.ntotal) == (store.KIND, 300, 300)
    assert m["search_params"] == m["tuning"]["chosen"]["params"]
    if "nprobe" in m["search_params"]:
        assert faiss.extract_index_ivf(loaded.index).nprobe == m["search_params"]["nprobe"]
    folder = loaded.folder
    xb = np.load(folder / "embeddings.npy", allow_pickle=False)
    xq = np.load(folder / "queries.npy", allow_pickle=False)
    creators = loaded.search(xq, 10)[1]
    truth = faiss.knn(xq, xb, 10, faiss.METRIC_INNER_PRODUCT)[1]
    # the served results are the tuned ones: same recall as measured, in vocabulary indices
    recall = tune.recall_at_k(creators, loaded.creator_idx[truth], 10)
    assert recall == pytest.approx(m["tuning"]["chosen"]["recall"], abs=1e-9)
    assert creators.min() >= 2 and set(m["files"]) >= {store.INDEX_FILE, "config.yaml"}


def test_a_corrupted_index_file_is_refused(root):
    path = index_file(root)
    payload = bytearray(path.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    path.write_bytes(bytes(payload))
    with pytest.raises(errors.IntegrityError, match=r"index\.faiss is .*corrupted or truncated"):
        store.load(root, use_gpu=False)


def test_a_truncated_index_file_is_refused_even_unverified(root):
    path = index_file(root)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(errors.IntegrityError, match=r"index\.faiss is \d+ bytes.*truncated"):
        store.load(root, use_gpu=False)
    with pytest.raises(errors.IntegrityError, match=r"cannot be read as a faiss index"):
        store.load(root, verify=False, use_gpu=False)


def test_an_index_for_another_model_is_refused(root):
    built_for = store.read_manifest(root)["model"]["version"]
    assert store.load(root, expected_model_version=built_for, use_gpu=False)
    with pytest.raises(errors.IntegrityError, match=r"was built for model [0-9a-f]{12}…, not"):
        store.load(root, expected_model_version="0" * 64, use_gpu=False)


def test_a_pointer_to_a_missing_version_is_refused(root):
    shutil.rmtree(store.versions_dir(root) / store.current_version(root))
    with pytest.raises(errors.IntegrityError, match=r"names '.*' but .* does not exist"):
        store.load(root, use_gpu=False)
    with pytest.raises(errors.IntegrityError, match=r"is not a published version"):
        store.set_current(root, "nope")
    (root / store.POINTER).unlink()
    with pytest.raises(errors.MissingInputError, match=r"no current index"):
        store.load(root, use_gpu=False)


def test_prune_keeps_the_newest_and_never_the_current(root):
    current = store.current_version(root)
    older, newer = "v00000-20000101T000000Z-aaaaaaaa", "v00009-20000101T000000Z-bbbbbbbb"
    for name in (older, newer):
        shutil.copytree(store.versions_dir(root) / current, store.versions_dir(root) / name)
    assert store.new_version_name(root, "c" * 64).startswith("v00010-")
    assert store.prune(root, keep=1) == [older]  # newer is kept, current always
    assert store.list_versions(root) == [current, newer]


def test_one_rebuild_at_a_time(root):
    with store.lock(root), pytest.raises(errors.BusyError, match=r"another rebuild holds"):  # noqa: SIM117
        with store.lock(root):
            pass
