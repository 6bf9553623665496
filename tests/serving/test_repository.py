"""The Triton model repositories of the ONNX user tower, and the Python backend; no server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from common.artifacts import sha256_file
from index.onnx import OnnxEncoder, signature
from index.user_tower import export_user_tower
from serving.triton import repository
from serving.triton.backend import model as backend
from tests.index.test_user_tower import random_tower

TOLERANCE = 1e-5


def parse_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    """config.pbtxt through Triton's own ModelConfig schema: a misspelt field fails here."""
    return text_format.Parse(
        (model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )


def test_production_config(triton_repositories, tower_onnx):
    cfg = parse_config(Path(triton_repositories["production"]) / "user_tower")
    assert (cfg.name, cfg.platform, cfg.backend) == (
        "user_tower",
        "onnxruntime_onnx",
        "onnxruntime",
    )
    assert cfg.max_batch_size == repository.MAX_BATCH_SIZE
    assert list(cfg.dynamic_batching.preferred_batch_size) == list(repository.PREFERRED_BATCH_SIZES)
    assert cfg.dynamic_batching.max_queue_delay_microseconds == repository.MAX_QUEUE_DELAY_US
    (group,) = cfg.instance_group
    assert group.count == 1 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_AUTO
    assert cfg.version_policy.HasField("all")
    assert cfg.parameters["intra_op_thread_count"].string_value == "1"
    sig = signature(tower_onnx[0])
    inputs = {i.name: i for i in cfg.input}
    assert list(inputs) == list(sig["inputs"])
    assert list(inputs["user"].dims) == [1] and list(inputs["user"].reshape.shape) == []
    assert list(inputs["history"].dims) == sig["inputs"]["history"]["shape"][1:]
    assert all(i.data_type == model_config_pb2.TYPE_INT64 for i in cfg.input)
    (out,) = cfg.output
    assert out.name == "embedding" and list(out.dims) == sig["outputs"]["embedding"]["shape"][1:]
    assert [w.batch_size for w in cfg.model_warmup] == [1, max(repository.PREFERRED_BATCH_SIZES)]


def test_local_config_matches_production(triton_repositories):
    prod = parse_config(Path(triton_repositories["production"]) / "user_tower")
    local = parse_config(Path(triton_repositories["local"]) / "user_tower")
    assert local.backend == "python" and not local.platform
    assert local.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    for field in ("input", "output", "dynamic_batching", "max_batch_size", "version_policy"):
        assert getattr(local, field) == getattr(prod, field), field
    unbatched = parse_config(Path(triton_repositories["local"]) / "user_tower_unbatched")
    assert not unbatched.HasField("dynamic_batching")


def test_production_onnx_runs_in_onnxruntime(triton_repositories, tower_onnx, user_batch):
    """What Triton's onnxruntime backend would run: the repository's file, byte for byte."""
    path = Path(triton_repositories["production"]) / "user_tower" / "1" / repository.MODEL_FILE
    assert sha256_file(path) == sha256_file(tower_onnx[0])
    got = OnnxEncoder(path).encode(user_batch.inputs)
    np.testing.assert_allclose(got, user_batch.expected, atol=TOLERANCE, rtol=0)


def test_versions_are_added_and_removed(tmp_path, tower_onnx):
    onnx_path = tower_onnx[0]
    roots = repository.write_repositories(onnx_path, tmp_path)
    local = Path(roots["local"]) / "user_tower"
    production = Path(roots["production"]) / "user_tower"
    repository.add_version(local, onnx_path, 2)
    repository.add_version(production, onnx_path, 2)
    assert repository.versions(local) == [1, 2] == repository.versions(production)
    assert (local / "2" / "model.py").read_bytes() == repository.BACKEND_MODEL.read_bytes()
    assert not (production / "2" / "model.py").exists()
    with pytest.raises(FileExistsError, match="version 2 already exists"):
        repository.add_version(local, onnx_path, 2)
    other = tmp_path / "other.onnx"
    export_user_tower(random_tower("mean", 0), other, 3, 2)
    with pytest.raises(ValueError, match=r"one config\.pbtxt serves every version"):
        repository.add_version(local, other, 3)
    repository.remove_version(local, 1)
    assert repository.versions(local) == [2]
    with pytest.raises(ValueError, match="only one"):
        repository.remove_version(local, 2)
    with pytest.raises(FileNotFoundError, match=r"no version 7 .* present: \[2\]"):
        repository.remove_version(local, 7)
    assert [p.name for p in local.iterdir() if p.name.startswith(".")] == []


def test_config_rejects_bad_batching(tower_onnx):
    with pytest.raises(ValueError, match=r"preferred_batch_sizes=\(64, 2048\)"):
        repository.model_config(tower_onnx[0], "local", preferred_batch_sizes=(64, 2048))


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


def test_the_local_backend_is_told_its_onnx_file(triton_repositories):
    local = parse_config(Path(triton_repositories["local"]) / "user_tower")
    assert local.parameters["onnx_file"].string_value == repository.MODEL_FILE
    with pytest.raises(ValueError, match="no parameter 'onnx_file'"):
        backend.parameter({"parameters": {}}, backend.ONNX_FILE)


def test_repository_cli(tmp_path, tower_onnx, capsys):
    from serving.__main__ import main

    argv = ["repository", "--onnx", str(tower_onnx[0]), "--output", str(tmp_path / "repos")]
    assert main(argv) == 0
    for kind in (repository.PRODUCTION, repository.LOCAL):
        assert (tmp_path / "repos" / kind / "user_tower" / "1" / repository.MODEL_FILE).is_file()


def test_the_query_encoder_takes_queries_of_any_length(published, tmp_path):
    from index import store

    folder = store.load(published.store).folder
    written = repository.write_repositories(
        folder / store.QUERY_ENCODER, tmp_path, model_name=repository.QUERY_MODEL_NAME
    )
    for kind in (repository.PRODUCTION, repository.LOCAL):
        cfg = parse_config(Path(written[kind]) / repository.QUERY_MODEL_NAME)
        assert [(i.name, list(i.dims)) for i in cfg.input] == [
            ("input_ids", [-1]),
            ("attention_mask", [-1]),
        ]
        for warm in cfg.model_warmup:  # a free length warms at a typical query's
            assert [list(t.dims) for t in warm.inputs.values()] == [[repository.WARMUP_LENGTH]] * 2


def test_the_backend_pads_queries_of_different_lengths_into_one_batch():
    shapes = {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    short = {"input_ids": np.array([[101, 7, 102]]), "attention_mask": np.ones((1, 3))}
    long = {"input_ids": np.array([[101, 7, 8, 9, 102]] * 2), "attention_mask": np.ones((2, 5))}
    batches = [{k: backend.to_graph_shape(k, v, shapes[k]) for k, v in r.items()}
               for r in (short, long)]  # fmt: skip
    joined, sizes = backend.concat_requests(batches)
    assert sizes == [1, 2] and joined["input_ids"].shape == (3, 5)
    assert joined["input_ids"][0].tolist() == [101, 7, 102, 0, 0]  # the pad id, masked out
    assert joined["attention_mask"][0].tolist() == [1, 1, 1, 0, 0]
