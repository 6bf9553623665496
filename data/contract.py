"""The feature contract: what every stage agrees on about ids and tower inputs, defined once.

Prepare numbers ids by it, the towers embed by it, training reads by it, the index stage
encodes by it, the ONNX export bakes it into the graph and serving looks users up by it:

- **Reserved ids.** Index 0 is padding and 1 is unknown in every vocabulary (users, creators,
  categories, tags); real ids start at 2.
- **The out-of-vocabulary rule.** A vocabulary only grows (data.vocab), so a model meets ids
  past the vocabulary it was trained on. A user without training pairs is the unknown user
  (their id row never learned anything; the towers' cold_user_rate trains that row); a
  creator, category or tag the model has no row for goes in as unknown (the content path:
  category, tags and text still place it); a history item or attribute bucket without a row
  is padding (dropped). Negative ids are nobody's and follow the same rules.
- **Attribute hashing.** User attribute strings ("country=DE", "plan=paid") hash with crc32,
  stable across processes and versions, into `ATTRIBUTE_BUCKETS` rows, at most
  `ATTRIBUTE_WIDTH` per user.
- **Histories.** A user's history is their last N training creators, newest last, padded with
  0 in front; N is the users table's list size (`data.tables.history_length`).

The rules are written over arrays with nothing but comparison, `&` and a masked fill, so the
same lines run on numpy arrays (serving, the feature store), on torch tensors (training, the
index stage) and inside the exported ONNX graph. Nothing here imports torch.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

PAD = 0
UNK = 1
RESERVED = ("<pad>", "<unk>")
"""The ids of the reserved slots, in index order: every vocabulary starts with them."""
FIRST_ID = len(RESERVED)
"""The first index of a real id."""

ATTRIBUTE_BUCKETS = 4096
"""Hashed rows for user attribute strings (the towers' attribute table, the data module's
user_attribute_buckets); buckets 0 and 1 are the reserved slots."""
ATTRIBUTE_WIDTH = 8
"""Attributes kept per user (the data module's max_user_attributes)."""


def _fill(x, keep, value: int):
    """x where `keep`, else `value`: np.where for numpy arrays, masked_fill for torch tensors
    (which exports to ONNX as Where), so one rule serves both."""
    if isinstance(x, np.ndarray):
        return np.where(keep, x, value).astype(x.dtype, copy=False)
    return x.masked_fill(~keep, value)


def in_vocabulary(x, size: int):
    """True where x is an index the vocabulary of `size` has a row for (reserved slots included)."""
    return (x >= 0) & (x < size)


def content_ids(x, size: int):
    """Creator, category or tag indices past a model's vocabulary of `size` → UNK."""
    return _fill(x, in_vocabulary(x, size), UNK)


def row_or_padding(x, size: int):
    """History items or attribute buckets a table of `size` rows has no row for → PAD."""
    return _fill(x, in_vocabulary(x, size), PAD)


def user_ids(user, trained=None):
    """The user index the tower embeds: UNK for users without training pairs (`trained` False)
    and for negative ids. Indices past the vocabulary pass: the tower hashes those users (who
    signed up after training) into shared rows."""
    keep = user >= 0
    if trained is not None:
        keep = keep & trained
    return _fill(user, keep, UNK)


def history_row(creators: Sequence[int], length: int) -> np.ndarray:
    """One fan's history as the tower takes it: the newest `length` creator indices of
    `creators` (oldest first), most recent in the last column, PAD-filled on the left
    (data.features.histories writes the same layout)."""
    out = np.full(length, PAD, dtype=np.int64)
    kept = np.asarray(list(creators)[-length:] if length else [], dtype=np.int64)
    if len(kept):
        out[length - len(kept) :] = kept
    return out


def user_inputs(user, trained, history, attributes, num_creators: int) -> dict:
    """encode_users arguments for users as the feature tables hold them (`user` vocabulary
    indices, `trained` whether each has training pairs, `history` [B, N], `attributes`
    [B, A]), for a model whose creator vocabulary has `num_creators` rows."""
    return {
        "user": user_ids(user, trained),
        "history": row_or_padding(history, num_creators),
        "attributes": attributes,
    }


def creator_inputs(features: dict, num_creators: int, num_categories: int, num_tags: int) -> dict:
    """encode_creators arguments (creator, category, tags, popularity, text) with ids past the
    model's vocabularies as UNK: a creator added after training is placed by its content."""
    return {
        **features,
        "creator": content_ids(features["creator"], num_creators),
        "category": content_ids(features["category"], num_categories),
        "tags": content_ids(features["tags"], num_tags),
    }


def hash_attributes(
    values: Sequence[Sequence[str] | None],
    buckets: int = ATTRIBUTE_BUCKETS,
    width: int = ATTRIBUTE_WIDTH,
) -> np.ndarray:
    """User attribute strings → [U, width] int64 bucket ids in [2, buckets), 0 = none; the
    first `width` of each user's are kept."""
    if buckets <= FIRST_ID:
        raise ValueError(f"attribute buckets={buckets}: need more than the {FIRST_ID} reserved")
    out = np.zeros((len(values), width), dtype=np.int64)
    for i, row in enumerate(values):
        for j, text in enumerate((row or [])[:width]):
            out[i, j] = FIRST_ID + zlib.crc32(text.encode()) % (buckets - FIRST_ID)
    return out


def user_attributes(country: str | None, attributes: Sequence[str] | None) -> list[str]:
    """The attribute strings of one user: the country first, then the source's own."""
    return ([f"country={country}"] if country else []) + list(attributes or [])
