"""Drift between index versions (index.drift) and its gate in the rebuild job.

The figures against slow references and hand-worked values: Procrustes recovers a planted
rotation, overlap@k, Kendall's tau-b over the union, the AUC, neighbours and the fans' lists.
Then the job on the tiny model: a normal rebuild passes and records its drift; a planted drift
(the creators' id embeddings shuffled) is caught and blocks the publish; `--allow_drift true`
lets it through and records it; the first version says it had nothing to compare with.
"""

import itertools
import json
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import kendalltau

from common import config, errors
from index import drift, rebuild, store
from index.__main__ import main
from index.config import DriftConfig, IndexConfig
from tests.conftest import REPO
from tests.index.conftest import index_config

M = drift.MISSING


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


# ---- alignment and shift ----------------------------------------------------------------------


def test_procrustes_recovers_a_planted_rotation():
    x = unit(np.random.default_rng(0).standard_normal((400, 16)))
    q = random_rotation(16, seed=1)
    y = x @ q
    r = drift.procrustes(x, y)
    np.testing.assert_allclose(r, q, atol=1e-4)
    assert drift.cosine_shift(x @ r, y).max() < 1e-5  # ~0 once aligned
    assert drift.cosine_shift(x, y).mean() > 0.5  # the axes alone differ a lot


def test_procrustes_across_widths_and_with_noise():
    rng = np.random.default_rng(2)
    x = unit(rng.standard_normal((300, 8)))
    semi = random_rotation(12, seed=3)[:8]  # 8 orthonormal rows in 12 dimensions
    y = x @ semi
    assert drift.cosine_shift(x @ drift.procrustes(x, y), y).max() < 1e-5
    noisy = unit(x @ random_rotation(8, 4) + 0.05 * rng.standard_normal((300, 8)))
    shift = drift.cosine_shift(x @ drift.procrustes(x, noisy), noisy).mean()
    assert 0 < shift < 0.02


def test_cosine_shift_by_hand():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]], np.float32)
    b = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], np.float32)
    np.testing.assert_allclose(drift.cosine_shift(a, b), [0.0, 1.0, 2.0], atol=1e-7)


# ---- overlap and rank correlation -------------------------------------------------------------


def slow_overlap(a: list, b: list, k: int) -> float:
    return len({x for x in a if x != M} & {x for x in b if x != M}) / k


def slow_tau_b(a: list, b: list, k: int) -> float:
    """Kendall's tau-b from its textbook form, (C − D) / sqrt((n0 − n1)(n0 − n2)) with n1, n2
    the pairs tied in each ranking, over the union, missing creators ranked k + 1."""
    union = [x for x in a if x != M] + [x for x in b if x != M and x not in a]
    rank_a = {x: a.index(x) + 1 if x in a else k + 1 for x in union}
    rank_b = {x: b.index(x) + 1 if x in b else k + 1 for x in union}
    concordant = discordant = 0
    for i, j in itertools.combinations(union, 2):
        product = (rank_a[i] - rank_a[j]) * (rank_b[i] - rank_b[j])
        concordant += product > 0
        discordant += product < 0
    n0 = len(union) * (len(union) - 1) / 2
    ties = [sum(t * (t - 1) / 2 for t in Counter(r.values()).values()) for r in (rank_a, rank_b)]
    den = np.sqrt((n0 - ties[0]) * (n0 - ties[1]))
    if den == 0:
        return float(a == b and any(x != M for x in a))
    return (concordant - discordant) / den


def as_array(*lists: list) -> np.ndarray:
    return np.array(lists, dtype="<U8")


