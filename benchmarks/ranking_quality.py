"""The rank stage against the towers alone, on the same candidates and evaluator (issue 17).

Protocol: no label feeds a feature, every choice is made on validation, test is read once.

- Candidates: the towers' top N (the checkpoint a training run kept on validation), the fan's
  training creators masked, for every fan with validation pairs. Features come from the training
  window (ranking.features.Window over train.parquet); a candidate's label is 1 where it is one of
  the fan's validation pairs.
- ranking.ranker.fit, as `python -m ranking train` runs it: LightGBM's lambdarank; its trees,
  setting, and whether to re-rank at all (else the retrieval order passes through) chosen by
  5-fold cross-validation over those fans (held-out NDCG@20), then refit on all of them. The
  `als_score` feature's ALS is fit on the same window as the other features, with the setting
  validation chose for the dataset in a quality.py run (`--als-from`).
- Test: the towers' top N with train and validation creators masked, features from the window
  of everything known before test (training and validation pairs; `--test-window train` keeps
  the training window), the ranker's order against the towers' order, scored by
  training.evaluate like every other row.

    python benchmarks/quality.py --datasets lastfm --peers popularity   # a kept towers run
    python benchmarks/ranking_quality.py --dataset lastfm \
        --run artifacts/bench/quality-validation/lastfm/towers
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data import tables  # noqa: E402
from index import checkpoint  # noqa: E402
from ranking import ranker  # noqa: E402
from ranking.config import RankingConfig  # noqa: E402
from ranking.features import FEATURES, Window, features  # noqa: E402
from ranking.train import fit_als  # noqa: E402
from training.data import TowerDataModule  # noqa: E402
from training.evaluate import Interactions, metrics, ndcg_per_user, top_k  # noqa: E402
from training.module import TowerScorer, encode_all_creators  # noqa: E402

KS = (10, 20, 50)
SHOWN = ("recall@20", "ndcg@20", "mrr@20", "hit_rate@20", "coverage@20")
ROWS = ("towers", "towers + ranker", "towers + dcn-v2", "ceiling (fit on test labels)")


def candidates(scorer, exclude: Interactions, users: np.ndarray, n: int, window: Window):
    """The towers' top n of each fan (exclude masked), their scores and features."""
    found, scores = top_k(scorer, exclude, n, users, with_scores=True)
    blocks = [slice(s, s + 512) for s in range(0, len(users), 512)]
    x = np.concatenate([features(window, users[b], found[b], scores[b]) for b in blocks])
    return found, x


def labels(found: np.ndarray, truth: Interactions, users: np.ndarray) -> np.ndarray:
    return np.stack([np.isin(row, truth.row(u)) for row, u in zip(found, users, strict=True)])


def choose_depth(scorer, dm, fans, depths, window):
    """(N, the validation NDCG@20 of each N, the fans left to fit on): a seeded 20 % of the
    validation fans held out; for each N a ranker fit on the rest re-ranks their top N, scored
    against their validation pairs over the whole list (not within it, so different N compare)."""
    rng = np.random.default_rng(3)
    order = rng.permutation(fans)
    cut = int(0.8 * len(order))
    fit_fans, held = np.sort(order[:cut]), np.sort(order[cut:])
    scores = {}
    for n in depths:
        found, x = candidates(scorer, dm.train, fit_fans, n, window)
        fitted = ranker.fit(x, labels(found, dm.validation, fit_fans), log=lambda _: None)
        found, x = candidates(scorer, dm.train, held, n, window)
        top = rerank(fitted, found, x)[:, :20]
        scores[n] = metrics(top, dm.validation, held, dm.popularity, ks=(20,))["ndcg@20"]
        print(f"  N {n}: NDCG@20 {scores[n]:.4f} on {len(held)} held-out validation fans "
              f"({fitted.info['chosen']})", flush=True)  # fmt: skip
    best = max(scores, key=scores.get)
    return best, {"held_out_fans": len(held), "ndcg@20": scores}, fit_fans


