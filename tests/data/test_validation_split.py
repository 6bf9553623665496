"""A validation split carved out of train by the test split's own rule (split.validation_fraction):
model selection reads it, never test. The test pairs are the same with or without it, the three
tables are disjoint, and nothing the model trains on (shards, histories, popularity) sees a
validation pair."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import config
from data import manifest
from data.config import PrepareConfig
from data.prepare import prepare
from data.shards import iter_records
from tests.data.helpers import synthetic_config


def pairs(folder, name: str) -> set[tuple[int, int]]:
    t = pq.read_table(folder / "tables" / f"{name}.parquet")
    return set(zip(t["user_idx"].to_pylist(), t["creator_idx"].to_pylist(), strict=True))


def build(tmp_path_factory, name: str, **overrides):
    out = tmp_path_factory.mktemp(name) / "ds"
    prepare(synthetic_config(out, **overrides), progress=False)
    return out


@pytest.fixture(scope="module")
def by_time(tmp_path_factory):
    return (build(tmp_path_factory, "time"),
            build(tmp_path_factory, "time-val", **{"split.validation_fraction": 0.2}))  # fmt: skip


@pytest.fixture(scope="module")
def per_user(tmp_path_factory):
    split = {"split.kind": "per_user", "split.test_fraction": 0.2}
    carved = {**split, "split.validation_fraction": 0.25}
    return build(tmp_path_factory, "user", **split), build(tmp_path_factory, "user-val", **carved)


def check_disjoint_and_train_only(folder) -> tuple[set, set, set]:
    train, val, test = (pairs(folder, n) for n in ("train", "validation", "test"))
    assert val and not (train & val) and not (train & test) and not (val & test)
    m = manifest.load(folder)
    assert m["counts"]["validation_pairs"] == len(val) and m["counts"]["train_pairs"] == len(train)
    seen = set()
    for rec in iter_records(folder / "shards"):
        for u, c, hist in zip(rec["user"].tolist(), rec["creator"].tolist(),
                              rec["history"].tolist(), strict=True):  # fmt: skip
            seen.add((u, c))
            assert not {(u, h) for h in hist if h > 0} & val
    assert seen == train  # the examples are train's, every one
    users = pq.read_table(folder / "tables" / "users.parquet")
    for u, hist in zip(users["user_idx"].to_pylist(), users["history"].to_pylist(), strict=True):
        assert not {(u, h) for h in hist if h > 0} & val  # what serving sees of the fan
    return train, val, test


def test_a_time_split_holds_out_trains_last_events_before_the_test_cut(by_time):
    plain, carved = by_time
    train, val, test = check_disjoint_and_train_only(carved)
    assert test == pairs(plain, "test")  # the test set does not move
    assert train | val == pairs(plain, "train")  # validation is train's, carved out
    m = manifest.load(carved)["split"]
    cut, val_cut = (np.datetime64(m[k].replace("+00:00", ""), "ms").astype(np.int64)
                    for k in ("cut", "validation_cut"))  # fmt: skip
    ts = {n: pq.read_table(carved / "tables" / f"{n}.parquet")["ts"].to_numpy()
          for n in ("train", "validation", "test")}  # fmt: skip
    assert ts["train"].max() < val_cut <= ts["validation"].min()
    assert ts["validation"].max() < cut <= ts["test"].min()
    assert 0.1 < len(val) / (len(train) + len(val)) < 0.3  # ~20 % of train's events


def test_a_per_user_split_holds_out_a_share_of_each_users_train_pairs(per_user):
    plain, carved = per_user
    train, val, test = check_disjoint_and_train_only(carved)
    assert test == pairs(plain, "test")  # drawn first, from all of a user's pairs, as before
    assert train | val == pairs(plain, "train")
    assert 0.2 < len(val) / (len(train) + len(val)) < 0.3


def test_a_given_split_carves_validation_from_the_sources_train_lines(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"c{c}", "test" if i % 5 == 0 else "train")
            for u in range(60)
            for i, c in enumerate(rng.choice(40, 10, replace=False))]  # fmt: skip
    users, creators, side = (list(x) for x in zip(*rows, strict=True))
    n = len(rows)
    pq.write_table(pa.table({
        "user_id": users, "creator_id": creators, "event_type": ["follow"] * n,
        "timestamp": pa.array(np.full(n, 1_700_000_000_000), pa.timestamp("ms", tz="UTC")),
        "value": [1.0] * n, "split": side,
    }), tmp_path / "lines.parquet")  # fmt: skip
    cfg = config.load(PrepareConfig, values={
        "name": "given", "output": str(tmp_path / "out"),
        "source": {"kind": "parquet", "interactions_path": str(tmp_path / "lines.parquet")},
        "split": {"kind": "given", "validation_fraction": 0.25},
        "shards": {"record_size": 4, "num_shards": 8}, "reference_time": "2026-01-01T00:00:00Z",
    })  # fmt: skip
    out = prepare(cfg, progress=False)
    train, val, test = check_disjoint_and_train_only(out)
    assert len(test) == 60 * 2  # the source's test lines, untouched
    assert len(val) == 60 * 2 and len(train) == 60 * 6  # round(8 × 0.25) of each user's train


def test_a_validation_share_outside_0_to_1_is_refused_naming_the_flag():
    from common.errors import ConfigError
    from data.config import SplitConfig

    with pytest.raises(ConfigError, match=r"--split.validation_fraction=1.0 must be in \[0, 1\)"):
        SplitConfig(validation_fraction=1.0)