@pytest.mark.parametrize(
    ("a", "b", "overlap", "tau"),
    [
        (["x", "y", "z"], ["x", "y", "z"], 1.0, 1.0),
        # pairs (x,y) (x,z) concordant, (y,z) discordant: (2 − 1) / 3
        (["x", "y", "z"], ["x", "z", "y"], 1.0, 1 / 3),
        # union x y z w, ranks a (1 2 3 4) b (1 2 4 3): only (z,w) discordant: (5 − 1) / 6
        (["x", "y", "z"], ["x", "y", "w"], 2 / 3, 2 / 3),
        # disjoint pairs: 4 cross pairs discordant, (x,y) tied in b, (z,w) tied in a: −4 / 5
        (["x", "y"], ["z", "w"], 0.0, -0.8),
        # a short list: union x y, a ranks (1, 3), b ranks (2, 1): one discordant pair
        (["x", M], ["y", "x"], 0.5, -1.0),
    ],
)
def test_overlap_and_rank_correlation_by_hand(a, b, overlap, tau):
    k = len(a)
    assert drift.overlap_at_k(as_array(a), as_array(b), k)[0] == pytest.approx(overlap)
    assert drift.rank_correlation(as_array(a), as_array(b), k)[0] == pytest.approx(tau)
    assert slow_tau_b(a, b, k) == pytest.approx(tau)


def test_disjoint_lists_of_ten_give_minus_100_over_145():
    a, b = [f"a{i}" for i in range(10)], [f"b{i}" for i in range(10)]
    assert drift.rank_correlation(as_array(a), as_array(b), 10)[0] == pytest.approx(-100 / 145)


def test_overlap_and_rank_correlation_against_slow_references():
    rng = np.random.default_rng(5)
    k, pool = 6, [f"c{i}" for i in range(12)]
    lists = []
    for _ in range(300):
        a, b = (rng.choice(pool, k, replace=False).tolist() for _ in range(2))
        if rng.random() < 0.3:  # a short list: the catalog ran out
            cut = int(rng.integers(0, k))
            a[cut:] = [M] * (k - cut)
        lists.append((a, b))
    A, B = as_array(*(a for a, _ in lists)), as_array(*(b for _, b in lists))
    fast_overlap, fast_tau = drift.overlap_at_k(A, B, k), drift.rank_correlation(A, B, k)
    for i, (a, b) in enumerate(lists):
        assert fast_overlap[i] == pytest.approx(slow_overlap(a, b, k))
        assert fast_tau[i] == pytest.approx(slow_tau_b(a, b, k), abs=1e-12)
        union = [x for x in a if x != M] + [x for x in b if x != M and x not in a]
        ra = [a.index(x) + 1 if x in a else k + 1 for x in union]
        rb = [b.index(x) + 1 if x in b else k + 1 for x in union]
        library = kendalltau(ra, rb, variant="b").statistic  # NaN where a list is empty
        assert fast_tau[i] == pytest.approx(library) or np.isnan(library)


# ---- neighbours, AUC and the two-sample test --------------------------------------------------


def test_neighbours_leave_the_creator_out_and_match_brute_force():
    x = unit(np.random.default_rng(6).standard_normal((60, 8)))
    rows = np.array([0, 7, 33, 59])
    found = drift.neighbours(x, rows, 5)
    scores = x[rows] @ x.T
    scores[np.arange(len(rows)), rows] = -np.inf
    np.testing.assert_array_equal(found, np.argsort(-scores, axis=1)[:, :5])


def test_auc_by_hand_and_against_all_pairs():
    assert drift.auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert drift.auc(np.array([0.5, 0.5, 0.5]), np.array([0, 1, 1])) == 0.5  # ties count ½
    rng = np.random.default_rng(7)
    scores, labels = rng.integers(0, 5, 200).astype(float), rng.random(200) < 0.4
    pairs = [(p > q) + 0.5 * (p == q) for p in scores[labels] for q in scores[~labels]]
    assert drift.auc(scores, labels) == pytest.approx(np.mean(pairs))
    with pytest.raises(ValueError, match="needs both classes"):
        drift.auc(scores, np.ones(200, bool))


def test_the_two_sample_test_sees_a_shift_and_no_difference():
    rng = np.random.default_rng(8)
    x0, x1 = unit(rng.standard_normal((2000, 16))), unit(rng.standard_normal((2000, 16)))
    same, se, held_out = drift.two_sample_auc(x0, x1, seed=0)
    assert abs(same - 0.5) < 4 * se and len(held_out["scores"]) == 2000
    assert drift.two_sample_auc(x0, x0.copy(), seed=0)[0] == pytest.approx(0.5, abs=1e-6)
    shifted = unit(x1 + 0.5 * np.eye(16, dtype=np.float32)[0])
    assert drift.two_sample_auc(x0, shifted, seed=0)[0] > 0.9


