"""Spectral initialisation of the towers: start training from a low-pass graph filter.

Graph models for collaborative filtering (LightGCN and the filters that simplify it: GF-CF,
SVD-GCN) score a user's creators through the leading singular vectors of the degree-normalised
interaction matrix R~ = D_u^-1/2 R D_c^-1/2 (optionally every degree plus a smoothing
constant). With V_k, s_k its top k right singular vectors and values, and r_u the user's
training creators, the filter

    score(u, c) = sum_j in r_u  d_j^-a * (V_k diag(s_k^p) V_k^T)[j, c] * d_c^1/2

is a dot product of a pooled history and a creator vector, so the towers can hold it exactly:

- each creator's id row is t_c = d_c^1/2 V_k[c] s_k^(p/2), divided by the largest row norm M
  and completed to unit norm with one extra coordinate sqrt(1 - |t_c / M|^2) (the reduction of
  inner-product search to cosine: the towers' vectors are unit vectors, popularity lives in how
  much of a creator's vector points away from that extra axis);
- the user tower pools its history with per-creator weights d_j^-(a + 1/2) (history_weights),
  and its history map keeps every coordinate but the extra one; user id rows start at zero;
- the creator tower's content branch starts at zero (as always) and its output map as identity.

So before the first step the towers score exactly as the filter does (tests/training/
test_spectral.py checks it), and training with the retrieval loss goes on from there, with the
content path, the user ids and the pooling weights free to move. The SVD is randomised
(torch.svd_lowrank); on Gowalla (30 K × 41 K, 810 K pairs) rank 1,024 takes ~85 s on 2 cores.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from towers.model import TwoTower
from training.evaluate import Interactions
from training.peers import interaction_matrix

log = logging.getLogger(__name__)


def check_spectral_config(model: TwoTower) -> None:
    """The tower settings the spectral initialisation needs, refused with what to set."""
    cfg, problems = model.cfg, []
    if cfg.combiner != "linear":
        problems.append(f"combiner={cfg.combiner!r} (use --model.tower.combiner linear)")
    if cfg.pooling != "mean" or not cfg.history_weights:
        problems.append("history_weights off (--model.tower.history_weights true, pooling mean)")
    if cfg.hidden != cfg.dim:
        problems.append(f"hidden={cfg.hidden} != dim={cfg.dim} (--model.tower.hidden {cfg.dim})")
    if cfg.dim < 2:
        problems.append(f"dim={cfg.dim} (needs >= 2: rank dim-1 plus one coordinate)")
    if problems:
        raise ValueError("init=spectral needs " + "; ".join(problems))


def normalised_matrix(
    train: Interactions, num_users: int, num_creators: int, smoothing: float = 0.0
):
    """R~ = (D_u + s)^-1/2 R (D_c + s)^-1/2 as a sparse COO tensor, and the creators' degrees
    d_c + s (at least 1). s = `smoothing` is SVD-GCN's renormalisation: it narrows the gap
    between the leading singular values and the rest, so the low-pass filter over-smooths less."""
    x = interaction_matrix(train, num_creators)[:num_users].tocoo()
    d_user = np.maximum(np.asarray(x.sum(axis=1)).ravel() + smoothing, 1.0)
    d_creator = np.maximum(np.asarray(x.sum(axis=0)).ravel() + smoothing, 1.0)
    values = 1.0 / np.sqrt(d_user[x.row] * d_creator[x.col])
    matrix = torch.sparse_coo_tensor(
        torch.as_tensor(np.stack([x.row, x.col]).astype(np.int64)),
        torch.as_tensor(values, dtype=torch.float32),
        x.shape,
        check_invariants=True,
    ).coalesce()
    return matrix, d_creator


@torch.no_grad()
def spectral_init(
    model: TwoTower,
    train: Interactions,
    exponent: float = 0.5,
    power: float = 1.0,
    smoothing: float = 0.0,
    oversample: int = 64,
    iterations: int = 6,
    seed: int = 0,
) -> dict:
    """Set the towers' weights to the low-pass filter of `train` (see the module docstring):
    rank dim - 1 (less where the matrix is smaller), history weights d^-(exponent + 1/2),
    singular values to the `power`, `smoothing` added to every degree. Returns what it did, for
    the log."""
    check_spectral_config(model)
    started = time.perf_counter()
    cfg = model.cfg
    matrix, degree = normalised_matrix(train, cfg.num_users, cfg.num_creators, smoothing)
    rank = min(cfg.dim - 1, min(matrix.shape) - 1)
    s, v = _leading_singular(matrix, rank, oversample, iterations, seed)
    d = torch.as_tensor(degree, dtype=torch.float32)
    rows = _creator_rows(v, s, d, power, rank, (cfg.num_creators, cfg.dim))
    _init_creator_tower(model.creator_tower, rows)
    _init_user_tower(model.user_tower, d, exponent, cfg.dim)
    return _logged_info(rank, started, s, exponent, power, smoothing)


def _leading_singular(matrix, rank: int, oversample: int, iterations: int, seed: int):
    """The top `rank` singular values and right vectors, seeded without touching the global RNG."""
    q = min(rank + oversample, min(matrix.shape))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, s, v = torch.svd_lowrank(matrix, q=q, niter=iterations)  # v [C, q]
    return s[:rank], v[:, :rank]


def _creator_rows(v, s, d, power: float, rank: int, shape: tuple[int, int]) -> torch.Tensor:
    """Creator id rows t_c / M, completed to unit norm by the extra axis (module docstring)."""
    t = v * d[:, None].sqrt() * s.pow(power / 2)  # [C, rank]
    t = t / t.norm(dim=1).max().clamp(min=1e-12)
    rows = torch.zeros(*shape)
    rows[:, :rank] = t
    rows[:, -1] = (1.0 - t.pow(2).sum(1)).clamp(min=0.0).sqrt()  # the extra, norm-filling axis
    rows[0] = 0.0  # padding
    return rows


def _init_creator_tower(creator, rows: torch.Tensor) -> None:
    """Creator vectors are the id rows alone: identity output map, content branch at zero."""
    creator.id_embedding.weight.copy_(rows)
    torch.nn.init.eye_(creator.out.weight)
    torch.nn.init.zeros_(creator.out.bias)
    torch.nn.init.zeros_(creator.content[-1].weight)
    torch.nn.init.zeros_(creator.content[-1].bias)


def _init_user_tower(user, d: torch.Tensor, exponent: float, dim: int) -> None:
    """User vectors pool the history with weights d^-(exponent + 1/2); user ids start at zero."""
    user.id_embedding.weight.zero_()
    keep = torch.ones(dim)
    keep[-1] = 0.0  # the pooled history drops the extra axis: it scores no creator
    user.linear[1].weight.copy_(torch.diag(keep))
    for layer in user.linear[2:]:
        layer.weight.zero_()
    log_weight = -(exponent + 0.5) * torch.log(d)
    log_weight[0] = 0.0
    user.history_log_weight.weight.copy_(log_weight[:, None])


def _logged_info(rank: int, started: float, s, exponent: float, power: float, smoothing: float):
    """What the initialisation did (rank, time, extreme singular values, settings), logged."""
    info = {
        "rank": rank,
        "seconds": round(time.perf_counter() - started, 1),
        "singular_values": [round(float(x), 4) for x in (s[0], s[-1])],
        "exponent": exponent,
        "power": power,
        "smoothing": smoothing,
    }
    log.info("spectral init: %s", info)
    return info
