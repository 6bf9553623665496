"""The accuracy a list gives up for variety and for a category mix like the fan's (issue 17):
NDCG@20 against intra-list diversity, calibration KL and catalog coverage as MMR's and
calibration's trade-offs rise (ranking.diversity), over the towers + ranker's top N.

Protocol (every choice on validation, test read once per plotted point):

- The validation fans are split, seeded: 20 % are "trade-off fans", the rest fit the ranker
  (ranking.ranker.fit, as `python -m ranking train` does, its own choices on its own held-out
  fans).
- Each λ of each method re-picks the ranked top N of the trade-off fans; the chosen λ is the
  largest whose NDCG@20 stays within `--budget` (default 2 %) of λ = 0 on them: what the config's
  `rank.mmr` / `rank.calibration` would be set to.
- Test: every λ is measured on the test fans for the frontier plot, the chosen ones marked; the
  features and the fans' category mixes read every pair known before test (training and
  validation), as benchmarks/ranking_quality.py's test does.

    python benchmarks/rank_frontier.py --dataset movielens \
        --run artifacts/bench/quality-movielens-grid/movielens/towers/setting02
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.ranking_quality import candidates, labels, rerank  # noqa: E402
from data import tables  # noqa: E402
from index import checkpoint  # noqa: E402
from ranking import diversity, ranker  # noqa: E402
from ranking.features import Window  # noqa: E402
from training.data import TowerDataModule  # noqa: E402
from training.evaluate import metrics  # noqa: E402
from training.module import TowerScorer, encode_all_creators  # noqa: E402

K = 20
LAMBDAS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
METHODS = ("mmr", "calibration")
FIGURES = ("intra_list_diversity", "calibration_kl", "coverage")


class Lists:
    """Ranked candidates of a set of fans and what re-picking them needs."""

    def __init__(self, fans, found, score, vectors, window: Window):
        self.fans, self.found, self.score = fans, found, score
        self.vectors, self.window = vectors, window
        self.categories = window.catalog.category
        g = int(self.categories.max()) + 1
        self.histories = [diversity.history_mix(self.categories[window.x[u].indices], g)
                          for u in fans]  # fmt: skip

    def picked(self, method: str, lam: float) -> np.ndarray:
        out = np.empty((len(self.fans), K), np.int64)
        for i, (row, s) in enumerate(zip(self.found, self.score, strict=True)):
            if method == "mmr":
                at = diversity.mmr(s, self.vectors[row], K, lam)
            else:
                at = diversity.calibrate(s, self.categories[row], self.histories[i], K, lam)
            out[i] = row[at]
        return out

    def figures(self, lists: np.ndarray, truth, popularity) -> dict:
        quality = metrics(lists, truth, self.fans, popularity, ks=(K,))
        spread = diversity.list_figures(list(lists), self.vectors, self.categories,
                                        self.histories, len(self.vectors))  # fmt: skip
        return {f"ndcg@{K}": quality[f"ndcg@{K}"], f"recall@{K}": quality[f"recall@{K}"], **spread}


def ranked(fitted, found, x) -> tuple[np.ndarray, np.ndarray]:
    """Candidates in the ranker's order and the scores that ordered them (descending)."""
    order = rerank(fitted, np.arange(found.shape[1])[None].repeat(len(found), 0), x)
    score = ranker.predict(fitted.booster, x) if fitted.booster is not None else -x[..., 1]
    return np.take_along_axis(found, order, 1), np.take_along_axis(score, order, 1)


def choose(curve: list[dict], budget: float) -> float:
    """The largest λ whose NDCG@K is within `budget` (relative) of λ = 0's."""
    floor = curve[0][f"ndcg@{K}"] * (1 - budget)
    return max(p["lambda"] for p in curve if p[f"ndcg@{K}"] >= floor)


def sweep(lists: Lists, truth, popularity) -> dict:
    return {m: [{"lambda": lam, **lists.figures(lists.picked(m, lam), truth, popularity)}
                for lam in LAMBDAS] for m in METHODS}  # fmt: skip


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, figure in zip(axes, FIGURES, strict=True):
        for method, marker in zip(METHODS, "os", strict=True):
            curve = result["test"][method]
            xs, ys = [p[figure] for p in curve], [p[f"ndcg@{K}"] for p in curve]
            ax.plot(xs, ys, marker=marker, label=method)
            for p in curve:
                ax.annotate(f"{p['lambda']:g}", (p[figure], p[f"ndcg@{K}"]), fontsize=7)
            chosen = next(p for p in curve if p["lambda"] == result["chosen"][method])
            ax.scatter([chosen[figure]], [chosen[f"ndcg@{K}"]], s=160, facecolors="none",
                       edgecolors="k")  # fmt: skip
        ax.set_xlabel(figure.replace("_", " "))
        ax.set_ylabel(f"NDCG@{K}")
        ax.legend()
    fig.suptitle(f"{result['dataset']}: test, towers + ranker re-picked by λ (circled: chosen on "
                 f"validation within {result['budget']:.0%} NDCG)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--run", required=True, type=Path, help="the towers' run folder or .ckpt")
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--fit-fans", type=int, default=0, help="validation fans sampled (0 = all)")
    p.add_argument("--budget", type=float, default=0.02, help="NDCG@20 a trade-off may cost")
    p.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench" / "rank_frontier")
    return p.parse_args()