# ---- the fans' lists --------------------------------------------------------------------------


def side(xb: np.ndarray, creator_idx: np.ndarray) -> drift.Side:
    ids = np.array([f"cr{i}" for i in creator_idx])
    return drift.Side("v", Path("."), {}, xb, creator_idx.astype(np.int64), ids)


def test_top_lists_leave_the_history_out_and_match_brute_force():
    rng = np.random.default_rng(9)
    creator_idx = rng.permutation(np.arange(2, 52))  # rows need not be in vocabulary order
    s = side(unit(rng.standard_normal((50, 8))), creator_idx)
    xq = unit(rng.standard_normal((20, 8)))
    history = rng.choice(np.arange(2, 60), (20, 6))  # some past the catalog: ignored
    history[:, :2] = 0  # padding
    got = drift.top_lists(s, xq, history, 10)
    for f in range(20):
        order = np.argsort(-(s.xb @ xq[f]))
        want = [s.creator_id[r] for r in order if creator_idx[r] not in set(history[f])][:10]
        assert got[f].tolist() == want


def test_top_lists_fill_missing_slots_when_the_catalog_runs_out():
    s = side(unit(np.eye(5, dtype=np.float32)), np.arange(2, 7))
    got = drift.top_lists(s, s.xb[:1], np.array([[2, 3]]), 4)
    assert got[0].tolist()[3] == M and set(got[0][:3]) == {"cr4", "cr5", "cr6"}


def test_histories_are_cut_or_padded_in_front():
    h = np.array([[0, 0, 3, 4]])
    np.testing.assert_array_equal(drift.fit_history(h, 2), [[3, 4]])
    np.testing.assert_array_equal(drift.fit_history(h, 6), [[0, 0, 0, 0, 3, 4]])


def test_judge_names_each_breach_and_by_how_much():
    found = drift.Drift(
        {"cosine_shift": 0.3, "list_overlap": 0.6, "popularity_shift": -0.08}, {"k": 10}
    )
    cfg = DriftConfig(
        max_cosine_shift=0.2, min_list_overlap=0.5, max_popularity_shift=0.05,
        min_neighbour_overlap=0.9,  # not measured here: logged, not a breach
    )  # fmt: skip
    breaches = drift.judge(found, cfg)
    assert [b["figure"] for b in breaches] == ["cosine_shift", "popularity_shift"]
    assert [drift.describe_breach(b) for b in breaches] == [
        "cosine_shift 0.3 > max_cosine_shift 0.2 (by 0.1)",
        "|popularity_shift| 0.08 > max_popularity_shift 0.05 (by 0.03)",
    ]
    assert found.limits["max_cosine_shift"] == 0.2 and found.limits["max_two_sample_auc"] is None


# ---- the gate in the rebuild job --------------------------------------------------------------


def demo_drift() -> dict:
    """The drift thresholds the shipped demo config ships."""
    path = REPO / "configs" / "index" / "synthetic_demo.yaml"
    return config.to_dict(config.load(IndexConfig, path).drift)


@pytest.fixture
def fresh(published, tmp_path):
    """A private copy of the published store and a config with the demo's drift thresholds."""
    shutil.copytree(published.store, tmp_path / "store")
    cfg = index_config(tmp_path / "store", published.checkpoint, published.data, drift=demo_drift())
    return cfg, tmp_path / "store"


def edited_checkpoint(source: str, out: Path, edit) -> str:
    ckpt = torch.load(source, map_location="cpu", weights_only=True)
    edit(ckpt["state_dict"])
    torch.save(ckpt, out)
    return str(out)


def shuffle_creator_ids(state: dict) -> None:
    """A planted drift: every creator gets another creator's id embedding."""
    table = state["model.creator_tower.id_embedding.weight"]
    order = torch.randperm(len(table) - 2, generator=torch.Generator().manual_seed(0)) + 2
    table[2:] = table[order].clone()


