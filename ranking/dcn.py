"""A small DCN-v2 ranker (Wang et al., "DCN V2", WWW 2021) over the same features as the trees, to
choose between them by measurement (benchmarks/ranking_quality.py --model both).

    x0 = (features − mean) / std                       the fit fans' statistics, kept as buffers
    x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l              `cross` full-rank cross layers
    score = w · [x_L, MLP(x0)] + b                     the cross and deep towers side by side

trained listwise: a softmax over each fan's N candidates against the fan's positives (the
ListNet-style loss of Cao et al., 2007), Adam, and the epoch kept on NDCG@20 of held-out
validation fans, as ranking.ranker keeps its trees. It exports to the rank stage's graph
signature (ranking.ranker: features [B, N, F] → score [B, N]), so the service runs either model
the same way. Training needs torch; the service never imports this module.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ranking.features import FEATURES
from ranking.ranker import CUTOFF, INPUT, OUTPUT, list_ndcg


class DCN(nn.Module):
    def __init__(self, mean: np.ndarray, std: np.ndarray, cross: int = 2, hidden: int = 64):
        super().__init__()
        f = len(FEATURES)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(np.maximum(std, 1e-6), dtype=torch.float32))
        self.cross = nn.ModuleList(nn.Linear(f, f) for _ in range(cross))
        self.deep = nn.Sequential(nn.Linear(f, hidden), nn.ReLU(), nn.Linear(hidden, hidden // 2),
                                  nn.ReLU())  # fmt: skip
        self.out = nn.Linear(f + hidden // 2, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, N, F] → [B, N]."""
        x0 = (features - self.mean) / self.std
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.out(torch.cat([x, self.deep(x0)], dim=-1)).squeeze(-1)


def listwise_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the candidates' softmax against each list's positives (uniform)."""
    target = labels / labels.sum(1, keepdim=True)
    return -(target * torch.log_softmax(scores, dim=1)).sum(1).mean()


def fit(x: np.ndarray, y: np.ndarray, seed: int = 0, epochs: int = 40, log=print):
    """The network and what chose it, on the same fans as ranking.ranker.fit: a seeded 80 % of
    the fans with a positive fit, the other 20 % keep the epoch (NDCG@CUTOFF)."""
    torch.manual_seed(seed)
    fans = np.random.default_rng(seed).permutation(np.flatnonzero(y.any(1)))
    cut = int(0.8 * len(fans))
    fit_fans, stop = fans[:cut], fans[cut:]
    flat = x[fit_fans].reshape(-1, x.shape[2])
    model = DCN(flat.mean(0), flat.std(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-5)
    xs, ys = torch.as_tensor(x[fit_fans]), torch.as_tensor(y[fit_fans], dtype=torch.float32)
    best = (-1.0, None, -1)
    for epoch in range(epochs):
        model.train()
        for b in torch.randperm(len(xs)).split(256):
            optimizer.zero_grad()
            listwise_loss(model(xs[b]), ys[b]).backward()
            optimizer.step()
        score = stop_ndcg(model, x[stop], y[stop])
        if score > best[0]:
            best = (score, {k: v.clone() for k, v in model.state_dict().items()}, epoch)
    model.load_state_dict(best[1])
    towers = list_ndcg(y[stop], CUTOFF)
    info = {"fit_fans": len(fit_fans), "stop_fans": len(stop), "epoch": best[2],
            f"stop_ndcg@{CUTOFF}": best[0], f"stop_ndcg@{CUTOFF}_retrieval": towers,
            "chosen": "dcn-v2"}  # fmt: skip
    log(f"  dcn-v2: stop fans NDCG@{CUTOFF} {best[0]:.4f} (epoch {best[2]})")
    return model.eval(), info


def predict(model: DCN, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float32)).numpy()


def stop_ndcg(model: DCN, x: np.ndarray, y: np.ndarray) -> float:
    """NDCG@CUTOFF of the lists in the model's order (ideal within the list)."""
    model.eval()
    order = np.argsort(-predict(model, x), axis=1, kind="stable")
    return list_ndcg(np.take_along_axis(y, order, 1), CUTOFF)


def to_onnx(model: DCN, path) -> None:
    """The network as the rank stage's graph (features [B, N, F] → score [B, N])."""
    example = torch.zeros(2, 3, len(FEATURES))
    torch.onnx.export(
        model, (example,), str(path), input_names=[INPUT], output_names=[OUTPUT],
        dynamic_axes={INPUT: {0: "batch", 1: "n"}, OUTPUT: {0: "batch", 1: "n"}},
        opset_version=17, dynamo=False,
    )  # fmt: skip
