"""Plain-torch training loop for quick Gowalla sweeps of the loss and tower settings (issue 3).

The production path is `python -m training fit`; this loop reads the same shards and evaluator
and exists to compare settings fast. Usage:
    python benchmarks/gowalla_sweep.py --arch simplex --batch 1024 --neg 1024 --dim 128 \
        --lr 5e-3 --temp 0.1 --learn_temp 0 --epochs 6
"""

import argparse
import math
import os
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from data.shards import iter_records
from towers.model import TowerConfig, TwoTower
from training.evaluate import EmbeddingScorer, Interactions, evaluate
from training.loss import RetrievalLoss, StreamingFrequency

p = argparse.ArgumentParser()
p.add_argument("--data", default="artifacts/data/gowalla")
p.add_argument("--epochs", type=int, default=10)
p.add_argument("--batch", type=int, default=2048)
p.add_argument("--neg", type=int, default=2048)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--dim", type=int, default=64)
p.add_argument("--hidden", type=int, default=64)
p.add_argument("--temp", type=float, default=0.1)
p.add_argument("--arch", default="tower")
p.add_argument("--wd", type=float, default=0.0)
p.add_argument("--logq", type=int, default=1)
p.add_argument("--hdrop", type=float, default=0.0)
p.add_argument("--learn_temp", type=int, default=1)
a = p.parse_args()
torch.manual_seed(0)
d = a.data
recs = list(iter_records(d + "/shards"))
U = np.concatenate([r["user"] for r in recs]).astype(np.int64)
C = np.concatenate([r["creator"] for r in recs]).astype(np.int64)
H = np.concatenate([r["history"] for r in recs]).astype(np.int64)
users = pq.read_table(d + "/tables/users.parquet")
nU = users.num_rows + 2
cre = pq.read_table(d + "/tables/creators.parquet")
nC = cre.num_rows + 2
uh = np.zeros((nU, H.shape[1]), np.int64)
ui = users["user_idx"].to_numpy()
uh[ui] = users["history"].combine_chunks().flatten().to_numpy().reshape(len(ui), -1)
pop = np.zeros(nC)
pop[cre["creator_idx"].to_numpy()] = cre["train_count"].to_numpy()
tr = pq.read_table(d + "/tables/train.parquet")
te = pq.read_table(d + "/tables/test.parquet")
train = Interactions.from_pairs(tr["user_idx"].to_numpy(), tr["creator_idx"].to_numpy(), nU)
test = Interactions.from_pairs(te["user_idx"].to_numpy(), te["creator_idx"].to_numpy(), nU)
print("examples", len(U), "users", nU, "creators", nC, flush=True)


class Simplex(torch.nn.Module):
    def __init__(s):
        super().__init__()
        s.u = torch.nn.Embedding(nU, a.dim)
        s.c = torch.nn.Embedding(nC, a.dim, padding_idx=0)
        torch.nn.init.normal_(s.u.weight, std=0.1)
        torch.nn.init.normal_(s.c.weight, std=0.1)
        s.W = torch.nn.Linear(a.dim, a.dim, bias=False)
        torch.nn.init.eye_(s.W.weight)
        s.g = 0.5
        s.logit_scale = torch.nn.Parameter(
            torch.tensor(math.log(1 / a.temp)), requires_grad=bool(a.learn_temp)
        )

    def encode_users(s, u, h):
        if s.training and a.hdrop > 0:
            h = h.masked_fill(torch.rand(h.shape) < a.hdrop, 0)
        pooled = F.embedding_bag(h, s.c.weight, mode="mean", padding_idx=0)
        return F.normalize(s.g * s.u(u) + (1 - s.g) * s.W(pooled), dim=-1)

    def encode_creators(s, c, *args):
        return F.normalize(s.c(c), dim=-1)

    def scale(s):
        return s.logit_scale.exp()


if a.arch == "tower":
    model = TwoTower(
        TowerConfig(
            num_users=nU,
            num_creators=nC,
            dim=a.dim,
            hidden=a.hidden,
            init_temperature=a.temp,
            learn_temperature=True,
        )
    )
else:
    model = Simplex()
opt = torch.optim.Adam(model.parameters(), lr=a.lr, weight_decay=a.wd, fused=True)
freq = StreamingFrequency()
lossf = RetrievalLoss(logq_correction=bool(a.logq), cross_device=False)
cat = torch.ones(nC, dtype=torch.long)
tags = torch.zeros(nC, 1, dtype=torch.long)
popt = torch.tensor(np.log1p(pop), dtype=torch.float32)


def enc_c(c):
    return model.encode_creators(c, cat[c], tags[c], popt[c])


t0 = time.time()

PROF = os.environ.get("PROF")
Ut, Ct, Ht = map(torch.as_tensor, (U, C, H))
for ep in range(a.epochs):
    model.train()
    perm = torch.randperm(len(U))
    tot = 0
    n = 0
    for s in range(0, len(U) - a.batch + 1, a.batch):
        idx = perm[s : s + a.batch]
        u, c, h = Ut[idx], Ct[idx], Ht[idx]
        freq.update(c)
        ue = model.encode_users(u, h)
        ce = enc_c(c)
        extra = None
        kw = {}
        if a.neg:
            ex = torch.randint(2, nC, (a.neg,))
            kw = dict(
                extra_emb=enc_c(ex),
                extra_ids=ex,
                extra_log_q=torch.full((a.neg,), math.log(a.neg / nC)),
            )
        out = lossf(
            ue,
            ce,
            model.scale(),
            users=u,
            creators=c,
            log_q=freq.log_q(c) + math.log(a.batch) * 0,
            **kw,
        )
        opt.zero_grad()
        out["contrastive_loss"].backward()
        opt.step()
        tot += out["contrastive_loss"].item()
        n += 1
        if PROF and n == 20:
            prof = torch.profiler.profile()
            prof.__enter__()
        if PROF and n == 40:
            prof.__exit__(None, None, None)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
            sys.exit()
    model.eval()
    with torch.no_grad():
        ue = torch.cat(
            [
                model.encode_users(
                    torch.arange(s, min(s + 4096, nU)), torch.as_tensor(uh[s : s + 4096])
                )
                for s in range(0, nU, 4096)
            ]
        )
        ce = enc_c(torch.arange(nC))
    m = evaluate(EmbeddingScorer(ue, ce), train, test, pop)
    print(
        f"ep {ep} loss {tot / n:.4f} scale {model.scale().item():.1f} "
        f"recall {m['recall@20']:.4f} ndcg {m['ndcg@20']:.4f} t {time.time() - t0:.0f}s",
        flush=True,
    )