def rerank(fitted, found: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The candidates in the chosen ranker's order (the retrieval order where validation kept
    it)."""
    if fitted.booster is None:
        return found
    score = ranker.predict(fitted.booster, x)
    return np.take_along_axis(found, np.argsort(-score, axis=1, kind="stable"), axis=1)


def ceiling(found: np.ndarray, x: np.ndarray, fans: np.ndarray, dm, trees: int = 300) -> dict:
    """A diagnostic bound, never a choice: how far these features can lift the towers' order
    when the labels are the very ones scored. Test's fans are split in two (seeded); lambdarank
    fit on one half's test labels re-ranks the other half, both ways round, for each GRID
    setting, and the best setting's figures on test are kept (optimistic on purpose). A lift goal
    above this bound cannot be reached by more validation labels, only by other features."""
    y = labels(found, dm.test, fans)
    halves = np.array_split(np.random.default_rng(5).permutation(len(fans)), 2)
    n, f = x.shape[1], x.shape[2]
    best = None
    for params in ranker.GRID:
        ranked = found.copy()
        for fit_on, rank in ((halves[0], halves[1]), (halves[1], halves[0])):
            model = ranker.lambdarank(params, trees=trees)
            model.fit(x[fit_on].reshape(-1, f), y[fit_on].ravel().astype(np.int32),
                      group=[n] * len(fit_on))  # fmt: skip
            ranked[rank] = rerank(ranker.Fitted(model.booster_, {}), found[rank], x[rank])
        m = metrics(ranked[:, : max(KS)], dm.test, fans, dm.popularity, ks=KS)
        print(f"  ceiling {params}: test NDCG@20 {m['ndcg@20']:.4f}", flush=True)
        if best is None or m["ndcg@20"] > best["ndcg@20"]:
            best = {**m, "setting": params, "trees": trees}
    return best


def stacked(peers: list[str], chosen: Path, dataset: str, dm, found, fans, known=False):
    """[B, N, len(peers)] each named peer's score of the candidates, with the setting validation
    chose for it in a `quality.py` run (`chosen`, its quality.json), fit on the window the
    features read: train for validation's labels, train and validation (`known`) for test's.
    Measured, not served: a stacked ranker needs every peer beside the towers online."""
    from benchmarks.quality import fit_peer
    from training.peers import interaction_matrix

    rows = {r["model"]: r["params"] for r in json.loads(chosen.read_text())["results"][dataset]}
    x = interaction_matrix(dm.known if known else dm.train, dm.num_creators)
    blocks = [slice(s, s + 512) for s in range(0, len(fans), 512)]
    columns = []
    for name in peers:
        if name not in rows:
            raise SystemExit(f"--stack {name}: {chosen} has no {name} row for {dataset}")
        scorer = fit_peer(name, x, rows[name], torch.device("cpu"))
        # a block's [512, C] scores are cut to its candidates at once: all fans' at once would
        # be fans × catalog floats (Gowalla: 30 K × 41 K)
        cut = [np.take_along_axis(scorer(fans[b]).cpu().numpy(), found[b], 1) for b in blocks]
        columns.append(np.concatenate(cut).astype(np.float32))
    return np.stack(columns, 2)


def lift_interval(
    test: Interactions, fans: np.ndarray, before: np.ndarray, after: np.ndarray, draws: int = 2000
) -> dict:
    """NDCG@20's relative lift of `after` over `before` and its 95 % paired bootstrap interval:
    test fans resampled with replacement, both lists scored on the same draw, so the interval
    says how much of the lift is which fans happen to be in test."""
    a = ndcg_per_user(before[:, :20], test, fans)
    b = ndcg_per_user(after[:, :20], test, fans)
    draw = np.random.default_rng(0).integers(0, len(fans), (draws, len(fans)))
    lifts = b[draw].mean(1) / a[draw].mean(1) - 1
    low, high = np.percentile(lifts, [2.5, 97.5])
    return {"lift": float(b.mean() / a.mean() - 1), "ci95": [float(low), float(high)],
            "fans": len(fans), "draws": draws}  # fmt: skip


def als_setting(path: Path | None, dataset: str, off: bool) -> RankingConfig:
    """The ALS settings of the `als_score` feature: those validation chose for the dataset in a
    `quality.py` run (`path`, its quality.json), else RankingConfig's; factors 0 when `off`."""
    cfg = RankingConfig(name=dataset, index="", store="")
    if off:
        cfg.als_factors = 0
    elif path is not None:
        rows = {r["model"]: r["params"] for r in json.loads(path.read_text())["results"][dataset]}
        if "als" not in rows:
            raise SystemExit(f"--als-from: {path} has no als row for {dataset}")
        chosen = rows["als"]
        cfg.als_factors, cfg.als_regularization = chosen["factors"], chosen["regularization"]
        cfg.als_alpha = chosen["alpha"]
    return cfg


