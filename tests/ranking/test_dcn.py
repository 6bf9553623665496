"""The DCN-v2 ranker: it learns what the labels follow, keeps its epoch on held-out fans, and its
ONNX graph (the rank stage's signature) scores as the network does."""

import numpy as np
import pytest

from ranking.features import FEATURES
from ranking.ranker import OnnxRanker
from tests.ranking.test_ranker import lists

torch = pytest.importorskip("torch")


def test_the_network_learns_the_signal_and_exports_to_the_rank_stages_graph(tmp_path):
    from ranking import dcn

    x, y = lists(300, 40, seed=0, signal=FEATURES.index("tag_affinity"))
    model, info = dcn.fit(x, y, epochs=15, log=lambda _: None)
    assert info["chosen"] == "dcn-v2" and 0 <= info["epoch"] < 15
    assert info["stop_ndcg@20"] > info["stop_ndcg@20_retrieval"] + 0.2
    dcn.to_onnx(model, tmp_path / "dcn.onnx")
    batch = x[:9, :17]  # other fans and list lengths than the export's example
    np.testing.assert_allclose(OnnxRanker(tmp_path / "dcn.onnx").score(batch),
                               dcn.predict(model, batch), atol=1e-4)  # fmt: skip
