"""The retrieval losses: sampled softmax over in-batch (and optionally extra) creators.

Two objectives, one per way training samples (training.data): `RetrievalLoss` for batches of
(user, creator) examples and `MultiPositiveLoss` for batches of users with every training
creator of each as a positive. Each is one module with every term on a switch, returning a dict
of named `*_loss` terms (open_clip's shape):

- in-batch sampled softmax: row i's positive is column i (examples), or every positive of a
  user against the batch's other creators (users);
- logQ correction (Yi et al., RecSys 2019): subtract log q(creator) from every logit, with q
  estimated by `StreamingFrequency` so popular creators are not over-penalised as negatives;
- mixed negative sampling (Yang et al., 2020): extra creators drawn uniformly from the corpus;
- cross-device negatives: creator vectors gathered from all ranks with gradients, so N
  processes compute exactly the loss and gradients of one process over the global batch
  (tests/training/test_loss.py runs 2 real processes);
- accidental-hit masking: a column that is one of the row's known positives (the same creator,
  or a (user, creator) pair from training) never counts as a negative.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from data.contract import FIRST_ID

NEG_INF = -1e9  # finite, so a fully masked row cannot produce NaN


def gather_features(x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """All ranks' rows of x, concatenated in rank order, with gradients flowing back to every
    rank (torch.distributed.nn.all_gather's backward sums the incoming gradients)."""
    if world_size == 1:
        return x
    import torch.distributed.nn as dist_nn

    return torch.cat(dist_nn.all_gather(x), dim=0)


def gather_rows(
    x: torch.Tensor, rank: int, world_size: int, with_grad: bool = True
) -> tuple[torch.Tensor, int]:
    """All ranks' rows of x in rank order where each rank holds a different number of them (a
    users batch's positives), and the offset of this rank's first row. Rows are padded to the
    longest rank's count for the collective and the padding dropped again; with `with_grad`
    gradients flow back to the rank that owns each row."""
    if world_size == 1:
        return x, 0
    count = torch.tensor([len(x)], device=x.device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = torch.cat([x, x.new_zeros((max(sizes) - len(x), *x.shape[1:]))])
    if with_grad:
        parts = gather_features(padded, rank, world_size).split(max(sizes))
    else:
        parts = gather_plain(padded, world_size).split(max(sizes))
    rows = torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])
    return rows, sum(sizes[:rank])


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


class SampledSoftmax(nn.Module):
    """The switches both objectives share, and where this process sits in the launch (the
    module sets rank and world_size once the trainer knows them)."""

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


class RetrievalLoss(SampledSoftmax):
    """The examples objective: row i of a batch of (user, creator) pairs has column i as its
    positive, every other in-batch (and extra) creator as a negative."""

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


def multi_positive_nll(
    logits: torch.Tensor,  # [B, C] scaled (and logQ-corrected) scores of B users
    rows: torch.Tensor,  # [T] the user row of each positive
    cols: torch.Tensor,  # [T] the candidate column of each positive
    negatives: torch.Tensor | None = None,  # [B, C] bool, False where a column is not a negative
) -> tuple[torch.Tensor, torch.Tensor]:
    """Listwise loss of users with several positives each: for every positive, the softmax
    cross-entropy of its column against the row's negatives, averaged over each user's
    positives. Returns ([B] per-user mean, [B] whether the user has any positive).

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
    return per_user / counts.clamp(min=1), has


def multi_positive_softmax(logits, rows, cols, negatives=None) -> torch.Tensor:
    """multi_positive_nll averaged over the users with positives (a heavy user counts once)."""
    per_user, has = multi_positive_nll(logits, rows, cols, negatives)
    return per_user[has].mean()


class MultiPositiveLoss(SampledSoftmax):
    """The users-batch objective: B users, each scored against the candidates with every one of
    its training creators as a positive (`multi_positive_nll`).

    Candidates are either the whole corpus (`corpus_emb`: an exact softmax, the same on every
    rank) or the batch's positives, gathered from every rank with gradients when
    `cross_device`, plus extra uniform negatives (`extra_*`, this rank's own). The mean is taken
    over the users of the global batch: each rank returns its users' loss sum × world size /
    the global number of users, so DDP's averaging of gradients gives exactly the gradient of
    one process over the global batch.
    """

    def candidates(self, target_emb, targets, target_log_q, extra_emb, extra_ids, extra_log_q):
        """The sampled candidate set: every rank's positives (gathered), then the extras; and
        the column of this rank's first positive."""
        world = self.world_size if self.cross_device else 1
        emb, offset = gather_rows(target_emb, self.rank, world)
        ids, _ = gather_rows(targets, self.rank, world, with_grad=False)
        log_q = None
        if target_log_q is not None:
            log_q, _ = gather_rows(target_log_q, self.rank, world, with_grad=False)
        if extra_emb is not None:
            emb, ids = torch.cat([emb, extra_emb]), torch.cat([ids, extra_ids])
            if log_q is not None:
                log_q = torch.cat([log_q, extra_log_q])
        return emb, ids, log_q, offset

    def forward(
        self,
        user_emb: torch.Tensor,  # [B, D] unit vectors
        logit_scale: torch.Tensor,  # scalar, exp(log scale)
        *,
        users: torch.Tensor,  # [B] user indices
        rows: torch.Tensor,  # [T] the batch row of each positive
        targets: torch.Tensor,  # [T] creator index of each positive
        target_emb: torch.Tensor | None = None,  # [T, D] the positives' vectors (sampled)
        target_log_q: torch.Tensor | None = None,  # [T] log q of each positive (sampled)
        corpus_emb: torch.Tensor | None = None,  # [C, D] every creator (full corpus)
        extra_emb: torch.Tensor | None = None,  # [M, D] uniform negatives
        extra_ids: torch.Tensor | None = None,  # [M]
        extra_log_q: torch.Tensor | None = None,  # [M]
        positives: PositiveIndex | None = None,  # every user's training creators
    ) -> dict[str, torch.Tensor]:
        if corpus_emb is not None:  # every creator a candidate: column = creator index
            cand_emb, log_q, cols = corpus_emb, None, targets
            cand_ids = torch.arange(len(corpus_emb), device=corpus_emb.device)
        else:
            cand_emb, cand_ids, log_q, offset = self.candidates(
                target_emb, targets, target_log_q, extra_emb, extra_ids, extra_log_q
            )
            cols = torch.arange(len(targets), device=targets.device) + offset
        logits = logit_scale * user_emb @ cand_emb.T  # [B, C']
        if self.logq_correction and log_q is not None:
            logits = logits - log_q[None, :]
        valid = (cand_ids >= FIRST_ID)[None, :]  # never the reserved slots
        if self.mask_accidental_hits:  # a user's own training creators are not negatives
            negatives = valid.expand(len(users), -1)
            if positives is not None:
                negatives = negatives & ~positives.mask(users, cand_ids)
        else:
            logits, negatives = logits.masked_fill(~valid, NEG_INF), None
        per_user, has = multi_positive_nll(logits, rows, cols, negatives)
        return {"contrastive_loss": self._global_mean(per_user[has].sum(), has.sum())}

    def _global_mean(self, total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """total / the global batch's users, × world size (undone by DDP's averaging)."""
        if self.world_size == 1:
            return total / count.clamp(min=1)
        count = count.to(total.dtype).detach().clone()
        dist.all_reduce(count)
        return total * self.world_size / count.clamp(min=1)
