"""What every feature-store backend answers, and the contract a store keeps with a model.

A store answers `lookup(user_ids) -> UserFeaturesBatch`: for each id, the history and hashed
attributes the user tower takes, exactly as training read them (data.tables.UserFeatures), and
every creator the user already engaged with (never recommended again). Backends: the embedded
one (serving.features.embedded, a memory-mapped folder) and Redis
(serving.features.redis_store); the offline job that writes a store is
serving.features.materialise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from common.errors import BAD_INPUT, StageError, UnavailableError
from data.contract import UNK, user_inputs

KIND = "towerline.feature_store"
FORMAT = 1
ARRAYS = (
    "user_idx",  # int64 [U] vocabulary index of each row; rows ascend by it
    "trained",  # bool [U] the user has training pairs
    "history",  # int64 [U, N] last N training creators, 0 = padding, newest last
    "attributes",  # int64 [U, A] hashed attribute buckets, 0 = none
    "followed_indptr",  # int64 [U + 1] CSR over followed_indices
    "followed_indices",  # int32 [P] creator vocabulary indices, ascending per user
    "id_bytes",  # uint8 [sum of id lengths] UTF-8 user ids, concatenated in row order
    "id_offsets",  # int64 [U + 1] row r's id is id_bytes[id_offsets[r]:id_offsets[r + 1]]
    "id_hash",  # uint64 [U] blake2b-64 of each id, sorted
    "id_rows",  # int64 [U] row of each id_hash entry
)
"""The store's arrays, one `<name>.npy` file each."""
EMPTY = np.zeros(0, dtype=np.int64)


class FeatureStoreError(StageError, ValueError):
    """A feature store or its input is missing, malformed or corrupted."""

    exit_code = BAD_INPUT


class FeatureStoreUnavailable(UnavailableError):
    """The backend did not answer in time (or holds nothing yet): serve a fallback instead."""


@dataclass
class UserFeaturesBatch:
    """Features of a batch of user ids, in request order."""

    user_idx: np.ndarray  # [B] int64 vocabulary index; UNK (1) for ids the store doesn't know
    known: np.ndarray  # [B] bool: the id is in the store
    trained: np.ndarray  # [B] bool: the user had training pairs
    history: np.ndarray  # [B, N] int64, 0 = padding, newest last
    attributes: np.ndarray  # [B, A] int64 hashed buckets, 0 = none
    followed: list[np.ndarray]  # per user: int64 creator vocabulary indices seen in training
    version: str = ""  # the store version that answered

    def inputs(self, num_creators: int) -> dict[str, np.ndarray]:
        """encode_users arguments for a model of `num_creators`, by data.contract's rule, as
        training read the same users (data.tables.UserFeatures.inputs)."""
        return user_inputs(self.user_idx, self.trained, self.history, self.attributes, num_creators)


@runtime_checkable
class FeatureStore(Protocol):
    version: str
    manifest: dict

    def lookup(self, user_ids: Sequence[str]) -> UserFeaturesBatch: ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


def check_hashing(
    manifest: dict, attribute_buckets: int, attribute_width: int, history_len: int | None = None
) -> None:
    """Refuse a store whose attributes were hashed, or histories cut, for another model (an
    index version's `user_tower` entry holds the model's values)."""
    have = (manifest["attribute_buckets"], manifest["attribute_width"])
    if have != (attribute_buckets, attribute_width):
        raise FeatureStoreError(
            f"feature store {manifest['version']} hashes user attributes into {have[0]} buckets "
            f"× {have[1]}, the model into {attribute_buckets} × {attribute_width}; re-run "
            f"`python -m serving materialise --attribute-buckets {attribute_buckets} "
            f"--attribute-width {attribute_width}`"
        )
    if history_len is not None and manifest["history_len"] != history_len:
        raise FeatureStoreError(
            f"feature store {manifest['version']} keeps histories of {manifest['history_len']} "
            f"creators, the model takes {history_len}; re-run `python -m serving materialise` "
            f"from the dataset the model was trained on"
        )


def encode_ids(user_ids: Sequence[str]) -> list[bytes]:
    bad = next((u for u in user_ids if not isinstance(u, str)), None)
    if bad is not None:
        raise TypeError(f"user id {bad!r} is a {type(bad).__name__}; pass user ids as str")
    return [u.encode() for u in user_ids]


def fingerprint(user_id: bytes) -> int:
    """blake2b, not polars' hash: a store outlives library versions, and this never changes."""
    return int.from_bytes(hashlib.blake2b(user_id, digest_size=8).digest(), "little")


def unknown_batch(n: int, manifest: dict, version: str) -> UserFeaturesBatch:
    """n users the store does not know: the unknown user, empty history, no attributes."""
    return UserFeaturesBatch(
        user_idx=np.full(n, UNK, dtype=np.int64),
        known=np.zeros(n, dtype=bool),
        trained=np.zeros(n, dtype=bool),
        history=np.zeros((n, manifest["history_len"]), dtype=np.int64),
        attributes=np.zeros((n, manifest["attribute_width"]), dtype=np.int64),
        followed=[EMPTY] * n,
        version=version,
    )
