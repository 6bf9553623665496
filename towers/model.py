"""The user tower and the creator tower: plain nn.Modules, no Lightning.

Both map their inputs to L2-normalised vectors of `dim`; scores are dot products scaled by a
learnable temperature (`logit_scale`, CLIP-style, stored as a log). Index 0 is padding and 1 is
unknown in every vocabulary (data.contract), so 0s in histories and tag lists are masked out.

`encode_users(...)` and `encode_creators(...)` are the public API that index and serving call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from data.contract import PAD, UNK


@dataclass
class TowerConfig:
    """The towers' shape: vocabulary sizes (linked from the data module by the training CLI) and
    widths. Saved whole in every checkpoint (`hyper_parameters["tower"]`) and read back whole."""

    num_users: int
    """User vocabulary size (data manifest `vocab.users.size`)."""
    num_creators: int
    num_categories: int = 2
    num_tags: int = 2
    dim: int = 64
    """Output embedding size of both towers."""
    hidden: int = 128
    unknown_user_buckets: int = 1024
    """Users beyond the trained vocabulary hash into this many shared rows, never a crash."""
    pooling: str = "mean"
    """History pooling: mean | attention."""
    history_weights: bool = False
    """Mean pooling weighs each history creator by a learned positive weight (one per creator,
    log-parametrised, starting at 1 = the plain mean): a creator everyone follows can say less
    about a fan than a niche one (the degree normalisation of graph models, learned). The
    spectral initialisation (training/spectral.py) starts it at popularity^-(1/2 + exponent)."""
    content_hidden: int | None = None
    """Width of the creator content branch (category, tag and text vectors, and its MLP) before
    it maps to hidden; None = hidden. A narrow one keeps wide towers (hidden ~1 K) from
    spending most of each step on content features."""
    combiner: str = "mlp"
    """How the user tower joins id, history and attributes: mlp (concatenate → 2-layer MLP) or
    linear (a weighted sum of linear maps, SimpleX-style; starts as ½·id + ½·history)."""
    text_dim: int = 0
    """Size of precomputed creator text embeddings (e.g. 384 for all-MiniLM-L6-v2); 0 = none."""
    attribute_buckets: int = 0
    """Hashed rows for user attribute strings (country, plan, ...); 0 = no attribute input."""
    init_temperature: float = 0.1
    """The softmax temperature the scores start at (logit_scale = log(1 / it))."""
    learn_temperature: bool = False
    """True makes the temperature a parameter; False keeps it at init_temperature."""

    def __post_init__(self):
        if self.pooling not in ("mean", "attention"):
            raise ValueError(f"pooling={self.pooling!r}: use mean or attention")
        if self.combiner not in ("mlp", "linear"):
            raise ValueError(f"combiner={self.combiner!r}: use mlp or linear")
        if self.history_weights and self.pooling != "mean":
            raise ValueError("history_weights=True weighs mean pooling: set pooling=mean")
        if self.num_users < 2 or self.num_creators < 2:
            raise ValueError("num_users and num_creators include the 2 reserved slots (>= 2)")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of x [B, N, D] where mask [B, N] is true; zeros for empty rows."""
    weights = mask.unsqueeze(-1).to(x.dtype)  # [B, N, 1]
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class CreatorTower(nn.Module):
    """Creator id embedding plus a content path (category, tags, popularity, text).

    The content path alone must carry a creator never seen in training, so the id embedding is
    added to it rather than concatenated, and unknown ids (index 1) contribute a shared row.
    """

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        width = cfg.content_hidden or cfg.hidden  # the content branch's own width
        self.id_embedding = nn.Embedding(cfg.num_creators, cfg.hidden, padding_idx=PAD)
        self.category = nn.Embedding(cfg.num_categories, width, padding_idx=PAD)
        self.tags = nn.Embedding(cfg.num_tags, width, padding_idx=PAD)
        self.text = nn.Linear(cfg.text_dim, width) if cfg.text_dim else None
        self.content = nn.Sequential(
            nn.Linear(3 * width + 1, width), nn.GELU(), nn.Linear(width, cfg.hidden)
        )
        self.out = nn.Linear(cfg.hidden, cfg.dim)
        nn.init.normal_(self.id_embedding.weight, std=cfg.hidden**-0.5)  # rows near unit norm
        # The content branch starts at zero and `out` as the identity, so a fresh creator vector
        # is its id embedding, in the space the user tower pools histories in; content grows in
        # as it learns. A random content branch gives every creator the same large offset at
        # the start (Gowalla has popularity only): recall@20 0.04 instead of 0.14 after epoch 1.
        nn.init.zeros_(self.content[-1].weight)
        nn.init.zeros_(self.content[-1].bias)
        nn.init.eye_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self,
        creator: torch.Tensor,  # [C] int64 vocabulary indices
        category: torch.Tensor,  # [C] int64
        tags: torch.Tensor,  # [C, T] int64, 0 = padding
        popularity: torch.Tensor,  # [C] float, log1p(train count)
        text: torch.Tensor | None = None,  # [C, text_dim] precomputed
    ) -> torch.Tensor:
        tag_vec = masked_mean(self.tags(tags), tags != PAD)  # [C, W] (W = content width)
        if self.text is not None and text is None:
            raise ValueError(
                f"this creator tower was trained with text vectors (text_dim="
                f"{self.text.in_features}): pass text= (the dataset's creator_text.npy rows; "
                f"zeros for a creator without text)"
            )
        text_vec = self.text(text) if self.text is not None else torch.zeros_like(tag_vec)
        content = torch.cat(
            [self.category(category), tag_vec, text_vec, popularity.unsqueeze(-1)], dim=-1
        )  # [C, 3W + 1]
        h = self.content(content) + self.id_embedding(creator)  # [C, H]
        return F.normalize(self.out(h), dim=-1)  # [C, D]


