"""Retrieval quality of the towers against the peers, side by side in one run (issues 3, 17).

For each dataset: prepare it if needed, fit the peers — popularity, implicit's ALS, BPR and
ItemKNN, EASE^R — over a small grid each, train the towers with `python -m training fit --config
configs/train/<name>.yaml`, and score all of them with the same exact full-corpus evaluator.

Model selection reads validation, never test (issue 17): every peer setting is scored on the
validation split carved from train (data `split.validation_fraction`, train creators masked) and
the best by training.evaluate.SELECTION_METRIC is taken; the towers keep the epoch with the best
validation figure (training.cli). Then each chosen model is scored on test once, with train and
validation creators masked. A dataset prepared without validation falls back to choosing on test,
and every row says which split chose it. Prints one table per dataset; writes
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
from training.evaluate import SELECTION_METRIC, evaluate  # noqa: E402
from training.peers import (  # noqa: E402
    EaseScorer,
    ItemKnnScorer,
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
    "itemknn": [
        {"k": k, "weighting": w}
        for k, w in itertools.product((50, 200, 800, 3200), ("cosine", "bm25"))
    ],
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
        "itemknn": [{"k": k, "weighting": "cosine"} for k in (200, 800, 3200)],
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
    if name == "itemknn":
        return ItemKnnScorer(x, device=device, **params)
    raise ValueError(f"unknown peer {name!r}: use popularity, als, bpr, ease or itemknn")


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
    """Each peer's grid fit on train and scored on the choosing split; the best setting is then
    scored on test once."""
    x = interaction_matrix(dm.train, dm.num_creators)
    rows = []
    for name in peers:
        best, grid = None, GRIDS_FOR.get(dataset, {}).get(name, GRIDS[name])
        for params in grid:
            started = time.perf_counter()
            scorer = fit_peer(name, x, params, device)
            fit_s = time.perf_counter() - started
            m = evaluate(scorer, dm.train, dm.held_out, dm.popularity, KS)
            print(f"  {name} {params}: {dm.eval_split} {SELECTION_METRIC} "
                  f"{m[SELECTION_METRIC]:.4f} ({fit_s:.0f} s)", flush=True)  # fmt: skip
            if best is None or m[SELECTION_METRIC] > best["chosen_on"][SELECTION_METRIC]:
                best = {"model": name, "params": params, "fit_s": fit_s, "chosen_on": m,
                        "scorer": scorer, "grid_size": len(grid)}  # fmt: skip
            del scorer
        scorer = best.pop("scorer")
        best["metrics"] = test_once(scorer, dm) if dm.validation is not None else best["chosen_on"]
        best["split"] = dm.eval_split
        del scorer
        rows.append(best)
    return rows


def test_once(scorer, dm: TowerDataModule) -> dict:
    """The chosen model on test: every creator the fan is known to like (train, validation)
    masked, so a validation creator ranked high is not counted a miss."""
    return evaluate(scorer, dm.known, dm.test, dm.popularity, KS)


def towers_grid(spec: list[str]) -> list[list[str]]:
    """`model.lr=1e-3,5e-3 model.tower.dim=64,128` → every combination as `fit` arguments."""
    pairs = [item.split("=", 1) for item in spec]
    for item, pair in zip(spec, pairs, strict=True):
        if len(pair) != 2 or not pair[1]:
            raise SystemExit(f"--towers-grid {item!r}: write KEY=V1,V2 (e.g. model.lr=1e-3,5e-3)")
    values = itertools.product(*(v.split(",") for _, v in pairs))
    return [[a for (k, _), v in zip(pairs, combo, strict=True) for a in (f"--{k}", v)]
            for combo in values]  # fmt: skip


def run_towers(name: str, out: Path, extra: list[str], config: str, grid: list[str]) -> dict:
    """The towers with the shipped config (configs/train/<config>.yaml, `{name}` = the dataset),
    over the grid if one is given: each setting is fit with its epoch kept on validation, the
    setting with the best kept validation figure is chosen, and only it is evaluated on test."""
    config = str(REPO / "configs" / "train" / f"{config.format(name=name)}.yaml")
    settings = towers_grid(grid)
    sweep = len(settings) > 1
    runs = []
    for i, args in enumerate(settings):
        run_dir = out / name / "towers" / (f"setting{i:02d}" if sweep else "")
        fit_args = [*extra, *args, *(["--test_after_fit", "false"] if sweep else [])]
        runs.append({**towers_fit(config, run_dir, fit_args), "args": args, "run_dir": run_dir})
    best = max(runs, key=lambda r: r["chosen_on"][SELECTION_METRIC])
    if sweep and best["split"] == "validation":
        best["metrics"] = towers_test(config, best["run_dir"], [*extra, *best["args"]])
    best["params"] = {"config": str(Path(config).relative_to(REPO)), **best["params"],
                      **dict(zip(best["args"][::2], best["args"][1::2], strict=True))}  # fmt: skip
    best["fit_s"] = sum(r["fit_s"] for r in runs)
    best["grid_size"] = len(settings)
    best["run_dir"] = str(best["run_dir"])
    return best


def towers_fit(config: str, run_dir: Path, extra: list[str]) -> dict:
    """One `python -m training fit` in a child process, and its evaluations: the kept epoch's
    validation figures and its one test evaluation (without validation: the last epoch's)."""
    cmd = ["fit", "--config", config, *run_folders(run_dir), *extra]
    seconds = training(cmd, run_dir)
    evals = evaluations(run_dir)
    final = [e for e in evals if "checkpoint" in e]  # the one test evaluation after the fit
    epochs = [e for e in evals if "checkpoint" not in e]
    chosen = next(e for e in epochs if e["epoch"] == final[-1]["epoch"]) if final else epochs[-1]
    if not final and chosen["split"] == "validation":  # a sweep's fit: test comes later
        chosen = max(epochs, key=lambda e: e[SELECTION_METRIC])
    return {"model": "towers", "params": {"epoch": chosen["epoch"],
            "of": sum(e["epoch"] >= 0 for e in epochs)}, "fit_s": seconds, "chosen_on": chosen,
            "metrics": final[-1] if final else chosen, "split": chosen["split"],
            "curve": [e[SELECTION_METRIC] for e in epochs]}  # fmt: skip


def towers_test(config: str, run_dir: Path, extra: list[str]) -> dict:
    """`python -m training test` of the checkpoint the chosen setting's fit kept: its test line."""
    from index.checkpoint import resolve_checkpoint

    kept = resolve_checkpoint(run_dir / "checkpoints")
    training(["test", "--config", config, *run_folders(run_dir), *extra,
              "--ckpt_path", str(kept)], run_dir)  # fmt: skip
    return [e for e in evaluations(run_dir) if "checkpoint" in e][-1]


def run_folders(run_dir: Path) -> list[str]:
    return ["--trainer.default_root_dir", str(run_dir),
            "--trainer.logger.init_args.save_dir", str(run_dir),
            "--checkpoint.dirpath", str(run_dir / "checkpoints")]  # fmt: skip


def training(args: list[str], run_dir: Path) -> float:
    """Seconds a `python -m training ...` child process took (W&B offline)."""
    if args[0] == "fit" and (run_dir / "evaluation.jsonl").exists():
        (run_dir / "evaluation.jsonl").unlink()
    print("  training " + " ".join(args), flush=True)
    started = time.perf_counter()
    env = {**os.environ, "WANDB_MODE": "offline"}
    subprocess.run([sys.executable, "-m", "training", *args], cwd=REPO, check=True, env=env)
    return time.perf_counter() - started


def evaluations(run_dir: Path) -> list[dict]:
    """The run's own evaluation.jsonl (its log dir is run_dir: run_folders sets the logger's
    save_dir), not the newest below it, which may be a sweep's setting folder of an earlier run."""
    return [json.loads(line) for line in (run_dir / "evaluation.jsonl").read_text().splitlines()]


def table(name: str, rows: list[dict]) -> str:
    """The test figures of each chosen model, the split that chose it and its figure there."""
    pick = f"chosen on: {SELECTION_METRIC}"
    head = "| model | " + " | ".join(SHOWN) + f" | {pick} | fit (s) | setting |"
    lines = [f"### {name}", "", head, "|" + " --- |" * (len(SHOWN) + 4)]
    best = {k: max(r["metrics"][k] for r in rows) for k in SHOWN}
    for r in rows:
        cells = []
        for k in SHOWN:
            cell = f"{r['metrics'][k]:.4f}"
            cells.append(f"**{cell}**" if r["metrics"][k] == best[k] else cell)
        cells.append(f"{r['split']} {r['chosen_on'][SELECTION_METRIC]:.4f}")
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {r['fit_s']:.0f} | {params} |")
    towers = next((r for r in rows if r["model"] == "towers"), None)
    others = [r for r in rows if r["model"] != "towers"]
    if towers and others:
        lines.append("")
    for metric in ("recall@20", "ndcg@20") if towers and others else ():
        # the peer best on test: the stricter yardstick (the one validation prefers may be worse)
        peer = max(others, key=lambda r: r["metrics"][metric])
        ratio = towers["metrics"][metric] / peer["metrics"][metric]
        lines.append(f"towers / best peer ({peer['model']}) {metric} on test: **{ratio:.3f}×**  ")
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
        chosen = sorted({r.get("split", "test") for r in rows})
        ax.set_title(f"{name}: test, each model chosen on {' / '.join(chosen)}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["lastfm", "movielens"])
    p.add_argument("--peers", nargs="+", default=["popularity", "als", "bpr", "ease", "itemknn"])
    p.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench" / "quality")
    p.add_argument("--no-towers", action="store_true", help="peers only")
    p.add_argument("--towers-config", default="{name}",
                   help="configs/train/<this>.yaml for the towers row; {name} = the dataset, "
                        "e.g. {name}_spectral")  # fmt: skip
    p.add_argument(
        "--towers-grid",
        nargs="*",
        default=[],
        metavar="KEY=V1,V2",
        help="settings the towers choose among on validation, e.g. model.lr=2e-3,5e-3 "
        "model.tower.dim=128,256 (each a fit; only the choice sees test)",
    )
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
            rows.append(run_towers(name, a.out, a.train_args, a.towers_config, a.towers_grid))
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
