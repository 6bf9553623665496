"""What training reads from a prepared dataset (`python -m data prepare`): the webdataset shards
of pre-batched examples, and the tables of creator and user features and of the split.

`TowerDataModule` is the LightningDataModule over the shards. It samples training batches one of
two ways (`sampling`):

- `examples`: one batch is `records_per_batch` records (a record holds `record_size` (user,
  creator, history) examples, see data.shards), so the batch size is records_per_batch ×
  record_size. Every shard holds the same number of records and the shard count is a multiple of
  8, so every rank of a 1-, 2-, 4- or 8-process launch reads the same number of batches; the
  shard order is reshuffled each epoch from (seed, epoch).
- `users`: one batch is `users_per_batch` training users; the module takes each user's serving
  history as input and every one of the user's training creators as a positive, so a user is
  encoded once per epoch instead of once per interaction (a multi-positive, listwise loss). The
  users are reshuffled each epoch from (seed, epoch) and dealt evenly to the ranks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from common.artifacts import MANIFEST
from data import contract, tables
from data import manifest as data_manifest
from data.shards import FIELDS, record_dataset
from data.tables import CreatorFeatures, UserFeatures
from training.evaluate import EVAL_SPLIT, Interactions
from training.loss import PositiveIndex


def load_split(folder: str | Path, num_users: int) -> tuple[Interactions, Interactions]:
    """Train and test (user, creator) pairs of a prepared dataset, deduplicated, as CSR."""
    return load_pairs(folder, tables.TRAIN, num_users), load_pairs(folder, tables.TEST, num_users)


def load_validation(folder: str | Path, num_users: int) -> Interactions | None:
    """The validation pairs carved out of train (data split.validation_fraction), as CSR; None
    when the dataset has none (prepared without, or before the split existed)."""
    if not has_validation(folder):
        return None
    return load_pairs(folder, tables.VALIDATION, num_users)


def has_validation(folder: str | Path) -> bool:
    """Whether a prepared dataset has validation pairs (read from the file's footer only)."""
    path = Path(folder) / tables.VALIDATION
    return path.exists() and pq.ParquetFile(path).metadata.num_rows > 0


def load_pairs(folder: str | Path, table: str, num_users: int) -> Interactions:
    """One table's (user, creator) pairs, deduplicated, as CSR."""
    t = pq.read_table(Path(folder) / table, columns=["user_idx", "creator_idx"])
    return Interactions.from_pairs(t["user_idx"].to_numpy(), t["creator_idx"].to_numpy(), num_users)


def positive_index(train: Interactions, num_creators: int) -> PositiveIndex:
    """Every user's training creators, for accidental-hit masking."""
    return PositiveIndex(
        torch.as_tensor(train.indptr), torch.as_tensor(train.indices), num_creators
    )


def collate_records(records: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """k decoded records → one batch of k × record_size examples."""
    batch = {f: torch.as_tensor(np.concatenate([r[f] for r in records])) for f in FIELDS}
    batch["user"] = batch["user"].long()
    batch["creator"] = batch["creator"].long()
    batch["history"] = batch["history"].long()
    return batch


class TowerDataModule(pl.LightningDataModule):
    """Shards for training; held-out users in chunks for full-corpus evaluation: the
    validation split's where the dataset has one (`held_out`, `eval_split`), else test's.

    Args:
        data_dir: a prepared dataset (the folder `python -m data prepare` wrote).
        sampling: examples (shard records) | users (users with all their positives).
        records_per_batch: records per training batch; batch size = this × record_size.
        users_per_batch: users per training batch when sampling = users.
        shuffle_records: records held in the shuffle buffer of each DataLoader worker.
        num_workers: DataLoader workers per rank; they split the rank's shards.
        eval_users_per_batch: test users scored per evaluation step.
        max_eval_users: evaluate a fixed, seeded sample of this many test users (None = all).
        user_attribute_buckets: hashed rows for user attribute strings.
        max_user_attributes: attributes kept per user.
        seed: shard and record shuffling.
    """

    def __init__(
        self,
        data_dir: str,
        sampling: str = "examples",
        records_per_batch: int = 1,
        users_per_batch: int = 512,
        shuffle_records: int = 16,
        num_workers: int = 1,
        eval_users_per_batch: int = 2048,
        max_eval_users: int | None = None,
        user_attribute_buckets: int = contract.ATTRIBUTE_BUCKETS,
        max_user_attributes: int = contract.ATTRIBUTE_WIDTH,
        seed: int = 0,
    ):
        super().__init__()
        if records_per_batch < 1:
            raise ValueError(f"--data.records_per_batch={records_per_batch}: use 1 or more")
        if users_per_batch < 1:
            raise ValueError(f"--data.users_per_batch={users_per_batch}: use 1 or more")
        if sampling not in ("examples", "users"):
            raise ValueError(f"--data.sampling={sampling!r}: use examples or users")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        if not (self.data_dir / MANIFEST).exists():
            raise FileNotFoundError(
                f"no prepared dataset at {self.data_dir} (manifest.json missing); run "
                f"`python -m data prepare --config configs/data/<name>.yaml` first"
            )
        self.manifest = data_manifest.load(self.data_dir)
        vocab, shards = self.manifest["vocab"], self.manifest["shards"]
        self.num_users = int(vocab["users"]["size"])
        self.num_creators = int(vocab["creators"]["size"])
        self.num_categories = int(vocab["categories"]["size"])
        self.num_tags = int(vocab["tags"]["size"])
        self.text_dim = int((self.manifest.get("text_features") or {}).get("dim", 0))
        self.record_size = int(shards["record_size"])
        self.batch_size = records_per_batch * self.record_size
        self.records_per_shard = int(shards["records_per_shard"])
        self.num_shards = int(shards["count"])
        self._loaded = False

    def setup(self, stage: str | None = None) -> None:
        if self._loaded:
            return
        h = self.hparams
        self.creators = CreatorFeatures.from_dataset(self.data_dir)
        self.users = UserFeatures.from_table(
            self.data_dir / tables.USERS, h.user_attribute_buckets, h.max_user_attributes
        )
        self.train, self.test = load_split(self.data_dir, self.num_users)
        # each epoch's evaluation, and so the checkpoint chosen, reads validation where the
        # dataset has it: model selection never reads test
        self.validation = load_validation(self.data_dir, self.num_users)
        self.eval_split = EVAL_SPLIT if self.validation is None else "validation"
        self.held_out = self.test if self.validation is None else self.validation
        # test, scored once at the end, masks all a fan is known to like: train and validation
        self.known = (
            self.train
            if self.validation is None
            else Interactions.union(self.train, self.validation)
        )
        self.popularity = np.zeros(self.num_creators, dtype=np.int64)
        self.popularity[: len(self.creators)] = self.creators.train_count
        self.train_users = np.flatnonzero(self.train.lengths() > 0)
        self.eval_users = self._sample(np.flatnonzero(self.held_out.lengths() > 0))
        self.test_users = self._sample(np.flatnonzero(self.test.lengths() > 0))
        self._loaded = True

    def _sample(self, users: np.ndarray) -> np.ndarray:
        """A fixed, seeded sample of max_eval_users of them (all when it is unset or larger)."""
        h = self.hparams
        if h.max_eval_users and h.max_eval_users < len(users):
            rng = np.random.default_rng(h.seed)
            return np.sort(rng.choice(users, h.max_eval_users, False))
        return users

    def creator_names(self) -> list[str]:
        """Display name per creator index (the id where a creator has no name)."""
        if not hasattr(self, "_names"):
            t = pq.read_table(
                self.data_dir / tables.CREATORS, columns=["creator_idx", "creator_id", "name"]
            )
            names = [""] * (int(t["creator_idx"].to_numpy().max()) + 1)
            rows = zip(*(t[c].to_pylist() for c in t.column_names), strict=True)
            for idx, creator_id, name in rows:
                names[idx] = name or creator_id
            self._names = names
        return self._names

    @property
    def user_ids(self) -> list[str]:
        if not hasattr(self, "_user_ids"):
            t = pq.read_table(self.data_dir / tables.USERS, columns=["user_idx", "user_id"])
            ids = [""] * (int(t["user_idx"].to_numpy().max()) + 1)
            for idx, user_id in zip(
                t["user_idx"].to_pylist(), t["user_id"].to_pylist(), strict=True
            ):
                ids[idx] = user_id
            self._user_ids = ids
        return self._user_ids

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

    def train_batches_per_rank(self, world_size: int) -> int:
        if self.hparams.sampling == "users":
            return -(-self._users_per_rank(world_size) // self.hparams.users_per_batch)
        workers = max(1, self.hparams.num_workers)
        records = self.num_shards // world_size * self.records_per_shard
        return records // workers // self.hparams.records_per_batch * workers

    def _users_per_rank(self, world_size: int) -> int:
        """Training users each rank takes per epoch: an equal share (the remainder of the
        division sits out that epoch, a different few each epoch), whole batches only if
        there is at least one."""
        self.setup()
        share = len(self.train_users) // world_size
        per_batch = self.hparams.users_per_batch
        return share // per_batch * per_batch if share >= per_batch else share

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        epoch = self.trainer.current_epoch if self.trainer else 0
        h = self.hparams
        if h.sampling == "users":
            return self._user_batches(rank, world, epoch)
        dataset = (
            record_dataset(self.data_dir / tables.SHARDS, rank, world, True, h.seed, epoch)
            .shuffle(h.shuffle_records, seed=(h.seed, epoch, rank).__hash__())
            .batched(h.records_per_batch, collation_fn=collate_records, partial=False)
            .with_length(self.train_batches_per_rank(world))
        )
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=h.num_workers,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )

    def _user_batches(self, rank: int, world: int, epoch: int) -> DataLoader:
        """This rank's share of the training users, shuffled from (seed, epoch), in batches of
        {"user": [users_per_batch] int64}."""
        order = np.random.default_rng((self.hparams.seed, epoch)).permutation(self.train_users)
        take = self._users_per_rank(world)
        mine = order[rank * take : (rank + 1) * take]
        size = max(1, min(self.hparams.users_per_batch, len(mine)))
        batches = [{"user": torch.as_tensor(mine[s : s + size])} for s in range(0, len(mine), size)]
        return DataLoader(batches, batch_size=None, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        """Each epoch's evaluation: the held-out split's users (validation's where there is one)."""
        return self._user_chunks(self.eval_users)

    def test_dataloader(self) -> DataLoader:
        """The one test evaluation at the end of a fit (training.cli): test's users."""
        return self._user_chunks(self.test_users)

    def _user_chunks(self, users: np.ndarray) -> DataLoader:
        """Chunks of user indices; each rank takes a strided share (no padding, so the merged
        sums are exact)."""
        rank, world = self._rank()
        users = users[rank::world]
        size = self.hparams.eval_users_per_batch
        chunks = [torch.as_tensor(users[s : s + size]) for s in range(0, len(users), size)]
        return DataLoader(chunks, batch_size=None, shuffle=False)
