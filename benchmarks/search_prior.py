"""A popularity prior for name searches, measured alone (issue 16): a diagnostic. The prior is
served (search.engine's popularity list, weighted as search_quality.py chooses); this measures
it on names only, lexical and semantic beside it, without the other sets' say.

On the navigational sets the fusion ties lexical because most of lexical's wrong first answers
are ambiguous: another creator's name holds every word of the query. The set draws its target
uniformly, so on those queries no ranking can do better in expectation. A platform's name
searches do not come uniformly: fans look up a creator about as often as fans follow it. This
builds the navigational set both ways, uniform (`search.queries.navigational`, as
`search_quality.py`) and by audience (targets drawn in proportion to training pairs + 1), and
asks lexical (and semantic, where the version's engine has it in process) once per query
through the served engine (`--grams` as the serving config says), with the engine's popularity
list: the union of their candidates by training audience. Fusion constants are chosen on
the validation half, MRR@10, over the same grid with and without the popularity list; the test
half is evaluated once, paired t-test (ranx).

    python benchmarks/search_prior.py --dataset synthetic_1m_creators --grams unknown
    # → artifacts/bench/search_prior/<dataset>.json and .png

`--gates` reads the validation halves only, and no test: the prior given a say only among the
lexical candidates that score within a share of the best (a gate of 0: exact ties only), each
gate's MRR@10 over lexical's on both draws. A gate that helps one draw and costs the other
nothing would let one served setting serve both; the figures say whether there is one.

    python benchmarks/search_prior.py --dataset synthetic_1m_creators --grams unknown --gates
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.search_quality import recommender, say  # noqa: E402
from index import store  # noqa: E402
from search import evaluation as ev  # noqa: E402
from search import fusion  # noqa: E402
from search import queries as qs  # noqa: E402
from search.lexical import GRAMS  # noqa: E402

METRIC = "mrr@10"
PRIOR_WEIGHTS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
SEMANTIC_WEIGHTS = (0.0, 0.1, 0.25)


def grid() -> list[dict]:
    """rrf (c 5-60) and weighted; lexical 1, semantic and popularity varied."""
    methods = [("rrf", c) for c in (5.0, 10.0, 20.0, 60.0)] + [("weighted", 0.0)]
    return [{"method": m, "c": c, "weights": {"lexical": 1.0, "semantic": s, "popularity": p}}
            for m, c in methods for s in SEMANTIC_WEIGHTS for p in PRIOR_WEIGHTS]  # fmt: skip


def fused(lists: list[ev.Lists], s: dict, k: int = 10) -> list[list[int]]:
    return [[r for r, _ in fusion.by_method(ls, **s)[:k]] for ls in lists]


def choose(q: qs.QuerySet, lists: list[ev.Lists]) -> dict[str, tuple[dict, float]]:
    """The grid point best on these (validation) queries without the prior and with it: each
    point is scored once, and the first is the best among those weighting popularity 0."""
    truth, points = ev.qrels(q), grid()
    scores = np.array([ev.per_query(q, fused(lists, s), truth).mean() for s in points])
    plain = np.flatnonzero([s["weights"]["popularity"] == 0.0 for s in points])
    best = {"fusion": plain[np.argmax(scores[plain])], "fusion + prior": np.argmax(scores)}
    return {name: (points[int(i)], round(float(scores[i]), 4)) for name, i in best.items()}


def measure(q: qs.QuerySet, rec, grams: str) -> dict:
    """Choose on the validation half, then test once: singles, fusion without and with the prior."""
    (val, test), engine = q.split(0), rec.bundle.search
    lists = {half: ev.collect(engine, part, 100, say=say, grams=grams)
             for half, part in (("validation", val), ("test", test))}  # fmt: skip
    chosen = choose(val, lists["validation"])
    runs = {n: [ls[n][0][:10].tolist() for ls in lists["test"]] for n in lists["test"][0]}
    runs |= {name: fused(lists["test"], s) for name, (s, _) in chosen.items()}
    table = {n: ev.evaluate(test, rows, (METRIC, "hit_rate@1")) for n, rows in runs.items()}
    best = max((n for n in runs if "fusion" not in n), key=lambda n: table[n][METRIC])
    return {"queries": len(q), "validation": {n: list(c) for n, c in chosen.items()},
            "test": table, "best_single": best,
            "against best single": ev.compare(test, ("fusion + prior", runs["fusion + prior"]),
                                              (best, runs[best]), METRIC),
            "against fusion": ev.compare(test, ("fusion + prior", runs["fusion + prior"]),
                                         ("fusion", runs["fusion"]), METRIC)}  # fmt: skip


GATES = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
"""Shares of the best lexical score within which the prior orders the candidates."""


def gated(rows: np.ndarray, scores: np.ndarray, audience: np.ndarray, gate: float) -> np.ndarray:
    """The lexical list with the candidates that score at least (1 - gate) x the best first,
    most followed first (ties as lexical had them), then the rest as lexical had them."""
    near = scores >= (1.0 - gate) * scores.max() if len(scores) else scores.astype(bool)
    by = np.where(near, -audience[rows], 0.0)
    return rows[np.lexsort((np.arange(len(rows)), by, ~near))]


def gates(q: qs.QuerySet, rec, grams: str) -> dict[str, list]:
    """On the validation half only: each gate's MRR@10 over lexical's, with wins and losses."""
    val, engine = q.split(0)[0], rec.bundle.search
    found = [engine.lexical.search(text, 100, grams) for text in val.text]
    truth = ev.qrels(val)
    base = ev.per_query(val, [r[:10].tolist() for r, _ in found], truth)
    out = {"lexical": [round(float(base.mean()), 4)]}
    for gate in GATES:
        rows = [gated(r, np.asarray(s, np.float64), engine.audience, gate)[:10].tolist()
                for r, s in found]  # fmt: skip
        m = ev.per_query(val, rows, truth)
        out[f"gate {gate}"] = [round(float(m.mean() / base.mean()), 4),
                               int((m > base).sum()), int((m < base).sum())]  # fmt: skip
    return out


def plot(dataset: str, result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(result), figsize=(5 * len(result), 3.6), sharey=True)
    for ax, (draw, r) in zip(np.atleast_1d(axes), result.items(), strict=True):
        names = list(r["test"])
        ax.bar(names, [r["test"][n][METRIC] for n in names], color="#4c72b0")
        p = r["against best single"]["p_value"]
        ax.set_title(f"targets {draw}: prior vs {r['best_single']} p={p:.3g}", fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    np.atleast_1d(axes)[0].set_ylabel(f"test {METRIC}")
    fig.suptitle(f"{dataset}: navigational names, a popularity prior (chosen on validation)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="synthetic_1m_creators")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--grams", choices=GRAMS, default="every", help="the serving config's")
    ap.add_argument("--out", type=Path, default=REPO / "artifacts/bench/search_prior")
    ap.add_argument(
        "--gates", action="store_true", help="validation only: the prior gated by score"
    )
    a = ap.parse_args()
    rec, root = recommender(a.dataset), REPO / "artifacts/index" / a.dataset
    catalog = qs.Catalog.of_version(store.versions_dir(root) / store.current_version(root))
    audience = qs.audience(catalog)
    sets = {
        "uniform": qs.navigational(catalog, a.queries, 0),
        "by audience": qs.navigational(catalog, a.queries, 0, weights=audience + 1.0),
    }
    if a.gates:
        for draw, q in sets.items():
            say(f"targets {draw}, validation, [MRR@10 / lexical's, wins, losses]: "
                f"{json.dumps(gates(q, rec, a.grams))}")  # fmt: skip
        return
    result = {draw: measure(q, rec, a.grams) for draw, q in sets.items()}
    for draw, r in result.items():
        say(f"targets {draw}: test {json.dumps(r['test'])}")
        say(f"  chosen: {r['validation']}")
        say(f"  prior vs {r['best_single']}: {r['against best single']}")
        say(f"  prior vs fusion: {r['against fusion']}")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.dataset}.json").write_text(json.dumps(result, indent=2))
    plot(a.dataset, result, a.out / f"{a.dataset}.png")
    say(f"wrote {a.out / a.dataset}.json and .png")


if __name__ == "__main__":
    main()
