"""Where the rank stage's NDCG@20 lift goes: by the fan's count of positives or of history
pairs (issue 17).

A diagnostic that chooses nothing. On Gowalla the cross-validated ranker lifted +4.6 % on
validation folds and +1.6 % on test; this asks whether the gap is the sample the ranker learns
from or the labels it is tested on. It fits the ranker as `ranking_quality.py` does (a seeded
`--fit-fans` sample of the validation fans), then reports its lift

- on `--other-fans` validation fans outside that sample (validation's labels, the training
  window's features, as at fit time), and
- on every test fan (test's labels, the known window's features, as `ranking_quality.py`),

each split by the fan's count of positives, or with `--by history` by the fan's pairs in the
window its features read (0: a fan new since, whom only the towers' cold path and the
creators' own features serve).

    python benchmarks/ranking_lift_by_positives.py --dataset gowalla \
        --run artifacts/bench/r17/gowalla --als-from <gowalla's als row>
    python benchmarks/ranking_lift_by_positives.py --dataset movielens --by history \
        --run <towers run> --als-from <quality.json>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import ranking_quality as rq  # noqa: E402
from data import tables  # noqa: E402
from ranking import ranker  # noqa: E402
from training.data import TowerDataModule  # noqa: E402
from training.evaluate import Interactions, ndcg_per_user  # noqa: E402

BINS = {
    "positives": ((1, 1), (2, 3), (4, 7), (8, 15), (16, None)),
    "history": ((0, 0), (1, 9), (10, 49), (50, None)),
}


def by_count(name: str, found, ranked, truth: Interactions, fans: np.ndarray,
             counts: np.ndarray, by: str) -> None:  # fmt: skip
    """The lift over all `fans`, then within each bin of `counts` (their positives or history)."""
    before = ndcg_per_user(found[:, :20], truth, fans)
    after = ndcg_per_user(ranked[:, :20], truth, fans)
    print(f"{name}: {len(fans)} fans, {counts.mean():.1f} {by} a fan, "
          f"lift {after.mean() / before.mean() - 1:+.2%}")  # fmt: skip
    for low, high in BINS[by]:
        inside = (counts >= low) & (counts <= (counts.max() if high is None else high))
        if before[inside].sum() > 0:
            lift = after[inside].mean() / before[inside].mean() - 1
            span = f"{low}+" if high is None else str(low) if high == low else f"{low}–{high}"
            print(f"  {span} {by}: {inside.sum()} fans, lift {lift:+.2%}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--run", required=True, help="the towers' training run (its kept checkpoint)")
    p.add_argument("--als-from", type=Path, help="quality.json with the dataset's als row")
    p.add_argument("--fit-fans", type=int, default=6000)
    p.add_argument("--other-fans", type=int, default=8000)
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--by", choices=tuple(BINS), default="positives")
    a = p.parse_args()
    dm = TowerDataModule(str(REPO / "artifacts" / "data" / a.dataset))
    dm.setup()
    scorer, _ = rq.scorer_of(dm, a.run)
    als = rq.als_setting(a.als_from, a.dataset, False)
    window = rq.window_of(dm, als)
    every = np.flatnonzero(dm.validation.lengths() > 0)
    fans = rq.fit_sample(every, a.fit_fans)  # ranking_quality.py's sample of the same size
    found, x = rq.candidates(scorer, dm.train, fans, a.candidates, window)
    fitted = ranker.fit(x, rq.labels(found, dm.validation, fans))
    rest = np.setdiff1d(every, fans)
    other = np.sort(np.random.default_rng(2).choice(rest, min(a.other_fans, len(rest)), False))
    seen = dm.validation if a.by == "positives" else dm.train
    if len(other):  # none where the sample took every validation fan (MovieLens)
        found, x = rq.candidates(scorer, dm.train, other, a.candidates, window)
        by_count("validation fans outside the sample", found, rq.rerank(fitted, found, x),
                 dm.validation, other, seen.lengths()[other], a.by)  # fmt: skip
    known = rq.window_of(dm, als, window.catalog, (tables.TRAIN, tables.VALIDATION))
    test = np.flatnonzero(dm.test.lengths() > 0)
    found, x = rq.candidates(scorer, dm.known, test, a.candidates, known)
    seen = dm.test if a.by == "positives" else dm.known
    by_count("test fans", found, rq.rerank(fitted, found, x), dm.test, test,
             seen.lengths()[test], a.by)  # fmt: skip


if __name__ == "__main__":
    main()
