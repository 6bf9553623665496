"""Retrieval quality of the towers against the peers, side by side in one run (issue 3).

For each dataset: prepare it if needed, fit the peers — popularity, implicit's ALS and BPR, EASE^R
— over a small grid each (the best setting is reported, as the towers' settings were also chosen
on this split), train the towers with `python -m training fit --config configs/train/<name>.yaml`
(the model of the last epoch, not the best one seen), and score all of them with the same exact
full-corpus evaluator (train creators masked). Prints one table per dataset; writes
`<out>/quality.json` and `<out>/quality.png`.

    python benchmarks/quality.py --datasets lastfm movielens
    python benchmarks/quality.py --datasets gowalla --peers popularity als bpr  # EASE^R: 15 min
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.data import TowerDataModule  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.peers import (  # noqa: E402
    EaseScorer,
    fit_als,
    fit_bpr,
    fit_popularity,
    interaction_matrix,
)

KS = (10, 20, 50)
SHOWN = ("recall@20", "ndcg@20", "mrr@20", "hit_rate@20", "coverage@20", "cold_recall@20")
GRIDS = {
    "popularity": [{}],
    "als": [
        {"factors": f, "regularization": r, "alpha": a}
        for f, r, a in itertools.product(
            (64, 128, 256), (10.0, 30.0, 60.0, 150.0), (10.0, 20.0, 40.0)
        )
    ],
    "bpr": [
        {"factors": f, "learning_rate": lr, "iterations": 200}
        for f, lr in itertools.product((64, 128), (0.01, 0.05))
    ],
    "ease": [{"lam": lam} for lam in (50.0, 100.0, 200.0, 500.0)],
}
# Gowalla is 20× Last.fm: a smaller grid around the settings that won on the smaller sets, and
# EASE^R's 41 K × 41 K inverse is 15 minutes a setting (run it with --peers ... ease).
GRIDS_FOR = {
    "gowalla": {
        "als": [
            {"factors": 256, "regularization": r, "alpha": a}
            for r, a in itertools.product((10.0, 60.0, 150.0), (10.0, 40.0))
        ],
        "bpr": [{"factors": 128, "learning_rate": lr, "iterations": 200} for lr in (0.01, 0.05)],
        "ease": [{"lam": 500.0}],
    }
}


def fit_peer(name: str, x, params: dict, device: torch.device):
    if name == "popularity":
        return fit_popularity(x, device)
    if name == "als":
        return fit_als(x, device=device, **params)
    if name == "bpr":
        return fit_bpr(x, device=device, **params)
    if name == "ease":
        return EaseScorer(x, device=device, **params)
    raise ValueError(f"unknown peer {name!r}: use popularity, als, bpr or ease")


def ensure_prepared(name: str) -> Path:
    folder = REPO / "artifacts" / "data" / name
    if not (folder / "manifest.json").exists():
        cfg = REPO / "configs" / "data" / f"{name}.yaml"
        subprocess.run([sys.executable, "-m", "data", "prepare", "--config", str(cfg)],
                       cwd=REPO, check=True)  # fmt: skip
    return folder


def run_peers(
    dataset: str, dm: TowerDataModule, peers: list[str], device: torch.device
) -> list[dict]:
    x = interaction_matrix(dm.train, dm.num_creators)
    rows = []
    for name in peers:
        best, grid = None, GRIDS_FOR.get(dataset, {}).get(name, GRIDS[name])
        for params in grid:
            started = time.perf_counter()
            scorer = fit_peer(name, x, params, device)
            fit_s = time.perf_counter() - started
            m = evaluate(scorer, dm.train, dm.test, dm.popularity, KS)
            del scorer
            print(f"  {name} {params}: recall@20 {m['recall@20']:.4f} ({fit_s:.0f} s)", flush=True)
            if best is None or m["recall@20"] > best["metrics"]["recall@20"]:
                best = {"model": name, "params": params, "fit_s": fit_s, "metrics": m,
                        "grid_size": len(grid)}  # fmt: skip
        rows.append(best)
    return rows


def run_towers(name: str, out: Path, extra: list[str], config: str = "{name}") -> dict:
    """Train with the shipped config (configs/train/<config>.yaml, `{name}` = the dataset) in a
    child process and read its evaluations."""
    config = config.format(name=name)
    run_dir = out / name / "towers"
    log = run_dir / "evaluation.jsonl"
    if log.exists():
        log.unlink()
    cmd = [sys.executable, "-m", "training", "fit",
           "--config", str(REPO / "configs" / "train" / f"{config}.yaml"),
           "--trainer.default_root_dir", str(run_dir),
           "--trainer.logger.init_args.save_dir", str(run_dir),
           "--checkpoint.dirpath", str(run_dir / "checkpoints"), *extra]  # fmt: skip
    print("  " + " ".join(cmd[1:]), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "WANDB_MODE": "offline"})
    seconds = time.perf_counter() - started
    found = sorted(run_dir.rglob("evaluation.jsonl"), key=lambda p: p.stat().st_mtime)
    evals = [json.loads(line) for line in found[-1].read_text().splitlines()]
    return {"model": "towers", "params": {"config": f"configs/train/{config}.yaml",
            "epochs": sum(e["epoch"] >= 0 for e in evals)}, "fit_s": seconds, "metrics": evals[-1],
            "curve": [e["recall@20"] for e in evals], "grid_size": 1}  # fmt: skip


def table(name: str, rows: list[dict]) -> str:
    head = "| model | " + " | ".join(SHOWN) + " | fit (s) | best setting |"
    lines = [f"### {name}", "", head, "|" + " --- |" * (len(SHOWN) + 3)]
    best = {k: max(r["metrics"][k] for r in rows) for k in SHOWN}
    for r in rows:
        cells = []
        for k in SHOWN:
            cell = f"{r['metrics'][k]:.4f}"
            cells.append(f"**{cell}**" if r["metrics"][k] == best[k] else cell)
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {r['fit_s']:.0f} | {params} |")
    towers = next((r for r in rows if r["model"] == "towers"), None)
    others = [r for r in rows if r["model"] != "towers"]
    if towers and others:
        peer = max(others, key=lambda r: r["metrics"]["recall@20"])
        ratio = towers["metrics"]["recall@20"] / peer["metrics"]["recall@20"]
        lines += ["", f"towers / best peer ({peer['model']}) recall@20: **{ratio:.3f}×**"]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (name, rows) in zip(axes[0], results.items(), strict=True):
        labels = [r["model"] for r in rows]
        xs = np.arange(len(rows))
        ax.bar(xs - 0.2, [r["metrics"]["recall@20"] for r in rows], 0.4, label="recall@20")
        ax.bar(xs + 0.2, [r["metrics"]["ndcg@20"] for r in rows], 0.4, label="NDCG@20")
        ax.set_xticks(xs, labels, rotation=30)
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["lastfm", "movielens"])
    p.add_argument("--peers", nargs="+", default=["popularity", "als", "bpr", "ease"])
    p.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench" / "quality")
    p.add_argument("--no-towers", action="store_true", help="peers only")
    p.add_argument("--towers-config", default="{name}",
                   help="configs/train/<this>.yaml for the towers row; {name} = the dataset, "
                        "e.g. {name}_spectral")  # fmt: skip
    p.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                   help="extra `python -m training fit` arguments (last on the line)")  # fmt: skip
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {}
    for name in a.datasets:
        print(f"== {name}", flush=True)
        dm = TowerDataModule(str(ensure_prepared(name)))
        dm.setup()
        rows = run_peers(name, dm, a.peers, device)
        if not a.no_towers:
            rows.append(run_towers(name, a.out, a.train_args, a.towers_config))
        results[name] = rows
        print(table(name, rows), flush=True)
    tmp = a.out / "quality.json.tmp"
    tmp.write_text(json.dumps({"device": str(device), "results": results}, indent=1, default=float))
    tmp.replace(a.out / "quality.json")
    plot(results, a.out / "quality.png")
    print("\n\n".join(table(n, r) for n, r in results.items()))
    print(f"wrote {a.out / 'quality.json'} and {a.out / 'quality.png'}")


if __name__ == "__main__":
    main()
