"""The user tower as ONNX against torch (index.user_tower) and run in-process (index.onnx)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.artifacts import sha256_file
from data.tables import history_length
from index import onnx, user_tower
from index.__main__ import main
from index.checkpoint import TrainedModel
from index.onnx import OnnxEncoder
from towers.model import TowerConfig, TwoTower

TOLERANCE = 1e-5


def random_tower(pooling: str, attribute_buckets: int, seed: int = 0) -> TrainedModel:
    """Untrained towers: parity needs no training, and a fresh tower's weights are no
    friendlier to the exporter than trained ones. pooling "weighted" is mean pooling with
    per-creator history weights, set at random (they start at 1)."""
    torch.manual_seed(seed)
    weighted = pooling == "weighted"
    pooling = "mean" if weighted else pooling
    cfg = TowerConfig(
        history_weights=weighted,
        num_users=300,
        num_creators=120,
        dim=16,
        hidden=32,
        unknown_user_buckets=32,
        pooling=pooling,
        attribute_buckets=attribute_buckets,
    )
    model = TwoTower(cfg).eval()
    if weighted:
        with torch.no_grad():
            model.user_tower.history_log_weight.weight.normal_(std=2.0)
    return TrainedModel(model, cfg, Path("random"), f"random-{seed}", {})


@pytest.mark.parametrize("attribute_buckets", [0, 64], ids=["no-attributes", "attributes"])
@pytest.mark.parametrize("pooling", ["mean", "attention", "weighted"])
def test_parity_with_torch(tmp_path, pooling, attribute_buckets):
    trained = random_tower(pooling, attribute_buckets)
    m = user_tower.export_user_tower(
        trained, tmp_path / "user_tower.onnx", history_len=12, attribute_width=5
    )
    assert set(m["parity"]["max_abs_diff"]) == {1, 7, 1000}
    assert max(m["parity"]["max_abs_diff"].values()) <= TOLERANCE
    # other random inputs than the export checked, each batch size again
    diffs = user_tower.parity(trained, tmp_path / "user_tower.onnx", seed=11)
    assert max(diffs.values()) <= TOLERANCE, diffs
    want_inputs = {"user": [-1], "history": [-1, 12]}
    if attribute_buckets:
        want_inputs["attributes"] = [-1, 5]
    assert {k: v["shape"] for k, v in m["inputs"].items()} == want_inputs
    assert all(v["dtype"] == "int64" for v in m["inputs"].values())
    assert m["outputs"] == {"embedding": {"dtype": "float32", "shape": [-1, 16]}}
    assert m["sha256"] == sha256_file(tmp_path / "user_tower.onnx")


def test_parity_failure_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(user_tower, "PARITY_TOLERANCE", -1.0)  # any difference is too much
    with pytest.raises(user_tower.ParityError, match="differs from torch"):
        user_tower.export_user_tower(random_tower("mean", 0), tmp_path / "user_tower.onnx", 4, 2)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_export(tower_onnx, trained, user_batch, tiny_data):
    path, m = tower_onnx
    assert m["kind"] == onnx.KIND
    assert m["model"]["version"] == trained.version
    assert m["sha256"] == sha256_file(path)
    assert m["history_len"] == history_length(tiny_data) == user_batch.inputs["history"].shape[1]
    assert m["attribute_width"] == user_batch.inputs["attributes"].shape[1]
    encoder = OnnxEncoder(path)
    assert encoder.inputs == ["user", "history", "attributes"]
    got = encoder.encode(user_batch.inputs)
    assert got.dtype == np.float32 and got.shape == user_batch.expected.shape
    np.testing.assert_allclose(got, user_batch.expected, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_encoder_errors_name_the_input(tmp_path, tower_onnx, user_batch):
    encoder = OnnxEncoder(tower_onnx[0])
    x = dict(user_batch.inputs)
    with pytest.raises(ValueError, match=r"missing user tower inputs \['attributes'\]"):
        encoder.encode({k: v for k, v in x.items() if k != "attributes"})
    with pytest.raises(ValueError, match=r"'history' has shape \[64, 3\]; it needs \[64, "):
        encoder.encode({**x, "history": x["history"][:, :3]})
    with pytest.raises(FileNotFoundError, match="index export-onnx"):
        OnnxEncoder(tmp_path / "none.onnx")
    # a tower without attributes ignores them, as the torch tower does
    plain = random_tower("mean", 0)
    user_tower.export_user_tower(plain, tmp_path / "user_tower.onnx", x["history"].shape[1], 8)
    no_attrs = OnnxEncoder(tmp_path / "user_tower.onnx")
    assert no_attrs.inputs == ["user", "history"] and no_attrs.attribute_width == 0
    assert no_attrs.encode(x).shape == (64, 16)


def test_out_of_range_ids_do_not_fail_the_batch(tmp_path):
    """Ids the tables have no row for are unknown (user) or padding (history, attributes),
    where torch would raise and fail every request batched with them."""
    trained = random_tower("attention", 64)
    user_tower.export_user_tower(trained, tmp_path / "user_tower.onnx", 4, 3)
    bad = {
        "user": np.array([-5, 7]),
        "history": np.array([[3, 10_000, -2, 0], [5, 6, 0, 0]]),
        "attributes": np.array([[99_999, 4, -1], [2, 0, 0]]),
    }
    clean = {
        "user": np.array([1, 7]),
        "history": np.array([[3, 0, 0, 0], [5, 6, 0, 0]]),
        "attributes": np.array([[0, 4, 0], [2, 0, 0]]),
    }
    with torch.no_grad():
        want = trained.model.encode_users(**{k: torch.from_numpy(v) for k, v in clean.items()})
    got = OnnxEncoder(tmp_path / "user_tower.onnx").encode(bad)
    np.testing.assert_allclose(got, want.numpy(), atol=TOLERANCE, rtol=0)


def test_export_onnx_cli(tmp_path, tiny_checkpoint, tiny_data, capsys):
    out = tmp_path / "tower.onnx"
    run = str(tiny_checkpoint.parent.parent)  # a run folder resolves to its last.ckpt
    argv = ["export-onnx", "--checkpoint", run, "--data", str(tiny_data), "--output", str(out)]
    assert main(argv) == 0
    assert "exported the user tower of model" in capsys.readouterr().out
    assert OnnxEncoder(out).inputs == ["user", "history", "attributes"]
