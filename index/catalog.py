"""The creator catalog and the users of a prepared dataset, as inputs of a checkpoint's towers.

Vocabularies are append-only (data.vocab): a later `python -m data prepare` keeps every index
and gives new creators, categories and tags indices past the end. A checkpoint has rows only
for the vocabulary it was trained on, so anything newer follows the out-of-vocabulary rule of
data.contract: a new creator's vector comes from its content (category, tags, popularity, text)
alone — the content path that adds creators without retraining — and a history item the model
never saw is dropped.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from common.artifacts import sha256_file
from common.errors import MissingInputError, ValidationError
from data.contract import FIRST_ID
from data.tables import (
    CREATOR_TEXT,
    CREATORS,
    USERS,
    CreatorFeatures,
    UserFeatures,
    vocab_file,
)
from towers.model import TowerConfig, TwoTower

log = logging.getLogger(__name__)


@dataclass
class Catalog:
    """Every real creator of a prepared dataset, in vocabulary order."""

    data_dir: Path
    creator_idx: np.ndarray  # [N] int64 vocabulary indices, ascending, all >= 2
    creator_id: np.ndarray  # [N] str
    features: CreatorFeatures  # indexed by vocabulary index
    sha256: str  # of tables/creators.parquet: the catalog's identity

    def __len__(self) -> int:
        return len(self.creator_idx)


def require_dataset(data_dir: str | Path) -> Path:
    data_dir = Path(data_dir)
    if not (data_dir / CREATORS).exists():
        raise MissingInputError(
            f"no creator catalog at {data_dir / CREATORS}; prepare the dataset first "
            f"(`python -m data prepare --config configs/data/<name>.yaml`) or point `--data` "
            f"at a prepared dataset"
        )
    return data_dir


def _catalog_sha256(data_dir: Path) -> str:
    """The creators table, and the text vectors prepared from it when there are any."""
    text = data_dir / CREATOR_TEXT
    if not text.exists():
        return sha256_file(data_dir / CREATORS)
    both = f"{sha256_file(data_dir / CREATORS)}|{sha256_file(text)}"
    return hashlib.sha256(both.encode()).hexdigest()


def load_catalog(data_dir: str | Path) -> Catalog:
    data_dir = require_dataset(data_dir)
    t = pq.read_table(data_dir / CREATORS, columns=["creator_idx", "creator_id"])
    idx = t["creator_idx"].to_numpy().astype(np.int64)
    order = np.argsort(idx, kind="stable")
    keep = order[idx[order] >= FIRST_ID]
    ids = np.asarray(t["creator_id"].to_pylist(), dtype=object)[keep].astype(str)
    return Catalog(
        data_dir=data_dir,
        creator_idx=idx[keep],
        creator_id=ids,
        features=CreatorFeatures.from_dataset(data_dir),
        sha256=_catalog_sha256(data_dir),
    )


def check_vocabulary(catalog: Catalog, cfg: TowerConfig, train_dir: str | Path | None) -> None:
    """The catalog must extend the vocabulary the model was trained on: at least as many
    creators, and (where the training dataset is still there) the same id at every index."""
    size = len(catalog.features)
    if size < cfg.num_creators:
        raise ValidationError(
            f"catalog {catalog.data_dir} has a creator vocabulary of {size} but the model was "
            f"trained on {cfg.num_creators}: it is not this model's dataset or a later prepare "
            f"of it; set `data` to the dataset the model was trained on (or a newer prepare)"
        )
    vocab = Path(train_dir or "") / vocab_file("creators")
    if not train_dir or not vocab.exists():
        log.info("training vocabulary %s not found; trusting the catalog's indices", vocab)
        return
    trained = pq.read_table(vocab, columns=["index", "id"]).to_pydict()
    mine = dict(zip(catalog.creator_idx.tolist(), catalog.creator_id.tolist(), strict=True))
    moved = [
        (i, c, mine.get(i))
        for i, c in zip(trained["index"], trained["id"], strict=True)
        if FIRST_ID <= i < cfg.num_creators and mine.get(i) != c
    ]
    if moved:
        raise ValidationError(
            f"catalog {catalog.data_dir} renumbers creators the model was trained on, e.g. "
            f"(index, trained id, catalog id) {moved[:3]}; prepare it with vocab_from= the "
            f"training dataset ({train_dir}) so indices are kept"
        )


@torch.no_grad()
def encode_creators(
    model: TwoTower, catalog: Catalog, cfg: TowerConfig, idx: np.ndarray | None = None
) -> np.ndarray:
    """[N, dim] float32 unit vectors of the catalog's creators (all, or vocabulary indices
    `idx`), in that order."""
    idx = catalog.creator_idx if idx is None else idx
    features = catalog.features.to("cpu")
    sizes = (cfg.num_creators, cfg.num_categories, cfg.num_tags)
    chunk, out = 65536, []
    for s in range(0, len(idx), chunk):
        rows = torch.as_tensor(idx[s : s + chunk], dtype=torch.int64)
        out.append(model.encode_creators(**features.inputs(rows, *sizes)).float())
    dim = cfg.dim
    return torch.cat(out).numpy() if out else np.zeros((0, dim), dtype=np.float32)


def load_users(data_dir: Path, hashing: tuple[int, int]) -> UserFeatures:
    """The users table as the training data module read it (same attribute hashing)."""
    return UserFeatures.from_table(require_dataset(data_dir) / USERS, *hashing)


def sample_users(users: UserFeatures, n: int, seed: int) -> np.ndarray:
    """A seeded sample of up to n users with training pairs (the requests serving answers
    with a history), sorted."""
    pool = np.flatnonzero(users.trained)
    pool = pool[pool >= FIRST_ID]
    if n < len(pool):
        pool = np.random.default_rng(seed).choice(pool, n, replace=False)
    return np.sort(pool).astype(np.int64)


def user_inputs(users: UserFeatures, idx: np.ndarray, cfg: TowerConfig) -> dict:
    """encode_users arguments (torch) by the out-of-vocabulary rule of data.contract."""
    x = users.inputs(np.asarray(idx, dtype=np.int64), cfg.num_creators)
    return {k: torch.as_tensor(v) for k, v in x.items()}


@torch.no_grad()
def encode_users(model: TwoTower, inputs: dict, chunk: int = 8192) -> np.ndarray:
    """[B, dim] float32 unit vectors for encode_users arguments `inputs`."""
    n = len(inputs["user"])
    out = [
        model.encode_users(**{k: v[s : s + chunk] for k, v in inputs.items()}).float()
        for s in range(0, n, chunk)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, model.cfg.dim), dtype=np.float32)
