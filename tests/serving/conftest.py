"""Fixtures of the serving tests, meant for every test of serving/ (the service's too).

    tiny_data, tiny_checkpoint   the index tests' tiny dataset and 2-epoch 16-dim model
                                 (tests/index/conftest.py; mean pooling, with attributes)
    trained                      that checkpoint's towers (index.checkpoint.TrainedModel)
    tower_export                 its ONNX export folder: user_tower.onnx + manifest.json
    triton_repositories          write_repositories of that export: {"production", "local"}
                                 roots holding `user_tower` and `user_tower_unbatched` (dynamic
                                 batching off); read-only, copy a repository to change it
    triton_server                a real TritonServer on the local root, `user_tower` loaded
                                 (package scope: one server for the folder; leave it as found)
    published                    an index store (config) with one published version of the
                                 tiny model, user_tower.onnx included; read-only
    user_batch                   64 users' inputs as a request carries them (numpy) and torch's
                                 embeddings for them: known, cold and unknown users

Everything is package-scoped, so the model is trained and the server started once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.index import conftest as index_fixtures

# the index tests' fixtures, registered here too (package scope: built once for this folder)
one_thread = index_fixtures.one_thread
tiny_data = index_fixtures.tiny_data
tiny_checkpoint = index_fixtures.tiny_checkpoint
published = index_fixtures.published  # an index store with one version (read-only)

UNBATCHED = "user_tower_unbatched"


@dataclass
class UserBatch:
    inputs: dict[str, np.ndarray]
    """user [B], history [B, N], attributes [B, A]: int64, as the service sends them."""
    expected: np.ndarray
    """[B, dim] float32: torch's encode_users on the same inputs."""


@pytest.fixture(scope="package")
def trained(tiny_checkpoint):
    from index.checkpoint import load

    return load(tiny_checkpoint)


@pytest.fixture(scope="package")
def tower_export(tiny_checkpoint, tiny_data, tmp_path_factory) -> Path:
    """The export folder (`user_tower.onnx`, `manifest.json`) of the tiny checkpoint."""
    from serving.export import export_from_checkpoint

    out = tmp_path_factory.mktemp("tower-export")
    export_from_checkpoint(tiny_checkpoint, out, tiny_data)
    return out


@pytest.fixture(scope="package")
def triton_repositories(tower_export, tmp_path_factory) -> dict:
    from serving.export import ONNX_FILE
    from serving.triton import write_repositories

    root = tmp_path_factory.mktemp("triton-repositories")
    written = write_repositories(tower_export / ONNX_FILE, root)
    write_repositories(tower_export / ONNX_FILE, root, dynamic_batching=False, model_name=UNBATCHED)
    return written


@pytest.fixture(scope="package")
def triton_server(triton_repositories, tmp_path_factory):
    """A running tritonserver (127.0.0.1, free ports) with `user_tower` loaded; stopped, its
    process group ended, when the package's tests are done, failed or not."""
    from serving.triton import MODEL_NAME, TritonServer

    work = tmp_path_factory.mktemp("triton-work")
    with TritonServer(triton_repositories["local"], models=[MODEL_NAME], work_dir=work) as server:
        yield server


@pytest.fixture(scope="package")
def user_batch(trained, tiny_data) -> UserBatch:
    import torch

    from index import catalog

    cfg = trained.config
    users = catalog.load_users(tiny_data, trained.data_hparams, cfg)
    idx = catalog.sample_users(users, 60, seed=0)
    x = {k: v.numpy() for k, v in catalog.user_inputs(users, idx, cfg).items()}
    # users serving meets that training never did: the unknown slot with nothing known, and
    # users signed up after training (ids past the vocabulary) with a history and attributes
    extra = np.array([1, cfg.num_users, cfg.num_users + 7, cfg.num_users + 10_000])
    x["user"] = np.concatenate([x["user"], extra])
    x["history"] = np.concatenate([x["history"], x["history"][:4]])
    x["history"][-4] = 0
    x["attributes"] = np.concatenate([x["attributes"], x["attributes"][:4]])
    x["attributes"][-4] = 0
    with torch.no_grad():
        expected = trained.model.encode_users(**{k: torch.from_numpy(v) for k, v in x.items()})
    return UserBatch(
        {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in x.items()}, expected.numpy()
    )
