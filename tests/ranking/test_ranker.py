"""The rank stage's model: what validation chooses, the exported graph against the trees it
came from, and the ranking store's folders (whole or refused)."""

import json

import numpy as np
import onnx
import pytest

from common.errors import IntegrityError
from ranking import ranker, store
from ranking.features import FEATURES

F = len(FEATURES)


def lists(fans: int, n: int, seed: int, signal: int):
    """Candidate lists in retrieval order whose positives follow feature `signal` (plus noise),
    with `retrieval_rank` filled in as the service computes it."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(fans, n, F)).astype(np.float32)
    x[:, :, ranker.RETRIEVAL_RANK] = np.log1p(np.arange(n))
    y = x[:, :, signal] + 0.5 * rng.normal(size=(fans, n)) > 1.8
    return x, y


@pytest.fixture(scope="module")
def fitted():
    x, y = lists(300, 40, seed=0, signal=FEATURES.index("cofollow"))
    return ranker.fit(x, y, log=lambda _: None), x


def test_trees_that_beat_the_retrieval_order_on_held_out_fans_are_chosen(fitted):
    f, _ = fitted
    info = f.info
    assert info["chosen"] == "lambdarank" and f.booster is not None
    assert info["stop_ndcg@20"] > info["stop_ndcg@20_retrieval"] + 0.2
    assert {"num_leaves", "min_child_samples", "trees"} <= set(info)
    assert max(info["importance_gain"], key=info["importance_gain"].get) == "cofollow"


def test_validation_keeps_the_retrieval_order_when_no_tree_beats_it():
    """Positives are exactly the first candidates: nothing can beat the order they came in."""
    x, _ = lists(200, 30, seed=1, signal=0)
    y = np.zeros(x.shape[:2], bool)
    y[:, :2] = True
    f = ranker.fit(x, y, log=lambda _: None)
    assert f.booster is None and f.info["chosen"] == "retrieval order"


def test_the_exported_graph_scores_as_the_trees_do(fitted, tmp_path):
    f, x = fitted
    onnx.save(ranker.to_onnx(f.booster), tmp_path / "r.onnx")
    served = ranker.OnnxRanker(tmp_path / "r.onnx")
    batch = x[:17, :23]  # any number of fans and candidates
    want = ranker.predict(f.booster, batch)
    got = served.score(batch)
    assert got.shape == (17, 23) and np.abs(got - want).max() < 1e-5
    same = np.argsort(-got, 1, kind="stable") == np.argsort(-want, 1, kind="stable")
    assert same.mean() > 0.99  # float32 sums may swap a near tie
    with pytest.raises(ValueError, match="it takes"):
        served.score(batch[:, :, :5])


def test_the_passthrough_graph_keeps_the_retrieval_order(tmp_path):
    x, _ = lists(5, 50, seed=2, signal=0)
    onnx.save(ranker.passthrough(), tmp_path / "p.onnx")
    score = ranker.OnnxRanker(tmp_path / "p.onnx").score(x)
    order = np.argsort(-score, 1, kind="stable")
    assert (order == np.arange(50)).all()


def test_a_store_keeps_whole_rankers_and_refuses_a_changed_one(fitted, tmp_path):
    f, _ = fitted
    root = tmp_path / "rankers"
    assert store.find(root, "v00001-x") is None
    folder = store.save(root, "v00001-x", ranker.to_onnx(f.booster), {"candidates": 40})
    assert store.find(root, "v00001-x") == folder
    manifest = store.read_manifest(folder)
    assert manifest["kind"] == store.KIND and store.RANKER in manifest["files"]
    assert not list(root.glob(".*"))  # the staging folder was renamed into place
    (folder / store.RANKER).write_bytes((folder / store.RANKER).read_bytes()[:-3] + b"abc")
    with pytest.raises(IntegrityError, match="ranking train"):
        store.find(root, "v00001-x")
    (folder / "manifest.json").write_text(json.dumps({"kind": "other"}))
    with pytest.raises(IntegrityError, match="not"):
        store.read_manifest(folder)