def scorer_of(dm: TowerDataModule, run) -> tuple[TowerScorer, checkpoint.TrainedModel]:
    """The towers of a run (its kept checkpoint) scoring every creator, and what was loaded."""
    trained = checkpoint.load(run)
    users, creators = dm.users.to("cpu"), dm.creators.to("cpu")  # the towers read tensors
    return TowerScorer(trained.model, users, encode_all_creators(trained.model, creators)), trained


def window_of(dm: TowerDataModule, als: RankingConfig, catalog=None,
              splits=(tables.TRAIN,)) -> Window:  # fmt: skip
    """The features' window over `splits`, with ALS refit on the same pairs it reads."""
    window = Window.from_dataset(dm.data_dir, catalog, splits)
    window.als = fit_als(window.x, als)
    return window


def fit_sample(fans: np.ndarray, n: int) -> np.ndarray:
    """The validation fans the ranker learns from: a seeded sample of n (0 or more: all)."""
    if n and n < len(fans):  # for catalogs like Gowalla's
        return np.sort(np.random.default_rng(1).choice(fans, n, replace=False))
    return fans


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    rows = [r for r in ROWS if r in result]
    xs, width = np.arange(len(SHOWN)), 0.8 / len(rows)
    for i, name in enumerate(rows):
        at = xs + (i - (len(rows) - 1) / 2) * width
        a.bar(at, [result[name][k] for k in SHOWN], width, label=name)
    a.set_xticks(xs, SHOWN, rotation=20)
    lift, (low, high) = result["ndcg@20 lift"]["lift"], result["ndcg@20 lift"]["ci95"]
    a.set_title(f"{result['dataset']}: test, top {result['candidates']} re-ranked\n"
                f"NDCG@20 lift {lift:+.1%} (95 % interval {low:+.1%} to {high:+.1%})")  # fmt: skip
    a.legend()
    gain = result["importance_gain"]
    order = sorted(gain, key=gain.get)
    b.barh(order, [gain[k] for k in order])
    b.set_title("feature importance (gain)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="a prepared dataset under artifacts/data")
    p.add_argument("--run", required=True, type=Path, help="the towers' run folder or .ckpt")
    p.add_argument("--candidates", type=int, nargs="+", default=[200],
                   help="N: the towers' top N re-ranked; several: each is fit on 80 %% of the "
                   "validation fans and N is chosen on NDCG@20 of the other 20 %%")  # fmt: skip
    p.add_argument(
        "--fit-fans",
        type=int,
        default=0,
        help="learn from a seeded sample of this many validation fans (0 = all)",
    )
    p.add_argument(
        "--test-window",
        choices=("known", "train"),
        default="known",
        help="the pairs test's features read: known = training and validation (everything "
        "before test, as the ranker learned from everything before validation); train = "
        "training only, as the first measurement did",
    )
    p.add_argument("--dcn", action="store_true",
                   help="also fit ranking.dcn's DCN-v2 on the same fans and report which model "
                   "validation chooses (the higher NDCG@20 on the same held-out fans)")  # fmt: skip
    p.add_argument(
        "--ceiling",
        action="store_true",
        help="also measure the features' ceiling: a ranker fit on half of test's own labels "
        "re-ranks the other half (a diagnostic bound; it chooses nothing)",
    )
    p.add_argument("--stack", nargs="+", default=[], metavar="PEER",
                   help="add these peers' scores of the candidates as features (als, ease, "
                   "itemknn, ...), each at the setting validation chose in --stack-from; "
                   "a measurement of what stacking would give, not the served ranker")  # fmt: skip
    p.add_argument("--stack-from", type=Path, help="the quality.json of a quality.py run")
    p.add_argument("--als-from", type=Path,
                   help="the quality.json of a quality.py run: the als_score feature's ALS takes "
                   "the setting validation chose there (default: RankingConfig's)")  # fmt: skip
    p.add_argument(
        "--no-als",
        action="store_true",
        help="leave the als_score feature out (its column is 0), as before it was added",
    )
    p.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench" / "ranking")
    return p.parse_args()


def fit_on_validation(a, dm: TowerDataModule, scorer, window: Window) -> dict:
    """Everything chosen on validation: N (when several are given), the lambdarank ranker
    fit on the validation fans' candidates, and DCN-v2 beside it with --dcn."""
    fans = fit_sample(np.flatnonzero(dm.validation.lengths() > 0), a.fit_fans)
    n, chosen_by = a.candidates[0], None
    if len(a.candidates) > 1:  # N chosen on held-out validation fans, then fit on the rest
        n, chosen_by, fans = choose_depth(scorer, dm, fans, a.candidates, window)
    found, x = candidates(scorer, dm.train, fans, n, window)
    y = labels(found, dm.validation, fans)
    names = FEATURES + tuple(f"{p}_score" for p in a.stack)
    if a.stack:
        x = np.concatenate([x, stacked(a.stack, a.stack_from, a.dataset, dm, found, fans)], 2)
    print(f"validation: {len(fans)} fans, {y.any(1).mean():.1%} with a positive in the top "
          f"{n}", flush=True)  # fmt: skip
    fitted = ranker.fit(x, y, names=names)
    print(f"ranker: {fitted.info}", flush=True)
    network = network_info = None
    if a.dcn:
        from ranking import dcn

        network, network_info = dcn.fit(x, y)
    return {"n": n, "chosen_by": chosen_by, "names": names, "fitted": fitted,
            "network": network, "network_info": network_info}  # fmt: skip


def test_once(a, dm: TowerDataModule, scorer, window: Window, fit: dict) -> tuple[dict, tuple]:
    """The towers' test candidates, features from the test window, and the chosen ranker's
    order against the towers' order: the report's figures, and (found, x, fans) for what is
    measured after (DCN-v2, the ceiling)."""
    fans = np.flatnonzero(dm.test.lengths() > 0)
    found, x = candidates(scorer, dm.known, fans, fit["n"], window)
    if a.stack:
        x = np.concatenate([x, stacked(a.stack, a.stack_from, a.dataset, dm, found, fans, True)], 2)
    fitted = fit["fitted"]
    ranked = rerank(fitted, found, x)
    measured = {
        "ranker": {k: v for k, v in fitted.info.items() if k != "importance_gain"},
        "towers": metrics(found[:, : max(KS)], dm.test, fans, dm.popularity, ks=KS),
        "towers + ranker": metrics(ranked[:, : max(KS)], dm.test, fans, dm.popularity, ks=KS),
        "ndcg@20 lift": lift_interval(dm.test, fans, found, ranked),
        "importance_gain": fitted.info.get("importance_gain", dict.fromkeys(fit["names"], 0.0)),
    }
    return measured, (found, x, fans)


def with_dcn(result: dict, fit: dict, dm: TowerDataModule, found, x, fans) -> None:
    """DCN-v2's test figures beside lambdarank's, and which of the two validation chose."""
    from ranking import dcn

    order = np.argsort(-dcn.predict(fit["network"], x), axis=1, kind="stable")
    dcn_ranked = np.take_along_axis(found, order, 1)
    info, fitted = fit["network_info"], fit["fitted"]
    result["dcn-v2"] = info
    result["towers + dcn-v2"] = metrics(dcn_ranked[:, : max(KS)], dm.test, fans, dm.popularity,
                                        ks=KS)  # fmt: skip
    # the network holds out the last fold's fans (ranking.ranker._folds): compare there
    better = info["stop_ndcg@20"] > fitted.info["fold_ndcg@20"][-1]
    result["chosen on validation"] = "dcn-v2" if better else fitted.info["chosen"]


def report(result: dict, fitted, out: Path) -> None:
    """The table of ROWS, validation's choice of model and the lift, printed."""
    print("| model | " + " | ".join(SHOWN) + " |\n|" + " --- |" * (len(SHOWN) + 1))
    for name in ROWS:
        if name in result:
            print(f"| {name} | " + " | ".join(f"{result[name][k]:.4f}" for k in SHOWN) + " |")
    if "dcn-v2" in result:
        print(f"stop fans NDCG@20: lambdarank {fitted.info['fold_ndcg@20'][-1]:.4f}, dcn-v2 "
              f"{result['dcn-v2']['stop_ndcg@20']:.4f}: validation chooses "
              f"{result['chosen on validation']}")  # fmt: skip
    lift, (low, high) = result["ndcg@20 lift"]["lift"], result["ndcg@20 lift"]["ci95"]
    if "ceiling (fit on test labels)" in result:
        bound = result["ceiling (fit on test labels)"]["ndcg@20"] / result["towers"]["ndcg@20"] - 1
        print(f"the features' ceiling (a ranker fit on test's own labels, cross-fit): {bound:+.1%}")
    print(
        f"NDCG@20 lift on test: {lift:+.1%} (95 % paired bootstrap over "
        f"{result['ndcg@20 lift']['fans']} test fans: {low:+.1%} to {high:+.1%}); wrote "
        f"{out / 'ranking.json'} and ranking.png"
    )


def main() -> None:
    a = parse_args()
    started = time.perf_counter()
    dm = TowerDataModule(str(REPO / "artifacts" / "data" / a.dataset))
    dm.setup()
    if dm.validation is None:
        raise SystemExit(f"{dm.data_dir} has no validation split: prepare it with one")
    scorer, trained = scorer_of(dm, a.run)
    print(f"towers {trained.path} ({trained.selected_by})", flush=True)
    als = als_setting(a.als_from, a.dataset, a.no_als)
    window = window_of(dm, als)
    fit = fit_on_validation(a, dm, scorer, window)
    if a.test_window == "known":  # what is known before test: training and validation pairs
        window = window_of(dm, als, window.catalog, (tables.TRAIN, tables.VALIDATION))
    measured, (found, x, fans) = test_once(a, dm, scorer, window, fit)
    result = {
        "dataset": a.dataset,
        "checkpoint": str(trained.path),
        "candidates": fit["n"],
        "candidates_chosen_by": fit["chosen_by"],
        "test_window": a.test_window,
        "stacked_peers": a.stack,
        "als": {
            "factors": als.als_factors,
            "regularization": als.als_regularization,
            "alpha": als.als_alpha,
            "iterations": als.als_iterations,
        },
        **measured,
        "seconds": time.perf_counter() - started,
    }
    if fit["network"] is not None:
        with_dcn(result, fit, dm, found, x, fans)
    if a.ceiling:  # after every choice and the one test of the chosen ranker
        result["ceiling (fit on test labels)"] = ceiling(found, x, fans, dm)
    out = a.out / a.dataset
    out.mkdir(parents=True, exist_ok=True)
    (out / "ranking.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "ranking.png")
    report(result, fit["fitted"], out)


if __name__ == "__main__":
    main()
