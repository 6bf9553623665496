"""The online feature store (serving/features/): both backends against what training read, the
materialise job, and the Redis backend against a real redis-server
(tests/serving/redis_server.py)."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import errors
from data import tables
from data.contract import UNK
from serving.features import open_store
from serving.features.base import (
    ARRAYS,
    FeatureStore,
    FeatureStoreError,
    FeatureStoreUnavailable,
    UserFeaturesBatch,
    check_hashing,
)
from serving.features.embedded import EmbeddedStore, read_manifest
from serving.features.materialise import materialise
from serving.features.redis_store import RedisStore
from tests.serving import redis_server as rs

BACKENDS = ["embedded", "redis_store"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A prepared synthetic dataset (1,500 users, no creator text: about a second)."""
    from data.prepare import prepare
    from tests.data.helpers import synthetic_config

    out = tmp_path_factory.mktemp("features") / "data"
    overrides = {"source.num_events": 20_000, "shards.record_size": 64}
    return prepare(synthetic_config(out, **overrides), progress=False)


@pytest.fixture(scope="module")
def store_dir(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("features") / "store"
    materialise(dataset, out)
    return out


@pytest.fixture(scope="module")
def users(dataset) -> dict[str, int]:
    """user_id → user_idx of every real user (the <pad>/<unk> rows left out)."""
    t = pq.read_table(dataset / tables.USERS, columns=["user_id", "user_idx"]).to_pydict()
    return {u: i for u, i in zip(t["user_id"], t["user_idx"], strict=True) if i >= 2}


@pytest.fixture(scope="module")
def training_view(dataset):
    """The users exactly as training reads them (data.tables, the data module's defaults)."""
    return tables.UserFeatures.from_table(dataset / tables.USERS)


@pytest.fixture(scope="module")
def embedded(store_dir):
    store = EmbeddedStore.open(store_dir)
    yield store
    store.close()


@pytest.fixture(scope="module")
def redis():
    if rs.REDIS_SERVER is None:
        pytest.skip(rs.MISSING_REASON)
    with rs.redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def redis_store(redis, store_dir):
    RedisStore.load(store_dir, redis.url, namespace="main")
    store = RedisStore(redis.url, namespace="main", timeout=1.0)
    yield store
    store.close()


def assert_same(got: UserFeaturesBatch, want: UserFeaturesBatch) -> None:
    assert got.version == want.version
    for field in ("user_idx", "known", "trained", "history", "attributes"):
        a, b = getattr(got, field), getattr(want, field)
        assert a.dtype == b.dtype and a.shape == b.shape, field
        assert a.tobytes() == b.tobytes(), field
    assert len(got.followed) == len(want.followed)
    for a, b in zip(got.followed, want.followed, strict=True):
        assert a.dtype == b.dtype == np.int64 and np.array_equal(a, b)


def test_manifest_counts_reconcile(store_dir, dataset, users):
    from common.artifacts import sha256_file
    from data import manifest as data_manifest

    m = read_manifest(store_dir, verify=True)
    source = data_manifest.load(dataset)
    table_rows = pq.read_metadata(dataset / tables.USERS).num_rows
    train = pq.read_table(dataset / tables.TRAIN, columns=["user_idx", "creator_idx"]).to_pydict()
    c = m["counts"]
    assert c["users_in"] == table_rows == c["users"] + c["reserved_rows"]
    assert c["users"] == len(users)
    assert c["train_pairs"] == source["counts"]["train_pairs"] == len(train["user_idx"])
    distinct = set(zip(train["user_idx"], train["creator_idx"], strict=True))
    assert c["followed_pairs"] == c["distinct_train_pairs"] == len(distinct)
    assert sorted(m["files"]) == sorted(f"{name}.npy" for name in ARRAYS)
    assert m["source"]["manifest_sha256"] == sha256_file(dataset / "manifest.json")
    assert (m["attribute_buckets"], m["attribute_width"], m["history_len"]) == (4096, 8, 8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_features_are_what_training_read(backend, request, users, training_view):
    """Byte for byte, for every user, including the UNK mapping of untrained users."""
    import torch

    store = request.getfixturevalue(backend)
    ids = list(users)
    idx = torch.tensor([users[u] for u in ids])
    batch = store.lookup(ids)
    assert batch.known.all() and batch.user_idx.tolist() == idx.tolist()
    assert np.array_equal(batch.trained, training_view.trained[idx])
    assert batch.trained.any() and not batch.trained.all()  # both kinds of user are covered
    creators = 1 << 30  # every history item has a row: the rule keeps them all
    want = training_view.inputs(idx.numpy(), creators)
    got = batch.inputs(creators)
    for key in ("user", "history", "attributes"):
        assert got[key].dtype == want[key].dtype and got[key].tobytes() == want[key].tobytes()
    assert (batch.attributes > 0).any() and (batch.history > 0).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_followed_are_the_distinct_train_pairs(backend, request, dataset, users):
    store = request.getfixturevalue(backend)
    train = pq.read_table(dataset / tables.TRAIN, columns=["user_idx", "creator_idx"]).to_pydict()
    want: dict[int, set] = {}
    for u, c in zip(train["user_idx"], train["creator_idx"], strict=True):
        want.setdefault(u, set()).add(c)
    ids = list(users)
    batch = store.lookup(ids)
    for uid, followed in zip(ids, batch.followed, strict=True):
        assert followed.tolist() == sorted(want.get(users[uid], ())), uid


def test_backends_give_identical_batches(embedded, redis_store, users):
    ids = [*users, "nobody", "", "<unk>"]
    order = np.random.default_rng(0).permutation(len(ids))
    ids = [ids[i] for i in order] + ids[:5]  # shuffled, with repeats
    assert_same(redis_store.lookup(ids), embedded.lookup(ids))
    assert redis_store.version == embedded.version


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_ids_come_back_unknown(backend, request, users):
    store = request.getfixturevalue(backend)
    known = next(iter(users))
    ids = ["nobody", "", "<unk>", "<pad>", "fän 🎵", known]
    b = store.lookup(ids)
    assert b.known.tolist() == [False] * 5 + [True]
    assert b.user_idx[:5].tolist() == [UNK] * 5 and not b.trained[:5].any()
    assert not b.history[:5].any() and not b.attributes[:5].any()
    assert all(len(f) == 0 for f in b.followed[:5])
    empty = store.lookup([])
    assert empty.history.shape == (0, 8) and empty.attributes.shape == (0, 8)
    with pytest.raises(TypeError, match="user id 42 is a int"):
        store.lookup(["a", 42])


def test_embedded_lookup_is_fast(embedded, users):
    ids = [*list(users)[:4], "nobody"]
    embedded.lookup(ids)
    times = []
    for _ in range(200):
        start = time.perf_counter()
        embedded.lookup(ids)
        times.append(time.perf_counter() - start)
    # Measured about 30 µs; the bound leaves room for a busy 2-core CI machine.
    assert np.median(times) < 1e-3


def test_a_corrupted_or_truncated_file_is_refused(store_dir, tmp_path):
    bad = tmp_path / "store"
    shutil.copytree(store_dir, bad)
    history = bad / "history.npy"
    raw = bytearray(history.read_bytes())
    raw[-3] ^= 0xFF
    history.write_bytes(bytes(raw))
    with pytest.raises(FeatureStoreError, match=r"history\.npy is corrupted"):
        EmbeddedStore.open(bad)
    EmbeddedStore.open(bad, verify=False).close()  # same size: only the checksum can tell
    attributes = bad / "attributes.npy"
    attributes.write_bytes(attributes.read_bytes()[:-8])
    with pytest.raises(FeatureStoreError, match=r"attributes\.npy is \d+ bytes.*truncated"):
        EmbeddedStore.open(bad, verify=False)
    with pytest.raises(
        FeatureStoreError, match=r"nothing/manifest\.json not found: is .* a feature store"
    ):
        EmbeddedStore.open(tmp_path / "nothing")


def test_materialise_is_atomic(dataset, store_dir, tmp_path, monkeypatch):
    out = tmp_path / "store"
    shutil.copytree(store_dir, out)
    before = read_manifest(out)
    real_save, calls = np.save, []

    def save_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full (injected)")
        real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", save_then_fail)
    with pytest.raises(OSError, match="injected"):
        materialise(dataset, out, attribute_buckets=1024)
    with pytest.raises(OSError, match="injected"):
        calls.clear()
        materialise(dataset, tmp_path / "fresh")
    monkeypatch.undo()
    assert read_manifest(out, verify=True) == before  # the previous store, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no staging, no half folder


def _copy_dataset(dataset: Path, to: Path) -> Path:
    (to / "tables").mkdir(parents=True)
    shutil.copy(dataset / "manifest.json", to)
    for name in ("users.parquet", "train.parquet"):
        shutil.copy(dataset / "tables" / name, to / "tables")
    return to


def test_bad_input_is_refused_with_what_to_do(dataset, tmp_path):
    with pytest.raises(FeatureStoreError, match=r"manifest\.json not found.*python -m data"):
        materialise(tmp_path / "nowhere", tmp_path / "out")
    missing = _copy_dataset(dataset, tmp_path / "missing")
    (missing / tables.USERS).unlink()
    with pytest.raises(FeatureStoreError, match=r"users\.parquet not found.*re-run"):
        materialise(missing, tmp_path / "out")
    columns = _copy_dataset(dataset, tmp_path / "columns")
    pq.write_table(
        pq.read_table(columns / tables.USERS).drop_columns(["history"]), columns / tables.USERS
    )
    with pytest.raises(FeatureStoreError, match=r"no column\(s\) \['history'\]; columns are"):
        materialise(columns, tmp_path / "out")
    changed = _copy_dataset(dataset, tmp_path / "changed")
    train = pq.read_table(changed / tables.TRAIN)
    pq.write_table(pa.concat_tables([train, train.slice(0, 1)]), changed / tables.TRAIN)
    with pytest.raises(FeatureStoreError, match=r"train\.parquet differs from .*manifest"):
        materialise(changed, tmp_path / "out")
    with pytest.raises(FeatureStoreError, match="attribute_buckets=2"):
        materialise(dataset, tmp_path / "out", attribute_buckets=2)
    assert not (tmp_path / "out").exists()


def test_check_hashing(embedded):
    check_hashing(embedded.manifest, 4096, 8)
    with pytest.raises(FeatureStoreError, match=r"4096 buckets × 8, the model into 1024 × 8"):
        check_hashing(embedded.manifest, 1024, 8)


def test_version_switch_under_concurrent_lookups(redis, dataset, store_dir, users, tmp_path):
    """Readers only ever see whole records of one version, none missing, while versions are
    loaded, switched and deleted under them."""
    import redis as redis_client

    folders = [store_dir]
    for name, buckets, width in (("b", 1024, 8), ("c", 4096, 4)):
        materialise(dataset, tmp_path / name, buckets, width)
        folders.append(tmp_path / name)
    expected = {s.version: s for s in map(EmbeddedStore.open, folders)}
    assert len(expected) == 3
    ns, ids = "switch", list(users)
    RedisStore.load(folders[0], redis.url, namespace=ns)
    stop, seen, errors = threading.Event(), Counter(), []

    def read(seed: int) -> None:
        # A long timeout: this test is about atomicity, and the machine is busy.
        store = RedisStore(redis.url, namespace=ns, timeout=5.0)
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                batch_ids = [ids[i] for i in rng.integers(0, len(ids), 32)]
                got = store.lookup(batch_ids)
                assert got.known.all()
                assert_same(got, expected[got.version].lookup(batch_ids))
                seen[got.version] += 1
        except Exception as e:
            errors.append(e)
        finally:
            store.close()

    readers = [threading.Thread(target=read, args=(seed,)) for seed in range(2)]
    for t in readers:
        t.start()
    results = [
        RedisStore.load(folder, redis.url, namespace=ns, batch=100)
        for folder in [*folders[1:], *folders, folders[1]]  # b c a b c b
    ]
    time.sleep(0.05)
    stop.set()
    for t in readers:
        t.join(timeout=30)
    assert not errors, errors[0]
    assert len(seen) >= 2 and sum(seen.values()) > 20, seen
    # The last load found b whole as the previous version and only moved the pointer.
    assert results[-1]["written"] == 0 and results[-2]["written"] == len(users)
    assert sum(bool(r["deleted"]) for r in results) >= 3
    client = redis_client.Redis.from_url(redis.url)
    current, previous = (client.get(f"{ns}:{k}").decode() for k in ("current", "previous"))
    assert {v.decode() for v in client.smembers(f"{ns}:versions")} == {current, previous}
    for version in expected:
        keys = sum(1 for _ in client.scan_iter(match=f"{ns}:v:{version}:*", count=1000))
        assert keys == (len(users) + 1 if version in (current, previous) else 0), version
    client.close()


def test_a_dead_or_hung_redis_fails_fast(store_dir, users):
    if rs.REDIS_SERVER is None:
        pytest.skip(rs.MISSING_REASON)
    ids = list(users)[:8]
    with rs.redis_server() as server:
        RedisStore.load(store_dir, server.url)
        store = RedisStore(server.url, timeout=0.05)
        assert store.lookup(ids).known.all() and store.ping()
        server.pause()  # accepts connections, answers nothing
        start = time.perf_counter()
        with pytest.raises(FeatureStoreUnavailable, match="Timeout"):
            store.lookup(ids)
        assert not store.ping()
        assert time.perf_counter() - start < 0.5
        server.resume()
        assert store.lookup(ids).known.all()  # recovers without a new client
        server.stop()
        start = time.perf_counter()
        with pytest.raises(FeatureStoreUnavailable, match="Connection"):
            store.lookup(ids)
        with pytest.raises(FeatureStoreUnavailable, match=r"Redis at redis://127\.0\.0\.1"):
            RedisStore(server.url)
        assert time.perf_counter() - start < 0.5
        store.close()
    assert server.process.poll() is not None  # nothing left running


def test_an_empty_redis_is_unavailable_with_what_to_do(redis):
    with pytest.raises(FeatureStoreUnavailable, match=r"nothing loaded.*serving materialise"):
        RedisStore(redis.url, namespace="empty")


def test_open_store_picks_the_backend(store_dir, redis_store, redis):
    embedded = open_store(str(store_dir))
    remote = open_store(redis.url, namespace="main")
    assert isinstance(embedded, EmbeddedStore) and isinstance(remote, RedisStore)
    assert isinstance(embedded, FeatureStore) and isinstance(remote, FeatureStore)
    assert embedded.version == remote.version
    embedded.close()
    remote.close()


def test_cli(dataset, tmp_path, redis, capsys):
    """`python -m serving materialise` through the real entry point: exit codes of
    common.errors, one FAILED line naming the cause."""
    from serving.__main__ import main

    out = tmp_path / "store"
    args = ["materialise", "--data", str(dataset), "--output", str(out), "--attribute-width", "4"]
    assert main([*args, "--redis", redis.url]) == errors.OK
    printed = capsys.readouterr().out
    version = read_manifest(out)["version"]
    assert f"feature store {version}: 1,500 users" in printed
    assert f"towerline:current = {version}" in printed
    bad = ["materialise", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x")]
    assert main(bad) == errors.BAD_INPUT
    assert "FAILED (exit 2) FeatureStoreError" in capsys.readouterr().out
    dead = f"redis://127.0.0.1:{rs._free_port()}/0"
    assert main([*args, "--redis", dead]) == errors.UNAVAILABLE
    assert "Connection refused" in capsys.readouterr().out
