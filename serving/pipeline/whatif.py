"""What if, and why: answers for an edited or invented fan from the real user tower, and how
much each creator of a fan's history adds to each recommended creator's score.

A `Profile` is one fan as the user tower sees them before data.contract's rule: vocabulary
index, whether they trained, history (creator vocabulary indices in contract.history_row's
layout), hashed attributes, and what they follow (never recommended). `Profile.of` reads one
from a feature-store lookup, `Profile.edited` is the same fan with another history.

`pipeline_for` answers profiles through the service's own stages after the lookup: the encode
stage with its breaker and in-process fallback, retrieve, filter, rank and fallback. An
unedited profile therefore gets exactly /recommend's answer.

`contributions` measures "why" by leaving each history creator out: the fan and every
leave-one-out variant go through the user tower in one batched call, and the contribution of
history creator j to creator r is score(fan, r) − score(fan without j, r). These are the
tower's own numbers, not a guess from nearest neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from common.errors import UnavailableError
from data.contract import PAD, UNK, history_row
from serving.features.base import UserFeaturesBatch
from serving.pipeline.bundle import Bundle
from serving.pipeline.stages import Batch, Encode, Pipeline, Request, admit


@dataclass(frozen=True)
class Profile:
    user_idx: int
    trained: bool
    history: np.ndarray  # [N] int64, PAD on the left, newest last
    attributes: np.ndarray  # [A] int64
    followed: np.ndarray  # int64 creator vocabulary indices
    known: bool = True

    @classmethod
    def of(cls, f: UserFeaturesBatch, i: int) -> Profile:
        return cls(
            int(f.user_idx[i]), bool(f.trained[i]), np.asarray(f.history[i], np.int64),
            np.asarray(f.attributes[i], np.int64), np.asarray(f.followed[i], np.int64),
            bool(f.known[i]),
        )  # fmt: skip

    def items(self) -> np.ndarray:
        """The history's creators, oldest first."""
        return self.history[self.history != PAD]

    def edited(self, creators: Sequence[int]) -> Profile:
        """The same fan with this history (creator vocabulary indices, oldest first): what
        they follow loses the creators taken out and gains those put in."""
        removed = set(self.items().tolist()) - set(creators)
        followed = (set(self.followed.tolist()) - removed) | set(creators)
        return replace(
            self, history=history_row(creators, len(self.history)),
            followed=np.asarray(sorted(followed), np.int64), known=True,
        )  # fmt: skip

    def without(self, j: int) -> Profile:
        """The history with its j-th creator (oldest first) left out."""
        items = self.items()
        return replace(self, history=history_row(np.delete(items, j), len(self.history)))


def invented(history_len: int, attribute_width: int) -> Profile:
    """A fan nobody knows: no id of their own, no history, no attributes."""
    return Profile(
        UNK, False, np.zeros(history_len, np.int64), np.zeros(attribute_width, np.int64),
        np.zeros(0, np.int64), known=False,
    )  # fmt: skip


def features_of(profiles: Sequence[Profile]) -> UserFeaturesBatch:
    return UserFeaturesBatch(
        user_idx=np.array([p.user_idx for p in profiles], np.int64),
        known=np.array([p.known for p in profiles], bool),
        trained=np.array([p.trained for p in profiles], bool),
        history=np.stack([p.history for p in profiles]),
        attributes=np.stack([p.attributes for p in profiles]),
        followed=[p.followed for p in profiles],
    )


class Given:
    """The lookup stage with its work done: the batch's fans are the profiles given."""

    name = "lookup"

    def __init__(self, profiles: Sequence[Profile]):
        self.features = features_of(profiles)

    def __call__(self, batch: Batch) -> None:
        admit(batch, self.features)


def pipeline_for(base: Pipeline, profiles: Sequence[Profile]) -> Pipeline:
    """`base`'s stages (the recommender's) with the lookup replaced by `profiles`."""
    return Pipeline([Given(profiles), *base.stages[1:]])


def contributions(
    base: Pipeline, bundle: Bundle, profile: Profile, rows: np.ndarray
) -> tuple[np.ndarray, str | None]:
    """[len(profile.items()), len(rows)]: what each history creator adds to the score of each
    faiss row, from one tower call over the fan and its leave-one-out variants; and how the
    tower ran (None: on its server; else the encode stage's flag)."""
    variants = [profile] + [profile.without(j) for j in range(len(profile.items()))]
    queries, flag = encode(base, bundle, variants)
    scores = queries @ np.asarray(bundle.embeddings[rows], np.float32).T  # [1 + n, R]
    return scores[0][None, :] - scores[1:], flag


def encode(base: Pipeline, bundle: Bundle, profiles: Sequence[Profile]):
    """[len(profiles), d] user vectors from `base`'s encode stage (its tower, its fallback),
    and how the tower ran; UnavailableError when neither answered."""
    batch = Batch.start([Request("", 1)] * len(profiles), bundle)
    batch.features = features_of(profiles)
    batch.model = list(range(len(profiles)))  # every profile, even one with nothing yet
    stage = next(s for s in base.stages if isinstance(s, Encode))
    stage(batch)
    if batch.queries is None:
        raise UnavailableError("the user tower did not answer (on its server or in-process)")
    return batch.queries, batch.degraded[0]
