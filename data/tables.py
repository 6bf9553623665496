"""The tables of a prepared dataset as the towers' inputs: numpy arrays indexed by vocabulary
index, read the one way training, the index stage and the feature store all read them.

    tables/creators.parquet   creator_idx, creator_id, name, category, tags, description,
                              created_at, category_idx, tag_idx, train_count
    tables/users.parquet      user_idx, user_id, history (fixed-size list), train_count,
                              test_count, signup_at, country, attributes
    tables/train.parquet, tables/validation.parquet, tables/test.parquet
                              (user_idx, creator_idx, ts, weight) pairs; validation is carved
                              out of train (split.validation_fraction; empty when 0)
    tables/creator_text.npy   float16 [C, D] sentence vectors, when the dataset has them

`CreatorFeatures` and `UserFeatures` hold numpy arrays; `.to(device)` gives the same object
over torch tensors (training keeps them on its device). Nothing here imports torch until then.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from data import contract
from data import manifest as data_manifest

# Paths relative to a prepared dataset's folder, as its manifest lists them.
CREATORS = "tables/creators.parquet"
USERS = "tables/users.parquet"
TRAIN = "tables/train.parquet"
TEST = "tables/test.parquet"
VALIDATION = "tables/validation.parquet"
CREATOR_TEXT = "tables/creator_text.npy"
VOCAB = "vocab"
SHARDS = "shards"
QUARANTINE = "quarantine.parquet"


def vocab_file(name: str) -> str:
    """A vocabulary's file (index → id), `name` one of users, creators, categories, tags."""
    return f"{VOCAB}/{name}.parquet"


def _to(obj, device, fields: tuple[str, ...]):
    import torch

    return dataclasses.replace(
        obj, **{f: torch.as_tensor(getattr(obj, f)).to(device) for f in fields}
    )


@dataclass
class CreatorFeatures:
    """Inputs of the creator tower for every creator, indexed by vocabulary index."""

    creator: np.ndarray  # [C] int64
    category: np.ndarray  # [C] int64, UNK where the catalog has none
    tags: np.ndarray  # [C, T] int64, 0 = padding
    popularity: np.ndarray  # [C] float32, log1p(train interactions)
    train_count: np.ndarray  # [C] int64 exact counts (always numpy: evaluation's popularity)
    text: np.ndarray | None = None  # [C, text_dim] float32 sentence vectors (data.text)

    @classmethod
    def from_table(
        cls, path: str | Path, max_tags: int, text: str | Path | None = None
    ) -> CreatorFeatures:
        """A creators table; `text` is its creator_text.npy, if any."""
        t = pq.read_table(path, columns=["creator_idx", "category_idx", "tag_idx", "train_count"])
        idx = t["creator_idx"].to_numpy()
        n = int(idx.max()) + 1
        category = np.full(n, contract.UNK, dtype=np.int64)
        category[idx] = t["category_idx"].fill_null(contract.UNK).to_numpy()
        tags = np.zeros((n, max(max_tags, 1)), dtype=np.int64)
        for row, tag_list in zip(idx, t["tag_idx"].to_pylist(), strict=True):
            if tag_list:
                tags[row, : min(len(tag_list), max_tags)] = tag_list[:max_tags]
        counts = np.zeros(n, dtype=np.int64)
        counts[idx] = t["train_count"].to_numpy()
        vectors = None
        if text is not None:
            vectors = np.load(text, allow_pickle=False).astype(np.float32)
            if len(vectors) != n:
                raise ValueError(f"{text}: {len(vectors)} rows for {n} creators; re-run prepare")
        popularity = np.log1p(counts).astype(np.float32)
        return cls(np.arange(n, dtype=np.int64), category, tags, popularity, counts, vectors)

    @classmethod
    def from_dataset(cls, data_dir: str | Path) -> CreatorFeatures:
        """A prepared dataset's creators, as its manifest says they were prepared (tags kept,
        text vectors if any)."""
        data_dir = Path(data_dir)
        m = data_manifest.load(data_dir)
        text = m.get("text_features")
        return cls.from_table(
            data_dir / CREATORS,
            int(m["config"]["features"]["max_tags"]),
            data_dir / text["file"] if text else None,
        )

    def __len__(self) -> int:
        return len(self.creator)

    def _fields(self) -> tuple[str, ...]:
        base = ("creator", "category", "tags", "popularity")
        return base if self.text is None else (*base, "text")

    def to(self, device) -> CreatorFeatures:
        """The same features as torch tensors on `device`."""
        return _to(self, device, self._fields())

    def select(self, index) -> dict:
        """encode_creators arguments of the creators at vocabulary indices `index`."""
        return {f: getattr(self, f)[index] for f in self._fields()}

    def inputs(self, index, num_creators: int, num_categories: int, num_tags: int) -> dict:
        """select(index) for a model of these vocabulary sizes: newer ids go in as UNK."""
        return contract.creator_inputs(self.select(index), num_creators, num_categories, num_tags)


@dataclass
class UserFeatures:
    """What a request for a known user carries: the last N training creators and the hashed
    attributes, and whether the user has training pairs at all."""

    history: np.ndarray  # [U, N] int64, 0 = padding, newest last
    attributes: np.ndarray  # [U, A] int64 hashed buckets, 0 = none
    trained: np.ndarray  # [U] bool

    @classmethod
    def from_table(
        cls,
        path: str | Path,
        buckets: int = contract.ATTRIBUTE_BUCKETS,
        width: int = contract.ATTRIBUTE_WIDTH,
    ) -> UserFeatures:
        t = pq.read_table(
            path, columns=["user_idx", "history", "country", "attributes", "train_count"]
        )
        idx = t["user_idx"].to_numpy()
        n, hist = int(idx.max()) + 1, t["history"].combine_chunks()
        history = np.zeros((n, hist.type.list_size), dtype=np.int64)
        history[idx] = hist.flatten().to_numpy().reshape(len(idx), -1)
        texts = [
            contract.user_attributes(c, a)
            for c, a in zip(t["country"].to_pylist(), t["attributes"].to_pylist(), strict=True)
        ]
        attrs = np.zeros((n, width), dtype=np.int64)
        attrs[idx] = contract.hash_attributes(texts, buckets, width)
        trained = np.zeros(n, dtype=bool)
        trained[idx] = t["train_count"].to_numpy() > 0
        return cls(history, attrs, trained)

    def __len__(self) -> int:
        return len(self.trained)

    def to(self, device) -> UserFeatures:
        """The same features as torch tensors on `device`."""
        return _to(self, device, ("history", "attributes", "trained"))

    def inputs(self, users, num_creators: int) -> dict:
        """encode_users arguments for vocabulary indices `users` (data.contract.user_inputs)."""
        return contract.user_inputs(
            users, self.trained[users], self.history[users], self.attributes[users], num_creators
        )


def history_length(data_dir: str | Path) -> int:
    """The users table's history list size: the N every request's history is padded to."""
    return int(pq.read_schema(Path(data_dir) / USERS).field("history").type.list_size)