class UserTower(nn.Module):
    """User id embedding (unknown users hash into shared buckets) plus the pooled history of
    creators, embedded with the creator tower's id table so both towers share that space."""

    def __init__(self, cfg: TowerConfig, creator_ids: nn.Embedding):
        super().__init__()
        self.cfg = cfg
        self.id_embedding = nn.Embedding(
            cfg.num_users + cfg.unknown_user_buckets, cfg.hidden, padding_idx=PAD
        )
        self.creator_ids = creator_ids  # shared with the creator tower
        self.history_log_weight = _history_log_weight(cfg)
        if cfg.pooling == "attention":
            self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.attributes = (
            nn.Embedding(cfg.attribute_buckets, cfg.hidden, padding_idx=PAD)
            if cfg.attribute_buckets
            else None
        )
        parts = 3 if self.attributes is not None else 2
        if cfg.combiner == "mlp":
            self.mlp = _mlp_combiner(cfg, parts)
        else:  # one linear map per part, summed; each starts as ½ × identity (or close to it)
            self.linear = _linear_combiner(cfg, parts)
        nn.init.normal_(self.id_embedding.weight, std=cfg.hidden**-0.5)  # rows near unit norm

    def user_rows(self, user: torch.Tensor) -> torch.Tensor:
        """Vocabulary index → embedding row. Indices past the vocabulary (users added after
        training) and the unknown slot hash into the shared buckets instead of failing."""
        n, buckets = self.cfg.num_users, self.cfg.unknown_user_buckets
        unknown = (user >= n) | (user == UNK)
        return torch.where(unknown, n + torch.remainder(user * 2654435761, buckets), user)

    def pool(self, history: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """Pool the creators of history [B, N] (0 = padding) into [B, H]."""
        mask = history != PAD
        if self.cfg.pooling == "mean" and not torch.onnx.is_in_onnx_export():
            # fused gather-and-reduce, ~10x cheaper than gathering; ONNX has no embedding_bag
            # with padding, so an export takes the equivalent gather + masked mean below
            table = self.creator_ids.weight
            if self.history_log_weight is None:
                return F.embedding_bag(history, table, mode="mean", padding_idx=PAD)  # [B, H]
            weights = self.history_log_weight(history).squeeze(-1).exp() * mask  # [B, N]
            total = F.embedding_bag(
                history, table, mode="sum", per_sample_weights=weights, padding_idx=PAD
            )
            return total / weights.sum(1, keepdim=True).clamp(min=1e-12)
        hist = self.creator_ids(history)  # [B, N, H]
        if self.cfg.pooling == "mean":
            if self.history_log_weight is None:
                return masked_mean(hist, mask)
            weights = self.history_log_weight(history).exp() * mask.unsqueeze(-1)  # [B, N, 1]
            return (hist * weights).sum(1) / weights.sum(1).clamp(min=1e-12)
        scores = (hist @ self.query(own).unsqueeze(-1)).squeeze(-1) / math.sqrt(hist.shape[-1])
        scores = scores.masked_fill(~mask, float("-inf"))  # [B, N]
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # empty history → zeros
        return (weights.unsqueeze(-1) * hist).sum(1)

    def forward(
        self,
        user: torch.Tensor,  # [B] int64
        history: torch.Tensor,  # [B, N] int64 creator indices, 0 = padding
        attributes: torch.Tensor | None = None,  # [B, A] int64 hashed buckets, 0 = none
    ) -> torch.Tensor:
        own = self.id_embedding(self.user_rows(user))  # [B, H]
        parts = [own, self.pool(history, own)]  # [B, H] each
        if self.attributes is not None:
            if attributes is None:
                attributes = torch.zeros_like(history[:, :1])
            parts.append(masked_mean(self.attributes(attributes), attributes != PAD))  # [B, H]
        if self.cfg.combiner == "mlp":
            return F.normalize(self.mlp(torch.cat(parts, dim=-1)), dim=-1)  # [B, D]
        out = sum(layer(x) for layer, x in zip(self.linear, parts, strict=True))  # [B, D]
        return F.normalize(out, dim=-1)


def _history_log_weight(cfg: TowerConfig) -> nn.Embedding | None:
    """The per-creator history weights (log-parametrised) when cfg.history_weights, else None."""
    if not cfg.history_weights:
        return None
    weight = nn.Embedding(cfg.num_creators, 1, padding_idx=PAD)
    nn.init.zeros_(weight.weight)  # weight 1 each: the plain mean
    return weight


def _mlp_combiner(cfg: TowerConfig, parts: int) -> nn.Sequential:
    """The mlp combiner: the `parts` concatenated [B, H] vectors → 2-layer MLP → [B, D]."""
    return nn.Sequential(
        nn.Linear(parts * cfg.hidden, cfg.hidden),
        nn.GELU(),
        nn.Linear(cfg.hidden, cfg.dim),
    )


def _linear_combiner(cfg: TowerConfig, parts: int) -> nn.ModuleList:
    """The linear combiner's maps, one per part: id and history start as ½ × identity, so a
    fresh user vector is ½·id + ½·history; attributes start small."""
    linear = nn.ModuleList(nn.Linear(cfg.hidden, cfg.dim, bias=False) for _ in range(parts))
    for i, layer in enumerate(linear):
        if i < 2:
            nn.init.eye_(layer.weight)
            layer.weight.data.mul_(0.5)
        else:
            nn.init.normal_(layer.weight, std=0.02)
    return linear


class TwoTower(nn.Module):
    """Both towers and the learnable temperature."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        self.creator_tower = CreatorTower(cfg)
        self.user_tower = UserTower(cfg, self.creator_tower.id_embedding)
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / cfg.init_temperature)),
            requires_grad=cfg.learn_temperature,
        )

    def encode_users(self, user, history, attributes=None) -> torch.Tensor:
        """[B] user indices, [B, N] histories, optional [B, A] attributes → [B, dim] unit
        vectors."""
        return self.user_tower(user, history, attributes)

    def encode_creators(self, creator, category, tags, popularity, text=None) -> torch.Tensor:
        """Creator features → [C, dim] unit vectors (see CreatorTower.forward)."""
        return self.creator_tower(creator, category, tags, popularity, text)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped as in CLIP so the temperature cannot collapse."""
        return self.logit_scale.clamp(max=math.log(100.0)).exp()