def test_the_first_version_has_no_drift_to_measure(published):
    entry = store.read_manifest(Path(published.store))["drift"]
    assert entry == {"measured": False, "reason": "no current version to compare with"}


def test_a_normal_rebuild_passes_and_records_its_drift(fresh, tmp_path, capsys):
    cfg, root = fresh
    before = store.current_version(root)

    def nudge(state):  # a retrained model that changed a little
        state["model.creator_tower.out.bias"] += 0.01

    cfg.checkpoint = edited_checkpoint(cfg.checkpoint, tmp_path / "nudged.ckpt", nudge)
    path = tmp_path / "nudged.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(cfg)))
    assert main(["rebuild", "--config", str(path)]) == errors.OK
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "published" in line and f"drift from {before}: cosine shift" in line
    loaded = store.load(root, use_gpu=False)  # drift.json and drift.html are checksummed
    assert {drift.JSON, drift.HTML} <= set(loaded.manifest["files"])
    entry = loaded.manifest["drift"]
    assert entry["measured"] and entry["against"] == before and not entry["breaches"]
    record = json.loads((loaded.folder / drift.JSON).read_text())
    assert record["old"]["version"] == before and record["new"]["version"] == loaded.version
    f = record["figures"]
    assert 0 <= f["cosine_shift"] < 0.01 and f["neighbour_overlap"] > 0.9
    assert f["list_overlap"] > 0.9 and f["fans"] == cfg.drift.fans
    assert "No threshold was breached." in (loaded.folder / drift.HTML).read_text()
    (run,) = (root / "wandb").glob("offline-run-*/run-*.wandb")  # the command line logs
    deadline = time.monotonic() + 20  # wandb's service process may still be flushing
    while b"drift/list_overlap" not in run.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"drift/list_overlap" in run.read_bytes()


def test_a_planted_drift_blocks_the_publish(fresh, tmp_path, capsys):
    cfg, root = fresh
    before = (store.current_version(root), store.list_versions(root))
    cfg.checkpoint = edited_checkpoint(
        cfg.checkpoint, tmp_path / "shuffled.ckpt", shuffle_creator_ids
    )
    path = tmp_path / "drifted.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(cfg)))
    assert main(["rebuild", "--config", str(path)]) == errors.VALIDATION_FAILED
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "FAILED (exit 4) DriftError" in line and "past the drift thresholds" in line
    assert re.search(r"neighbour_overlap 0\.\d+ < min_neighbour_overlap 0\.\d+ \(by 0\.\d+\)", line)
    assert re.search(r"list_overlap 0\.\d+ < min_list_overlap", line), line
    assert "--allow_drift true" in line and f"current stays {before[0]}" in line
    assert (store.current_version(root), store.list_versions(root)) == before
    assert not list(store.versions_dir(root).glob(".staging-*"))
    refused = json.loads((root / rebuild.REFUSED / drift.JSON).read_text())
    assert refused["breaches"] and not refused["allowed"]
    assert "threshold(s) breached" in (root / rebuild.REFUSED / drift.HTML).read_text()


def test_allow_drift_publishes_past_the_thresholds_and_records_it(fresh, tmp_path, capsys):
    cfg, root = fresh
    before = store.current_version(root)
    cfg.checkpoint = edited_checkpoint(
        cfg.checkpoint, tmp_path / "shuffled.ckpt", shuffle_creator_ids
    )
    path = tmp_path / "drifted.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(cfg)))
    assert main(["rebuild", "--config", str(path), "--allow_drift", "true"]) == errors.OK
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "published" in line and "with --allow_drift: neighbour_overlap" in line
    m = store.load(root, use_gpu=False).manifest
    assert m["version"] != before and m["drift"]["allowed"] and m["drift"]["breaches"]
    record = json.loads((store.versions_dir(root) / m["version"] / drift.JSON).read_text())
    assert record["allowed"] and {b["threshold"] for b in record["breaches"]} >= {
        "min_neighbour_overlap",
        "min_list_overlap",
    }
    assert "Published anyway" in (store.versions_dir(root) / m["version"] / drift.HTML).read_text()
