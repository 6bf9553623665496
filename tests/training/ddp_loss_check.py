"""Run as 2 real processes (gloo) by test_loss.py: each rank computes a loss on its half of a
global batch with cross-device negatives and backpropagates; rank 0 saves the losses and the
gradients as DDP's averaging leaves them (each rank's gradient divided by the world size).

    python ddp_loss_check.py RANK WORLD OUT examples   # RetrievalLoss, (user, creator) pairs
    python ddp_loss_check.py RANK WORLD OUT users      # MultiPositiveLoss, sampled candidates
    python ddp_loss_check.py RANK WORLD OUT corpus     # MultiPositiveLoss, the full corpus
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from training.loss import MultiPositiveLoss, PositiveIndex, RetrievalLoss


def batch(seed=0, n=8, d=6):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=g),
        torch.randn(n, d, generator=g),
        torch.randint(0, 5, (n,), generator=g),
        torch.randint(2, 9, (n,), generator=g),
        torch.randn(n, generator=g),
    )


def users_batch(seed=0, n=8, creators=12, d=6):
    """n users with 1-4 training creators each (so the ranks hold different numbers of
    positives), user vectors [n, d], a creator table [creators, d] and 3 extra negatives."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 5, (n,), generator=g)
    keys = torch.unique(
        torch.cat(
            [u * creators + torch.randperm(creators - 2, generator=g)[:c] + 2
             for u, c in enumerate(counts.tolist())]
        )
    )  # fmt: skip
    return {
        "user_emb": torch.randn(n, d, generator=g),
        "table": torch.randn(creators, d, generator=g),
        "positives": PositiveIndex.from_keys(keys, n, creators),
        "extra_ids": torch.tensor([3, 7, 11]),
    }


def users_loss(data, users, user_emb, table, mode, rank=0, world=1):
    """MultiPositiveLoss of `users` (rows of the batch) as the module computes it."""
    rows, targets = data["positives"].pairs(users)
    unit = F.normalize(table, dim=-1)
    common = {"users": users, "rows": rows, "targets": targets, "positives": data["positives"]}
    loss = MultiPositiveLoss(rank=rank, world_size=world)
    if mode == "corpus":
        return loss(F.normalize(user_emb, dim=-1), torch.tensor(5.0), corpus_emb=unit, **common)
    return loss(
        F.normalize(user_emb, dim=-1),
        torch.tensor(5.0),
        target_emb=unit[targets],
        target_log_q=-0.1 * targets.float(),
        extra_emb=unit[data["extra_ids"]],
        extra_ids=data["extra_ids"],
        extra_log_q=torch.full((3,), -2.0),
        **common,
    )


def examples(rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    u, c, users, creators, log_q = batch()
    half = slice(rank * 4, rank * 4 + 4)
    u_loc = u[half].clone().requires_grad_(True)
    c_loc = c[half].clone().requires_grad_(True)
    loss = RetrievalLoss(rank=rank, world_size=world)(
        F.normalize(u_loc, dim=-1),
        F.normalize(c_loc, dim=-1),
        torch.tensor(5.0),
        users=users[half],
        creators=creators[half],
        log_q=log_q[half],
    )["contrastive_loss"]
    loss.backward()
    # DDP averages parameter gradients over ranks; these inputs play the parameters' role.
    return loss.detach(), torch.cat([u_loc.grad, c_loc.grad]) / world


def user_batches(rank: int, world: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = users_batch()
    users = torch.arange(rank * 4, rank * 4 + 4)
    u_loc = data["user_emb"][users].clone().requires_grad_(True)
    table = data["table"].clone().requires_grad_(True)  # every rank's replica of a parameter
    loss = users_loss(data, users, u_loc, table, mode, rank, world)["contrastive_loss"]
    loss.backward()
    return loss.detach(), torch.cat([u_loc.grad, table.grad]) / world


def main(rank: int, world: int, out: str, mode: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("PORT", "29533"))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    loss, grads = examples(rank, world) if mode == "examples" else user_batches(rank, world, mode)
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss)
    parts = [torch.zeros_like(grads) for _ in range(world)]
    dist.all_gather(parts, grads)
    if rank == 0:
        torch.save({"losses": torch.stack(losses), "grads": parts}, out)
    # Without it one rank can tear gloo down while the other is still finishing: SIGABRT.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    rank, world, out, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    main(rank, world, out, mode)
    # Interpreter finalisation sometimes destroys a gloo worker thread still joinable
    # ("terminate called without an active exception", SIGABRT, ~1 run in 12 here) after all
    # the work is done and saved; leave without running finalisers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