def towers(dataset: str, run: Path):
    """The dataset, the trained towers (a scorer over every creator), their creator vectors
    and the training window the features read."""
    dm = TowerDataModule(str(REPO / "artifacts" / "data" / dataset))
    dm.setup()
    trained = checkpoint.load(run)
    users, creators = dm.users.to("cpu"), dm.creators.to("cpu")
    vectors = encode_all_creators(trained.model, creators)
    scorer = TowerScorer(trained.model, users, vectors)
    return dm, trained, scorer, vectors.numpy(), Window.from_dataset(dm.data_dir)


def split_fans(dm, fit_fans: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation fans (a seeded sample of `fit_fans`, 0 = all) split 80/20: the ranker's
    fans and the trade-off fans."""
    rng = np.random.default_rng(2)
    fans = np.flatnonzero(dm.validation.lengths() > 0)
    if fit_fans and fit_fans < len(fans):
        fans = np.sort(rng.choice(fans, fit_fans, replace=False))
    fans = rng.permutation(fans)
    cut = int(0.8 * len(fans))
    return np.sort(fans[:cut]), np.sort(fans[cut:])


def on_validation(a, dm, scorer, vectors, window):
    """The ranker fit on its validation fans, every λ swept on the trade-off fans and each
    method's λ chosen within the budget: (fitted, validation sweep, chosen λ per method)."""
    fit_fans, trade_fans = split_fans(dm, a.fit_fans)
    found, x = candidates(scorer, dm.train, fit_fans, a.candidates, window)
    fitted = ranker.fit(x, labels(found, dm.validation, fit_fans))
    print(f"ranker: {fitted.info['chosen']} ({fitted.info['stop_ndcg@20']:.4f} on its stop fans)")
    found, x = candidates(scorer, dm.train, trade_fans, a.candidates, window)
    lists = Lists(trade_fans, *ranked(fitted, found, x), vectors, window)
    validation = sweep(lists, dm.validation, dm.popularity)
    chosen = {m: choose(validation[m], a.budget) for m in METHODS}
    print(f"chosen on {len(trade_fans)} validation fans: {chosen}", flush=True)
    return fitted, validation, chosen


def on_test(a, dm, scorer, vectors, window, fitted) -> dict:
    """Every λ on the test fans, the features reading every pair known before test."""
    test_fans = np.flatnonzero(dm.test.lengths() > 0)
    known = Window.from_dataset(dm.data_dir, window.catalog, (tables.TRAIN, tables.VALIDATION))
    found, x = candidates(scorer, dm.known, test_fans, a.candidates, known)
    lists = Lists(test_fans, *ranked(fitted, found, x), vectors, known)
    return sweep(lists, dm.test, dm.popularity)


def print_table(result: dict) -> None:
    head = f"| method | λ | NDCG@{K} | recall@{K} | ILD | calibration KL | coverage |"
    print(head + "\n|" + " --- |" * 7)
    for m in METHODS:
        for q in result["test"][m]:
            mark = " (chosen)" if q["lambda"] == result["chosen"][m] else ""
            print(f"| {m} | {q['lambda']:g}{mark} | {q[f'ndcg@{K}']:.4f} | {q[f'recall@{K}']:.4f} "
                  f"| {q['intra_list_diversity']:.4f} | {q['calibration_kl']:.4f} "
                  f"| {q['coverage']:.4f} |")  # fmt: skip


def main() -> None:
    a = parse_args()
    started = time.perf_counter()
    dm, trained, scorer, vectors, window = towers(a.dataset, a.run)
    fitted, validation, chosen = on_validation(a, dm, scorer, vectors, window)
    result = {"dataset": a.dataset, "checkpoint": str(trained.path), "budget": a.budget,
              "candidates": a.candidates, "ranker": fitted.info["chosen"], "chosen": chosen,
              "validation": validation,
              "test": on_test(a, dm, scorer, vectors, window, fitted),
              "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    out = a.out / a.dataset
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "frontier.png")
    print_table(result)
    print(f"wrote {out / 'frontier.json'} and frontier.png")


if __name__ == "__main__":
    main()
