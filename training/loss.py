"""The retrieval loss: sampled softmax over in-batch (and optionally extra) creators.

One module, each term on a switch, returning a dict of named `*_loss` terms (open_clip's shape):

- in-batch sampled softmax: row i's positive is column i;
- logQ correction (Yi et al., RecSys 2019): subtract log q(creator) from every logit, with q
  estimated by `StreamingFrequency` so popular creators are not over-penalised as negatives;
- mixed negative sampling (Yang et al., 2020): extra creators drawn uniformly from the corpus;
- cross-device negatives: creator vectors gathered from all ranks with gradients;
- accidental-hit masking: a column that is one of the row's known positives (the same creator,
  or a (user, creator) pair from training) never counts as a negative.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

NEG_INF = -1e9  # finite, so a fully masked row cannot produce NaN


def gather_features(x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """All ranks' rows of x, concatenated in rank order, with gradients flowing back to every
    rank (torch.distributed.nn.all_gather's backward sums the incoming gradients)."""
    if world_size == 1:
        return x
    import torch.distributed.nn as dist_nn

    return torch.cat(dist_nn.all_gather(x), dim=0)


def gather_plain(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """All ranks' rows of a tensor that needs no gradient (ids, log q)."""
    if world_size == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(out, x)
    return torch.cat(out, dim=0)


class StreamingFrequency(nn.Module):
    """Streaming estimate of how often each creator appears in training batches (Yi et al.):
    per hashed bucket, the last step it was seen (A) and a moving average of the gap between
    sightings (B); q ≈ 1 / B. Buffers, so it is checkpointed with the model."""

    def __init__(self, buckets: int = 1 << 20, alpha: float = 0.01):
        super().__init__()
        self.alpha = alpha
        self.register_buffer("last_seen", torch.zeros(buckets, dtype=torch.float64))
        self.register_buffer("gap", torch.ones(buckets, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.float64))

    def _bucket(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.remainder(ids * 2654435761, self.gap.numel())

    @torch.no_grad()
    def update(self, ids: torch.Tensor) -> None:
        """Record one training step's creators (the global batch, so every rank agrees)."""
        self.step += 1
        b = torch.unique(self._bucket(ids))
        seen_before = self.last_seen[b] > 0
        gap = self.step - self.last_seen[b]
        new_gap = (1 - self.alpha) * self.gap[b] + self.alpha * gap
        self.gap[b] = torch.where(seen_before, new_gap, self.gap[b])
        self.last_seen[b] = self.step

    def log_q(self, ids: torch.Tensor) -> torch.Tensor:
        """log of the estimated per-step sampling probability of each id."""
        return -torch.log(self.gap[self._bucket(ids)].clamp(min=1.0)).float()


def is_known_positive(users, creators, positive_keys, num_creators) -> torch.Tensor:
    """[B, C] mask: (users[i], creators[j]) is in the sorted key set user * num_creators + c."""
    if positive_keys is None or positive_keys.numel() == 0:
        return torch.zeros(len(users), len(creators), dtype=torch.bool, device=users.device)
    keys = users[:, None] * num_creators + creators[None, :]  # [B, C]
    pos = torch.searchsorted(positive_keys, keys).clamp(max=positive_keys.numel() - 1)
    return positive_keys[pos] == keys


class PositiveIndex:
    """Every user's training creators as CSR tensors, for accidental-hit masking.

    `mask(users, cand_ids)` touches only the batch users' own creators and the distinct
    candidates: about 10x cheaper on CPU than searching B × C keys in the sorted key set of the
    whole training set (is_known_positive, kept as the reference the tests compare against).
    """

    def __init__(self, indptr: torch.Tensor, indices: torch.Tensor, num_creators: int):
        self.indptr, self.indices, self.num_creators = indptr.long(), indices.long(), num_creators

    @classmethod
    def from_keys(cls, keys: torch.Tensor, num_users: int, num_creators: int) -> PositiveIndex:
        users, creators = keys // num_creators, keys % num_creators
        indptr = torch.zeros(num_users + 1, dtype=torch.long)
        indptr[1:] = torch.cumsum(torch.bincount(users, minlength=num_users), 0)
        return cls(indptr, creators, num_creators)

    def to(self, device) -> PositiveIndex:
        return PositiveIndex(self.indptr.to(device), self.indices.to(device), self.num_creators)

    def pairs(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every training pair of the batch users: (row in `users`, creator), both [P]."""
        known = users < len(self.indptr) - 1  # users added after training have no pairs
        clamped = torch.where(known, users, 0)
        start = self.indptr[clamped]
        lengths = torch.where(known, self.indptr[clamped + 1] - start, 0)  # [B]
        row = torch.repeat_interleave(torch.arange(len(users), device=users.device), lengths)
        offset = torch.arange(len(row), device=users.device) - torch.repeat_interleave(
            torch.cumsum(lengths, 0) - lengths, lengths
        )
        return row, self.indices[start[row] + offset]

    def mask(self, users: torch.Tensor, cand_ids: torch.Tensor) -> torch.Tensor:
        """[B, C] bool: cand_ids[j] is a training creator of users[i]."""
        row, creator = self.pairs(users)  # [P] the batch users' creators
        uniq, inverse = torch.unique(cand_ids, return_inverse=True)  # [Q], [C]
        slot = torch.full((self.num_creators,), -1, dtype=torch.long, device=users.device)
        slot[uniq] = torch.arange(len(uniq), device=users.device)
        col = slot[creator.clamp(max=self.num_creators - 1)]
        small = torch.zeros(len(users), len(uniq) + 1, dtype=torch.bool, device=users.device)
        small[row, torch.where(col >= 0, col, len(uniq))] = True  # column Q collects misses
        return small[:, inverse]


class RetrievalLoss(nn.Module):
    def __init__(
        self,
        logq_correction: bool = True,
        cross_device: bool = True,
        mask_accidental_hits: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__()
        self.logq_correction = logq_correction
        self.cross_device = cross_device
        self.mask_accidental_hits = mask_accidental_hits
        self.rank, self.world_size = rank, world_size

    def forward(
        self,
        user_emb: torch.Tensor,  # [B, D] unit vectors
        creator_emb: torch.Tensor,  # [B, D] the positives, row-aligned
        logit_scale: torch.Tensor,  # scalar, exp(log scale)
        *,
        users: torch.Tensor,  # [B] user indices
        creators: torch.Tensor,  # [B] creator indices
        log_q: torch.Tensor | None = None,  # [B] log sampling probability of each positive
        weight: torch.Tensor | None = None,  # [B] example weights
        extra_emb: torch.Tensor | None = None,  # [M, D] uniform negatives (mixed sampling)
        extra_ids: torch.Tensor | None = None,  # [M]
        extra_log_q: torch.Tensor | None = None,  # [M]
        positives: PositiveIndex | None = None,  # every user's training creators
    ) -> dict[str, torch.Tensor]:
        world = self.world_size if self.cross_device else 1
        cand_emb = gather_features(creator_emb, self.rank, world)  # [W*B, D]
        cand_ids = gather_plain(creators, world)
        cand_logq = gather_plain(log_q, world) if log_q is not None else None
        if extra_emb is not None:
            cand_emb = torch.cat([cand_emb, extra_emb])  # [W*B + M, D]
            cand_ids = torch.cat([cand_ids, extra_ids])
            if cand_logq is not None:
                cand_logq = torch.cat([cand_logq, extra_log_q])
        logits = logit_scale * user_emb @ cand_emb.T  # [B, W*B (+M)]
        if self.logq_correction and cand_logq is not None:
            logits = logits - cand_logq[None, :]
        b = user_emb.shape[0]
        labels = torch.arange(b, device=logits.device) + (self.rank * b if world > 1 else 0)
        if self.mask_accidental_hits:
            hit = creators[:, None] == cand_ids[None, :]  # the same creator elsewhere
            if positives is not None:
                hit |= positives.mask(users, cand_ids)
            hit[torch.arange(b), labels] = False  # never the row's own positive
            logits = logits.masked_fill(hit, NEG_INF)
        per_row = F.cross_entropy(logits, labels, reduction="none")  # [B]
        if weight is not None:
            per_row = per_row * weight
            loss = per_row.sum() / weight.sum().clamp(min=1e-12)
        else:
            loss = per_row.mean()
        return {"contrastive_loss": loss}


def multi_positive_softmax(
    logits: torch.Tensor,  # [B, C] scaled (and logQ-corrected) scores of B users
    rows: torch.Tensor,  # [T] the user row of each positive
    cols: torch.Tensor,  # [T] the candidate column of each positive
    negatives: torch.Tensor | None = None,  # [B, C] bool, False where a column is not a negative
) -> torch.Tensor:
    """Listwise loss of users with several positives each: for every positive, the softmax
    cross-entropy of its column against the row's negatives, averaged over each user's positives
    and then over users (so a heavy user counts once, as in a per-user mean).

    With `negatives`, a positive competes only with the true negatives of its row (its user's
    other positives are masked, accidental hits); without, with every other column (the
    multinomial likelihood of Mult-VAE).
    """
    pos = logits[rows, cols]  # [T]
    if negatives is None:
        nll = torch.logsumexp(logits, dim=1)[rows] - pos
    else:
        neg_lse = torch.logsumexp(logits.masked_fill(~negatives, NEG_INF), dim=1)  # [B]
        nll = torch.logaddexp(pos, neg_lse[rows]) - pos
    b = logits.shape[0]
    counts = torch.bincount(rows, minlength=b).to(logits.dtype)  # [B]
    per_user = torch.zeros(b, dtype=logits.dtype, device=logits.device).index_add_(0, rows, nll)
    has = counts > 0
    return (per_user[has] / counts[has]).mean()
