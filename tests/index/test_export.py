"""Checkpoint loading and `python -m index export`: vectors as training computes them, the model
version, the fingerprint and the probes serving checks its user tower with."""

import datetime as dt
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from common import errors
from data.tables import CreatorFeatures
from index import checkpoint, export, store
from index.__main__ import main
from training.module import encode_all_creators


def test_checkpoint_loads_as_trained(tiny_checkpoint, tmp_path):
    trained = checkpoint.load(tiny_checkpoint)
    assert (trained.config.dim, trained.config.hidden) == (16, 32)
    assert not trained.model.training
    # the run recorded when it saved these weights: as the file was written
    saved = dt.datetime.fromisoformat(trained.trained_at)
    assert saved.tzinfo is not None
    assert abs(saved.timestamp() - tiny_checkpoint.stat().st_mtime) < 5, trained.trained_at
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert trained.version == checkpoint.model_version(state)
    state["model.logit_scale"] = state["model.logit_scale"] + 1.0
    assert checkpoint.model_version(state) != trained.version
    state["frequency.step"] = torch.tensor(123.0)  # not part of the towers
    assert checkpoint.model_version(state) == checkpoint.model_version(
        {k: v for k, v in state.items() if k != "frequency.step"}
    )
    # a run folder resolves to the newest last.ckpt under it
    run = tmp_path / "run" / "towerline" / "abc123" / "checkpoints"
    run.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run / "last.ckpt")
    assert checkpoint.resolve_checkpoint(tmp_path / "run") == run / "last.ckpt"
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.MissingInputError, match=r"no last\.ckpt under checkpoint folder"):
        checkpoint.resolve_checkpoint(tmp_path / "empty")


def test_export_writes_vectors_ids_and_manifest(tiny_checkpoint, tiny_data, tmp_path, capsys):
    out = tmp_path / "export"
    argv = ["export", "--checkpoint", str(tiny_checkpoint), "--output", str(out)]
    assert main([*argv, "--queries", "100"]) == errors.OK
    assert "exported 300 creators × 16" in capsys.readouterr().out
    xb = np.load(out / "embeddings.npy", allow_pickle=False)
    ids = pq.read_table(out / "creators.parquet")
    m = json.loads((out / "manifest.json").read_text())
    assert xb.dtype == np.float32 and xb.shape == (m["count"], m["dim"]) == (300, 16)
    assert ids["creator_idx"].to_pylist() == list(range(2, 302))
    assert (m["kind"], m["metric"], m["normalized"]) == (export.KIND, "inner_product", True)
    assert m["norms"]["nonfinite_rows"] == 0
    assert abs(m["norms"]["min_norm"] - 1) < 1e-5 and abs(m["norms"]["max_norm"] - 1) < 1e-5
    assert m["queries"]["count"] == 100 and set(m["files"]) >= {"embeddings.npy", "probes.npz"}
    # the same vectors the training evaluation scores with
    trained = checkpoint.load(tiny_checkpoint)
    features = CreatorFeatures.from_dataset(tiny_data)
    assert trained.config.text_dim == 384 == features.text.shape[1]  # the text path is exported
    want = encode_all_creators(trained.model, features)[2:].numpy()
    np.testing.assert_allclose(xb, want, atol=1e-6)
    assert m["model"]["version"] == trained.version
    assert m["model"]["trained_at"] == trained.trained_at
    # a second export of the same model names the same embedding space
    assert main([*argv, "--queries", "50"]) == errors.OK
    again = json.loads((out / "manifest.json").read_text())
    assert again["fingerprint"] == m["fingerprint"] and again["queries"]["count"] == 50
    assert not list(tmp_path.glob(".export.staging*"))


def test_probes_tell_the_users_tower_apart(tiny_checkpoint, tmp_path):
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--output", str(out)]) == 0
    model = checkpoint.load(tiny_checkpoint).model

    def tower(scale):
        @torch.no_grad()
        def encode(user, history, attributes):
            args = [torch.as_tensor(a) for a in (user, history, attributes)]
            return model.encode_users(*args).numpy() * scale

        return encode

    assert store.check_probes(out, tower(1.0)) < 1e-5
    with pytest.raises(errors.IntegrityError, match=r"not the model the index was built for"):
        store.check_probes(out, tower(0.9))


def test_export_of_a_missing_checkpoint_or_catalog_exits_3(tiny_checkpoint, tmp_path, capsys):
    argv = ["export", "--output", str(tmp_path / "x")]
    assert main([*argv, "--checkpoint", str(tmp_path / "none.ckpt")]) == errors.MISSING_INPUT
    assert "checkpoint" in capsys.readouterr().out
    missing = ["--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path)]
    assert main([*argv, *missing]) == errors.MISSING_INPUT
    assert "no creator catalog" in capsys.readouterr().out
