"""prepare end to end on the synthetic source: determinism, no leakage, stable vocabularies,
crash safety."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from common.artifacts import checksums
from data import manifest
from data.prepare import prepare
from data.shards import iter_records
from tests.data.helpers import synthetic_config


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "ds"
    prepare(synthetic_config(out), progress=False)
    return out


def test_same_input_and_seed_give_identical_shards_and_checksums(built, tmp_path, monkeypatch):
    again = prepare(synthetic_config(tmp_path / "again"), progress=False)
    first, second = manifest.load(built)["files"], manifest.load(again)["files"]
    assert first == second
    shards = [k for k in first if k.startswith("shards/")]
    assert len(shards) == 8
    # Spilling between passes to temp files (large sources) or keeping the data in memory
    # (small ones) must not change a byte.
    on_disk = prepare(synthetic_config(tmp_path / "disk", spill_above_rows=0), progress=False)
    assert manifest.load(on_disk)["files"] == first
    # Large vocabularies are looked up through the fingerprint index instead of Arrow's hash
    # kernels: same indices, same bytes.
    monkeypatch.setattr("data.vocab._ARROW_LOOKUP_UP_TO", 0)
    fingerprinted = prepare(synthetic_config(tmp_path / "fp"), progress=False)
    assert manifest.load(fingerprinted)["files"] == first
    monkeypatch.undo()
    other = prepare(synthetic_config(tmp_path / "other", **{"source.seed": 8}), progress=False)
    assert (
        manifest.load(other)["files"]["shards/train-00000.tar"] != first["shards/train-00000.tar"]
    )


def test_manifest_counts_reconcile_and_checksums_verify(built):
    m = manifest.load(built, verify=True)
    i = m["counts"]["interactions"]
    assert i["in"] == 40_000 == i["accepted"] + i["quarantined"]
    assert (
        m["counts"]["events_by_type"]
        and sum(m["counts"]["events_by_type"].values()) == i["accepted"]
    )
    sh = m["shards"]
    assert (
        sh["count"] * sh["records_per_shard"] * sh["record_size"]
        == sh["examples"] + sh["padded_examples"]
    )
    assert 0 <= sh["padded_examples"] < sh["count"] * sh["record_size"]
    assert m["schema_version"] == 1 and m["created_by"]["pyarrow"]
    assert m["vocab"]["users"]["size"] > 2 and m["files"]["tables/train.parquet"]["sha256"]


def _columns(path, *names):
    t = pq.read_table(path)
    return [t.column(n).to_numpy() for n in names]


def test_no_test_interaction_leaks_into_training(built):
    m = manifest.load(built)
    tu, tc, tts = _columns(built / "tables" / "train.parquet", "user_idx", "creator_idx", "ts")
    vu, vc, vts = _columns(built / "tables" / "test.parquet", "user_idx", "creator_idx", "ts")
    assert len(tu) and len(vu)
    cut = np.datetime64(m["split"]["cut"].replace("+00:00", ""), "ms").astype(np.int64)
    assert tts.max() < cut <= vts.min()
    first_ts = dict(zip(zip(tu.tolist(), tc.tolist(), strict=True), tts.tolist(), strict=True))
    test_keys = set(zip(vu.tolist(), vc.tolist(), strict=True))
    assert not set(first_ts) & test_keys
    # Every history entry is a train creator of that user from no later than the example.
    checked = 0
    for rec in iter_records(built / "shards"):
        for u, c, hist, ts in zip(
            rec["user"].tolist(),
            rec["creator"].tolist(),
            rec["history"].tolist(),
            rec["ts"].tolist(),
            strict=True,
        ):
            assert (u, c) in first_ts
            for h in (h for h in hist if h > 0):
                assert (u, h) not in test_keys and first_ts[(u, h)] <= ts
                checked += 1
    assert checked > 1000
    # Popularity and the serving history come from train only.
    idx, count = _columns(built / "tables" / "creators.parquet", "creator_idx", "train_count")
    assert np.array_equal(count[idx], np.bincount(tc, minlength=len(idx)))
    users = pq.read_table(built / "tables" / "users.parquet")
    for u, hist in zip(
        users.column("user_idx").to_pylist(), users.column("history").to_pylist(), strict=True
    ):
        assert all((u, h) in first_ts for h in hist if h > 0)


def test_vocabulary_is_stable_when_a_rebuild_adds_users_and_creators(built, tmp_path):
    small = prepare(
        synthetic_config(
            tmp_path / "v1",
            **{"source.num_events": 10_000, "source.num_users": 600, "source.num_creators": 120},
        ),
        progress=False,
    )
    grown = synthetic_config(tmp_path / "v2", vocab_from=str(small))
    out = prepare(grown, progress=False)
    for name in ("users", "creators", "categories", "tags"):
        old = pq.read_table(small / "vocab" / f"{name}.parquet").column("id").to_pylist()
        new = pq.read_table(out / "vocab" / f"{name}.parquet").column("id").to_pylist()
        assert new[: len(old)] == old, f"{name}: existing ids were renumbered"
        assert new[:2] == ["<pad>", "<unk>"]
        assert len(set(new)) == len(new)
    assert len(pq.read_table(out / "vocab" / "creators.parquet")) > 120
    m = manifest.load(out)
    assert m["vocab"]["users"]["previous_size"] == len(
        pq.read_table(small / "vocab" / "users.parquet")
    )
    # Rebuilding into the same folder extends that folder's own vocabulary by default.
    again = prepare(synthetic_config(small), progress=False)
    assert (
        pq.read_table(again / "vocab" / "users.parquet").column("id").to_pylist()[:600]
        == pq.read_table(out / "vocab" / "users.parquet").column("id").to_pylist()[:600]
    )


def test_a_crash_mid_prepare_leaves_the_previous_dataset_whole(built, tmp_path, monkeypatch):
    out = prepare(synthetic_config(tmp_path / "ds"), progress=False)
    before = checksums(out)
    calls = {"n": 0}
    import data.prepare as prep

    real = prep.write_shard

    def crash_after_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(prep, "write_shard", crash_after_three)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare(synthetic_config(out, **{"source.seed": 99}), progress=False)
    assert checksums(out) == before
    manifest.load(out, verify=True)
    leftovers = [p.name for p in out.parent.iterdir() if p.name != out.name]
    assert leftovers == [], f"staging or temp files left behind: {leftovers}"


def test_manifest_is_plain_json_and_cli_prints_it(built, capsys):
    from data.__main__ import main

    assert main(["manifest", str(built), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "interactions  in 40,000" in printed and "checksums match" in printed
    json.loads((built / "manifest.json").read_text())


def test_train_pairs_never_see_events_after_the_cut(tmp_path):
    """A follow before the cut and a paid membership after it: the train example keeps the
    follow's weight, and the pair is not a test pair (the fan already knew the creator)."""
    from common import config
    from data.config import PrepareConfig

    rows = ["user_id,creator_id,event_type,timestamp,value"]
    for day in range(1, 29):  # enough early positives that the cut falls in February
        rows.append(f"fan{day},cr1,follow,2024-01-{day:02d}T00:00:00Z,1")
    rows += [
        "fan1,cr2,follow,2024-01-05T00:00:00Z,1",
        "fan1,cr2,paid_membership,2024-03-01T00:00:00Z,10",  # after the cut
        "fan1,cr3,paid_membership,2024-03-02T00:00:00Z,10",  # new creator after the cut
    ]
    (tmp_path / "i.csv").write_text("\n".join(rows) + "\n")
    cfg = config.load(
        PrepareConfig,
        values={
            "name": "cut",
            "output": str(tmp_path / "out"),
            "source": {"kind": "csv", "interactions_path": str(tmp_path / "i.csv")},
            "split": {"kind": "time", "test_fraction": 0.1},
            "shards": {"record_size": 4, "num_shards": 8},
            "reference_time": "2026-01-01T00:00:00Z",
        },
    )
    out = prepare(cfg, progress=False)
    vocab = pq.read_table(out / "vocab" / "creators.parquet").column("id").to_pylist()
    train = pq.read_table(out / "tables" / "train.parquet").to_pylist()
    test = pq.read_table(out / "tables" / "test.parquet").to_pylist()
    fan1 = pq.read_table(out / "vocab" / "users.parquet").column("id").to_pylist().index("fan1")
    cr2, cr3 = vocab.index("cr2"), vocab.index("cr3")
    (pair,) = [p for p in train if p["user_idx"] == fan1 and p["creator_idx"] == cr2]
    assert pair["weight"] == 1.0  # the follow's weight, not the later membership's 3.0
    test_pairs = {(p["user_idx"], p["creator_idx"]) for p in test}
    assert (fan1, cr3) in test_pairs and (fan1, cr2) not in test_pairs


def test_user_table_history_can_be_longer_than_the_example_history(built, tmp_path):
    """features.user_history_length widens what a request sees without widening the shards:
    the last 8 creators of the wide table equal the default table's 8."""
    wide = prepare(
        synthetic_config(tmp_path / "wide", **{"features.user_history_length": 20}),
        progress=False,
    )
    narrow_t = pq.read_table(built / "tables" / "users.parquet", columns=["user_idx", "history"])
    wide_t = pq.read_table(wide / "tables" / "users.parquet", columns=["user_idx", "history"])
    narrow = np.stack(narrow_t["history"].to_numpy(zero_copy_only=False))
    long = np.stack(wide_t["history"].to_numpy(zero_copy_only=False))
    assert narrow.shape[1] == 8 and long.shape[1] == 20
    np.testing.assert_array_equal(long[:, -8:], narrow)
    assert (long[:, :-8] > 0).any()  # some users have more than 8 training creators
    record = next(iter_records(wide / "shards"))
    assert record["history"].shape[1] == 8
