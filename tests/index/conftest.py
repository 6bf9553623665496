"""One tiny prepared dataset and one model trained on it, shared by the index tests (and, through
tests/serving/conftest.py, the serving tests).

    tiny_data, tiny_checkpoint   the tiny dataset with text, and 2 epochs of 16-dim towers on it
    trained                      that checkpoint's towers (index.checkpoint.TrainedModel)
    tower_onnx                   (path, description) of its user tower exported as ONNX
    user_batch                   64 users' inputs as a request carries them (numpy) and torch's
                                 embeddings for them: known, cold and unknown users
    published                    an index store (config) with one version of it; read-only
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """OpenMP threads spin at barriers: on a busy 2-core machine two of them made the tiny
    model's training 20× slower than one (35 s against 1.8 s), and the tiny searches here too.
    Package scope: the setting is restored before any other test folder runs."""
    import faiss
    import torch

    threads = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads[0])
    torch.set_num_threads(threads[1])


@pytest.fixture(scope="package")
def tiny_data(tiny_text_data) -> Path:
    """The tiny prepared dataset with creator text (tests/conftest.py)."""
    return tiny_text_data


def train_tiny(data: Path, out: Path, epochs: int = 2, seed: int = 0, workers: int = 1) -> Path:
    """last.ckpt of `epochs` epochs of 16-dim towers on `data` (a few seconds). workers=0 reads
    the shards in this process: a test that trains while other threads of it hold gRPC calls
    open must not fork (gRPC's fork handler can wait on those threads forever)."""
    from training.cli import main

    main([
        "fit",
        "--config", str(REPO / "configs" / "train" / "synthetic_demo.yaml"),
        "--seed_everything", str(seed),
        "--data.data_dir", str(data),
        "--data.records_per_batch", "2",
        "--data.num_workers", str(workers),
        "--trainer.logger", "false",
        "--trainer.default_root_dir", str(out),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.max_epochs", str(epochs),
        "--model.tower.dim", "16",
        "--model.tower.hidden", "32",
        "--model.uniform_negatives", "64",
        "--checkpoint.dirpath", str(out / "checkpoints"),
    ])  # fmt: skip
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="package")
def tiny_checkpoint(tiny_data, tmp_path_factory) -> Path:
    """last.ckpt of 2 epochs of 16-dim towers on tiny_data (a few seconds)."""
    return train_tiny(tiny_data, tmp_path_factory.mktemp("index-run"))


def index_config(store: Path, checkpoint: Path, data: Path, **fields):
    """A small config for the tiny model: 300 tuning users, one timed run per setting."""
    from common import config
    from index.config import IndexConfig

    raw = {
        "name": "tiny",
        "checkpoint": str(checkpoint),
        "data": str(data),
        "store": str(store),
        "tuning_users": 300,
        "repeats": 1,
        **fields,
    }
    return config.load(IndexConfig, values=raw)


@pytest.fixture(scope="package")
def published(tiny_checkpoint, tiny_data, tmp_path_factory):
    """A store with one published version of the tiny model's index (read-only: copy it
    before changing anything)."""
    from index import rebuild

    cfg = index_config(tmp_path_factory.mktemp("index-store") / "store", tiny_checkpoint, tiny_data)
    result = rebuild.run(cfg)
    assert result.code == 0 and result.status == "published", result.summary
    return cfg


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
def tower_onnx(tiny_checkpoint, tiny_data, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny checkpoint's user tower as ONNX (`python -m index export-onnx`'s export)."""
    from index.user_tower import export_from_checkpoint

    path = tmp_path_factory.mktemp("tower-export") / "user_tower.onnx"
    return path, export_from_checkpoint(tiny_checkpoint, path, tiny_data)


@pytest.fixture(scope="package")
def user_batch(trained, tiny_data) -> UserBatch:
    import torch

    from index import catalog

    cfg = trained.config
    users = catalog.load_users(tiny_data, trained.attribute_hashing)
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
