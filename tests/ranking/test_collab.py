"""ALS's score as a rank-stage feature (ranking.collab): the fan's factors folded in from the
fan's creators equal implicit's own user step, and the factors travel with the ranker."""

import numpy as np
import onnx
import pytest
import scipy.sparse as sp

from ranking import store
from ranking.collab import Als
from ranking.ranker import passthrough
from training.peers import als_model


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((60, 40)) < 0.15).astype(np.float32))
    model = als_model(x, factors=8, regularization=2.0, alpha=5.0, iterations=10, seed=0)
    return x, model, Als(np.asarray(model.item_factors, np.float32), 2.0, 5.0)


def test_the_fold_in_is_implicits_own_user_step(fitted):
    x, model, als = fitted
    users = np.arange(10)
    np.testing.assert_allclose(als.fold_in(x[users]), model.recalculate_user(users, x[users]),
                               rtol=1e-3, atol=1e-4)  # fmt: skip


def test_a_fan_the_fit_never_saw_is_scored_from_what_the_fan_follows(fitted):
    _, model, als = fitted
    history = sp.csr_matrix(([1.0, 1.0], ([0, 0], [3, 17])), shape=(1, 40))
    scores = als.score(history, np.arange(40)[None])
    want = model.recalculate_user(0, history) @ model.item_factors.T
    np.testing.assert_allclose(scores[0], want, rtol=1e-3, atol=1e-4)
    # the fan's own creators score highest on the factors that explain them
    assert set(np.argsort(-scores[0])[:5]) >= {3, 17}


def test_no_history_and_creators_added_after_the_fit_score_zero(fitted):
    _, _, als = fitted
    history = sp.csr_matrix(([1.0], ([1], [5])), shape=(2, 45))  # fan 0 follows no one
    scores = als.score(history, np.array([[1, 2, 41], [5, 6, 44]]))
    assert (scores[0] == 0).all() and scores[1, 2] == 0 and scores[1, 0] != 0


def test_the_factors_are_kept_with_the_ranker_checksummed(fitted, tmp_path):
    _, _, als = fitted
    folder = store.save(tmp_path, "v1", passthrough(), {"features": []}, als=als)
    manifest = store.read_manifest(store.find(tmp_path, "v1"))
    assert manifest["als"]["factors"] == 8 and "als_items.npy" in manifest["files"]
    loaded = store.load_als(folder, manifest)
    np.testing.assert_array_equal(loaded.items, als.items)
    assert (loaded.regularization, loaded.alpha) == (2.0, 5.0)
    onnx.checker.check_model(onnx.load(folder / store.RANKER))
    (folder / "als_items.npy").write_bytes(b"corrupt")
    with pytest.raises(Exception, match=r"als_items\.npy"):
        store.find(tmp_path, "v1")
