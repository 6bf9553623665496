"""Shards: balanced records, disjoint equal shares per rank, atomic and verifiable files."""

import numpy as np
import pytest
import torch

from data import manifest
from data.prepare import prepare
from data.shards import iter_records, record_dataset, shard_paths, shards_for_rank
from tests.data.helpers import synthetic_config


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "ds"
    return prepare(synthetic_config(out, **{"shards.num_shards": 16}), progress=False)


def _keys(records):
    """Each example as (shard record key, position) → (user, creator), to test disjointness."""
    return [
        (int(u), int(c), tuple(h))
        for r in records
        for u, c, h in zip(r["user"], r["creator"], r["history"], strict=True)
    ]


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_ranks_read_disjoint_data_and_equal_batch_counts(built, world_size):
    shards = built / "shards"
    per_rank = [list(iter_records(shards, rank, world_size)) for rank in range(world_size)]
    counts = [len(r) for r in per_rank]
    assert len(set(counts)) == 1, f"unequal records per rank: {counts}"
    shard_sets = [
        set(shards_for_rank(shard_paths(shards), r, world_size)) for r in range(world_size)
    ]
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not shard_sets[a] & shard_sets[b]
    everything = sorted(_keys(list(iter_records(shards))))
    assert sorted(k for recs in per_rank for k in _keys(recs)) == everything
    m = manifest.load(built)
    assert sum(counts) == m["shards"]["count"] * m["shards"]["records_per_shard"]


def test_records_are_pre_batched_with_the_declared_shapes(built):
    m = manifest.load(built)
    rec = next(iter_records(built / "shards"))
    size, hist = m["shards"]["record_size"], m["config"]["features"]["history_length"]
    assert rec["user"].shape == (size,) and rec["user"].dtype == np.int32
    assert rec["history"].shape == (size, hist) and rec["history"].dtype == np.int32
    assert rec["weight"].dtype == np.float32 and rec["ts"].dtype == np.int64
    assert (rec["creator"] >= 2).all()  # never padding or unknown


def test_dataloader_workers_split_a_ranks_shards(built):
    dataset = record_dataset(built / "shards", rank=1, world_size=2, shuffle_shards=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    with_workers = sorted(_keys(loader))
    alone = sorted(_keys(iter_records(built / "shards", 1, 2)))
    assert with_workers == alone


def test_uneven_split_is_refused_with_the_fix(built):
    with pytest.raises(ValueError, match="multiple of 3"):
        shards_for_rank(shard_paths(built / "shards"), 0, 3)


def test_a_truncated_shard_fails_verification(built, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    shard = copy / "shards" / "train-00003.tar"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"shards/train-00003\.tar"):
        manifest.load(copy, verify=True)
