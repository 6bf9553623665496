"""A LightGCN-format folder of only train.txt and test.txt (no item_list.txt, no user_list.txt)
prepares, trains and publishes an index: the tables carry every catalog column even when the
source has no catalog, so the readers downstream see one layout whatever the source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

from common import errors
from data import tables
from data.__main__ import main as data_main
from data.schema import CREATORS, USERS
from tests.training.test_cli import fit_args
from training.cli import main as train_main


def lightgcn_folder(root: Path, users: int = 80, items: int = 40, seed: int = 0) -> Path:
    """Two communities of items; each user follows 4-6 of one, holds out 1-2 more of it."""
    rng = np.random.default_rng(seed)
    folder = root / "lightgcn"
    folder.mkdir()
    lines = {"train.txt": [], "test.txt": []}
    for u in range(users):
        pool = rng.permutation(np.arange(u % 2, items, 2))  # even or odd items
        n_train, n_test = rng.integers(4, 7), rng.integers(1, 3)
        lines["train.txt"].append(" ".join(map(str, [u, *pool[:n_train]])))
        lines["test.txt"].append(" ".join(map(str, [u, *pool[n_train : n_train + n_test]])))
    for name, rows in lines.items():
        (folder / name).write_text("\n".join(rows) + "\n")
    return folder


def test_train_and_test_files_alone_prepare_train_and_index(tmp_path):
    source = lightgcn_folder(tmp_path)
    config = tmp_path / "lightgcn.yaml"
    config.write_text(
        yaml.safe_dump({
            "name": "lightgcn_only",
            "output": str(tmp_path / "data"),
            "source": {"kind": "lightgcn", "path": str(source)},
            "split": {"kind": "given"},
            "events": {"positive": {"follow": 1.0}},
            "features": {"history_length": 8},
            "shards": {"record_size": 8, "num_shards": 8},
            "buckets": 2,
        })
    )  # fmt: skip
    assert data_main(["prepare", "--config", str(config), "--no-progress"]) == errors.OK
    data = tmp_path / "data"
    creators = pq.read_schema(data / tables.CREATORS).names
    assert set(CREATORS.names) | {"category_idx", "tag_idx", "train_count"} <= set(creators)
    assert set(USERS.names) <= set(pq.read_schema(data / tables.USERS).names)

    cli = train_main(
        ["fit", *fit_args(data, tmp_path, "--trainer.max_epochs", "2", "--model.eval_k", "[10]")]
    )
    evaluations = [json.loads(line) for line in next(tmp_path.rglob("evaluation.jsonl")).open()]
    assert len(evaluations) == 2 and evaluations[-1]["recall@10"] > 0
    assert cli.model.model.cfg.num_categories == 2  # the reserved slots only: no catalog

    from index import rebuild
    from tests.index.conftest import index_config

    checkpoint = Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    result = rebuild.run(index_config(tmp_path / "store", checkpoint, data, recall_floor=0.5))
    assert result.code == errors.OK and result.status == "published", result.summary
