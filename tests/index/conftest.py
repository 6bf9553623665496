"""One tiny prepared dataset and one model trained on it, shared by the index tests."""

from pathlib import Path

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
        "--model.dim", "16",
        "--model.hidden", "32",
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
    from index import config

    raw = {
        "name": "tiny",
        "checkpoint": str(checkpoint),
        "data": str(data),
        "store": str(store),
        "tuning_users": 300,
        "repeats": 1,
        **fields,
    }
    return config.from_dict(raw)


@pytest.fixture(scope="package")
def published(tiny_checkpoint, tiny_data, tmp_path_factory):
    """A store with one published version of the tiny model's index (read-only: copy it
    before changing anything)."""
    from index import rebuild

    cfg = index_config(tmp_path_factory.mktemp("index-store") / "store", tiny_checkpoint, tiny_data)
    result = rebuild.run(cfg)
    assert result.code == 0 and result.status == "published", result.summary
    return cfg
