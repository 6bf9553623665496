"""The ONNX user tower against torch, the Triton configs, and the repository layout; no server."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from data.io import sha256_file
from index.checkpoint import TrainedModel
from serving import export, triton
from serving.backend import model as backend
from serving.export import ONNX_FILE, OnnxEncoder
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
    m = export.export_user_tower(trained, tmp_path / ONNX_FILE, history_len=12, attribute_width=5)
    assert set(m["parity"]["max_abs_diff"]) == {1, 7, 1000}
    assert max(m["parity"]["max_abs_diff"].values()) <= TOLERANCE
    # other random inputs than the export checked, each batch size again
    diffs = export.parity(trained, tmp_path / ONNX_FILE, seed=11)
    assert max(diffs.values()) <= TOLERANCE, diffs
    want_inputs = {"user": [-1], "history": [-1, 12]}
    if attribute_buckets:
        want_inputs["attributes"] = [-1, 5]
    assert {k: v["shape"] for k, v in m["inputs"].items()} == want_inputs
    assert all(v["dtype"] == "int64" for v in m["inputs"].values())
    assert m["outputs"] == {"embedding": {"dtype": "float32", "shape": [-1, 16]}}
    assert m["sha256"] == sha256_file(tmp_path / ONNX_FILE)


def test_parity_failure_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)  # any difference is too much
    with pytest.raises(export.ParityError, match="differs from torch"):
        export.export_user_tower(random_tower("mean", 0), tmp_path / ONNX_FILE, 4, 2)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_export(tower_export, trained, user_batch, tiny_data):
    m = json.loads((tower_export / export.MANIFEST).read_text())
    assert m["kind"] == export.KIND
    assert m["model"]["version"] == trained.version
    assert m["sha256"] == sha256_file(tower_export / ONNX_FILE)
    assert (
        m["history_len"]
        == export.history_length(tiny_data)
        == user_batch.inputs["history"].shape[1]
    )
    assert m["attribute_width"] == user_batch.inputs["attributes"].shape[1]
    encoder = OnnxEncoder(tower_export / ONNX_FILE)
    assert encoder.inputs == ["user", "history", "attributes"]
    got = encoder.encode(user_batch.inputs)
    assert got.dtype == np.float32 and got.shape == user_batch.expected.shape
    np.testing.assert_allclose(got, user_batch.expected, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_encoder_errors_name_the_input(tmp_path, tower_export, user_batch):
    encoder = OnnxEncoder(tower_export / ONNX_FILE)
    x = dict(user_batch.inputs)
    with pytest.raises(ValueError, match=r"missing user tower inputs \['attributes'\]"):
        encoder.encode({k: v for k, v in x.items() if k != "attributes"})
    with pytest.raises(ValueError, match=r"'history' has shape \[64, 3\]; it needs \[64, "):
        encoder.encode({**x, "history": x["history"][:, :3]})
    with pytest.raises(FileNotFoundError, match="export-onnx"):
        OnnxEncoder(tmp_path / "none.onnx")
    # a tower without attributes ignores them, as the torch tower does
    plain = random_tower("mean", 0)
    export.export_user_tower(plain, tmp_path / ONNX_FILE, x["history"].shape[1], 8)
    no_attrs = OnnxEncoder(tmp_path / ONNX_FILE)
    assert no_attrs.inputs == ["user", "history"] and no_attrs.attribute_width == 0
    assert no_attrs.encode(x).shape == (64, 16)


def test_out_of_range_ids_do_not_fail_the_batch(tmp_path):
    """Ids the tables have no row for are unknown (user) or padding (history, attributes),
    where torch would raise and fail every request batched with them."""
    trained = random_tower("attention", 64)
    export.export_user_tower(trained, tmp_path / ONNX_FILE, 4, 3)
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
    got = OnnxEncoder(tmp_path / ONNX_FILE).encode(bad)
    np.testing.assert_allclose(got, want.numpy(), atol=TOLERANCE, rtol=0)


def test_export_cli(tmp_path, tiny_checkpoint, tiny_data, capsys):
    parser = argparse.ArgumentParser()
    export.add_export_arguments(parser)
    args = parser.parse_args([
        "--checkpoint", str(tiny_checkpoint.parent.parent),  # a run folder resolves too
        "--data", str(tiny_data),
        "--output", str(tmp_path / "onnx"),
        "--repository", str(tmp_path / "repositories"),
    ])  # fmt: skip
    assert export.cli_export(args) == 0
    assert "exported the user tower of model" in capsys.readouterr().out
    assert (tmp_path / "onnx" / ONNX_FILE).is_file() and (
        tmp_path / "onnx" / "manifest.json"
    ).is_file()
    for kind in ("production", "local"):
        assert (tmp_path / "repositories" / kind / "user_tower" / "1" / "model.onnx").is_file()


def parse_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    """config.pbtxt through Triton's own ModelConfig schema: a misspelt field fails here."""
    return text_format.Parse(
        (model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )


def test_production_config(triton_repositories, tower_export):
    cfg = parse_config(Path(triton_repositories["production"]) / "user_tower")
    assert (cfg.name, cfg.platform, cfg.backend) == (
        "user_tower",
        "onnxruntime_onnx",
        "onnxruntime",
    )
    assert cfg.max_batch_size == triton.MAX_BATCH_SIZE
    assert list(cfg.dynamic_batching.preferred_batch_size) == list(triton.PREFERRED_BATCH_SIZES)
    assert cfg.dynamic_batching.max_queue_delay_microseconds == triton.MAX_QUEUE_DELAY_US
    (group,) = cfg.instance_group
    assert group.count == 1 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_AUTO
    assert cfg.version_policy.HasField("all")
    assert cfg.parameters["intra_op_thread_count"].string_value == "1"
    sig = export.signature(tower_export / ONNX_FILE)
    inputs = {i.name: i for i in cfg.input}
    assert list(inputs) == list(sig["inputs"])
    assert list(inputs["user"].dims) == [1] and list(inputs["user"].reshape.shape) == []
    assert list(inputs["history"].dims) == sig["inputs"]["history"]["shape"][1:]
    assert all(i.data_type == model_config_pb2.TYPE_INT64 for i in cfg.input)
    (out,) = cfg.output
    assert out.name == "embedding" and list(out.dims) == sig["outputs"]["embedding"]["shape"][1:]
    assert [w.batch_size for w in cfg.model_warmup] == [1, max(triton.PREFERRED_BATCH_SIZES)]


def test_local_config_matches_production(triton_repositories):
    prod = parse_config(Path(triton_repositories["production"]) / "user_tower")
    local = parse_config(Path(triton_repositories["local"]) / "user_tower")
    assert local.backend == "python" and not local.platform
    assert local.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    for field in ("input", "output", "dynamic_batching", "max_batch_size", "version_policy"):
        assert getattr(local, field) == getattr(prod, field), field
    unbatched = parse_config(Path(triton_repositories["local"]) / "user_tower_unbatched")
    assert not unbatched.HasField("dynamic_batching")


def test_production_onnx_runs_in_onnxruntime(triton_repositories, tower_export, user_batch):
    """What Triton's onnxruntime backend would run: the repository's file, byte for byte."""
    path = Path(triton_repositories["production"]) / "user_tower" / "1" / "model.onnx"
    assert sha256_file(path) == sha256_file(tower_export / ONNX_FILE)
    got = OnnxEncoder(path).encode(user_batch.inputs)
    np.testing.assert_allclose(got, user_batch.expected, atol=TOLERANCE, rtol=0)


def test_versions_are_added_and_removed(tmp_path, tower_export):
    onnx_path = tower_export / ONNX_FILE
    roots = triton.write_repositories(onnx_path, tmp_path)
    local = Path(roots["local"]) / "user_tower"
    production = Path(roots["production"]) / "user_tower"
    triton.add_version(local, onnx_path, 2)
    triton.add_version(production, onnx_path, 2)
    assert triton.versions(local) == [1, 2] == triton.versions(production)
    assert (local / "2" / "model.py").read_bytes() == triton.BACKEND_MODEL.read_bytes()
    assert not (production / "2" / "model.py").exists()
    with pytest.raises(FileExistsError, match="version 2 already exists"):
        triton.add_version(local, onnx_path, 2)
    other = tmp_path / "other.onnx"
    export.export_user_tower(random_tower("mean", 0), other, 3, 2)
    with pytest.raises(ValueError, match=r"one config\.pbtxt serves every version"):
        triton.add_version(local, other, 3)
    triton.remove_version(local, 1)
    assert triton.versions(local) == [2]
    with pytest.raises(ValueError, match="only one"):
        triton.remove_version(local, 2)
    with pytest.raises(FileNotFoundError, match=r"no version 7 .* present: \[2\]"):
        triton.remove_version(local, 7)
    assert [p.name for p in local.iterdir() if p.name.startswith(".")] == []


def test_config_rejects_bad_batching(tower_export):
    with pytest.raises(ValueError, match=r"preferred_batch_sizes=\(64, 2048\)"):
        triton.model_config(tower_export / ONNX_FILE, "local", preferred_batch_sizes=(64, 2048))


def test_backend_batches_requests_into_one_run():
    """The Python backend's batching, without a server: requests joined, rows split back."""
    requests = [
        {"user": np.arange(n).reshape(n, 1), "history": np.full((n, 4), n)} for n in (1, 3, 2)
    ]
    shapes = {"user": ["batch"], "history": ["batch", 4]}
    batches = [{k: backend.to_graph_shape(k, v, shapes[k]) for k, v in r.items()} for r in requests]
    joined, sizes = backend.concat_requests(batches)
    assert sizes == [1, 3, 2] and joined["user"].shape == (6,) and joined["history"].shape == (6, 4)
    parts = backend.split_rows(joined["history"], sizes)
    for part, request in zip(parts, requests, strict=True):
        np.testing.assert_array_equal(part, request["history"])
    with pytest.raises(ValueError, match=r"'history' has shape \[2, 3\]; .* \[batch, 4\]"):
        backend.to_graph_shape("history", np.zeros((2, 3)), shapes["history"])
