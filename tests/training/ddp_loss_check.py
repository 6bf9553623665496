"""Run as 2 real processes (gloo) by test_loss.py: each rank computes the loss on its half of
a global batch with cross-device negatives and backpropagates; rank 0 saves the mean loss and
every rank's input gradients divided by the world size (what DDP's gradient averaging gives)."""

import os
import sys

import torch
import torch.distributed as dist

from training.loss import RetrievalLoss


def batch(seed=0, n=8, d=6):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=g),
        torch.randn(n, d, generator=g),
        torch.randint(0, 5, (n,), generator=g),
        torch.randint(2, 9, (n,), generator=g),
        torch.randn(n, generator=g),
    )


def main(rank: int, world: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("PORT", "29533"))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    u, c, users, creators, log_q = batch()
    half = slice(rank * 4, rank * 4 + 4)
    u_loc = u[half].clone().requires_grad_(True)
    c_loc = c[half].clone().requires_grad_(True)
    loss = RetrievalLoss(rank=rank, world_size=world)(
        torch.nn.functional.normalize(u_loc, dim=-1),
        torch.nn.functional.normalize(c_loc, dim=-1),
        torch.tensor(5.0),
        users=users[half],
        creators=creators[half],
        log_q=log_q[half],
    )["contrastive_loss"]
    loss.backward()
    # DDP averages parameter gradients over ranks; these inputs play the parameters' role.
    grads = torch.cat([u_loc.grad, c_loc.grad]) / world
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    parts = [torch.zeros_like(grads) for _ in range(world)]
    dist.all_gather(parts, grads)
    if rank == 0:
        torch.save({"loss": torch.stack(losses).mean(), "grads": parts}, out)
    # Without it one rank can tear gloo down while the other is still finishing: SIGABRT.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    rank, world, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    main(rank, world, out)
    # Interpreter finalisation sometimes destroys a gloo worker thread still joinable
    # ("terminate called without an active exception", SIGABRT, ~1 run in 12 here) after all
    # the work is done and saved; leave without running finalisers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
