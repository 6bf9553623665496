"""Creator search measured on labelled query sets (search.queries) with ranx (issue 16).

    lists = collect(engine, queries, n=100, vectors=fans)     # each retriever's list, once
    rows = fused(lists, settings, k=100, fan=True, exclude=queries.exclude)
    scores = evaluate(queries, {"rrf": rows}, ["mrr@10"])

The retrievers are asked once per query (the slow part: BM25, the query encoder); every single
retriever and every fusion setting is then a cheap re-fusion of those lists through the
service's own `search.engine.fuse`, so what is measured is what the service answers
(exclusions, ties and all). Fusion constants are chosen by a small grid on a validation half
(`choose`); ranx needs the `bench` extra (`pip install -e '.[bench]'`) and is imported only
when evaluating.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from search import fusion
from search.engine import PRIOR, Engine, SearchSettings, fuse
from search.queries import PRIMARY, QuerySet

Lists = dict[str, fusion.Ranked]
C_GRID = (5.0, 10.0, 20.0, 40.0, 60.0, 100.0)
RRF_WEIGHTS = (0.1, 0.25, 0.5, 1.0, 2.0)
SCORE_WEIGHTS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
PERSONAL_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)
NOT_SINGLE = {PRIOR}
"""Lists the choice's yardstick (best_singles) leaves out; search_quality.py --count-prior
empties it, to measure what counting the prior as a single list would choose."""
PRIOR_WEIGHTS = (0.0, 0.1, 0.5, 2.0)
"""The popularity prior's weights tried (0: off). benchmarks/search_prior.py chose 0.1 (rrf) and
0.5 (weighted) on names; 2 lets it lead, as it would on Last.fm's tags, where it alone beats
both text retrievers."""


def collect(
    engine: Engine,
    queries: QuerySet,
    n: int,
    vectors: Sequence[np.ndarray | None] | None = None,
    say: Callable[[str], None] | None = None,
    near: int = 0,
    grams: str = "every",
) -> list[Lists]:
    """Each retriever's n best rows for every query (personal where a fan's vector is given,
    looking among the fan's `near` nearest creators too; `near`, `grams`: SearchSettings'),
    and the popularity prior's where the engine has audiences (a weight of 0 leaves it out)."""
    out, started = [], time.perf_counter()
    for i, text in enumerate(queries.text):
        vector = None if vectors is None else vectors[i]
        out.append(engine.candidates(text, n, vector, near=near, grams=grams, prior=True))
        if say is not None and ((i + 1) % 250 == 0 or i + 1 == len(queries)):
            rate = (i + 1) / (time.perf_counter() - started)
            say(f"  {queries.kind}: {i + 1}/{len(queries)} queries ({rate:.0f}/s)")
    return out


def fused(
    lists: list[Lists], settings: SearchSettings, k: int, fan: bool, exclude: list[list[int]],
    names: Sequence[bool] | None = None,
) -> list[list[int]]:  # fmt: skip
    """Each query's k best rows under `settings` (the name fusion for the queries `names` marks
    as reading as a name, the fan's for the others asked with a fan), with or without the
    fan's personal list."""
    names = [False] * len(lists) if names is None else names
    out = []
    for ls, ex, nm in zip(lists, exclude, names, strict=True):
        ls = _with_fan(ls, fan)
        out.append([h.row for h in fuse(ls, k, settings.for_query(nm, "personal" in ls), ex)])
    return out


def reads_as_name(
    engine: Engine, queries: QuerySet, reading: str = "words", lists: list[Lists] | None = None
) -> list[bool]:
    """Which queries the service would fuse as a name (Engine.reads_as_name), given each
    query's `lists` (collect's) where there are."""
    lists = [None] * len(queries) if lists is None else lists
    return [engine.reads_as_name(t, reading, ls) for t, ls in zip(queries.text, lists, strict=True)]


def _with_fan(lists: Lists, fan: bool) -> Lists:
    return lists if fan else {r: v for r, v in lists.items() if r != "personal"}


def single(lists: list[Lists], name: str, k: int, exclude: list[list[int]]) -> list[list[int]]:
    """Each query's k best rows of one retriever alone (empty where it did not answer)."""
    alone = SearchSettings(weights={name: 1.0})
    return [[h.row for h in fuse({name: ls[name]}, k, alone, ex)]
            if name in ls else [] for ls, ex in zip(lists, exclude, strict=True)]  # fmt: skip


def qrels(queries: QuerySet):
    from ranx import Qrels

    return Qrels({q: {str(r): 1 for r in rel} for q, rel in zip(queries.ids, queries.relevant,
                                                                 strict=True)})  # fmt: skip


def run(queries: QuerySet, rows: list[list[int]], name: str):
    """A ranx Run whose scores keep the given order (ranx would reorder ties by id)."""
    from ranx import Run

    ranked = {q: {str(r): float(len(rs) - i) for i, r in enumerate(rs)} or {"-1": 0.0}
              for q, rs in zip(queries.ids, rows, strict=True)}  # fmt: skip
    return Run(ranked, name=name)


def evaluate(queries: QuerySet, rows: list[list[int]], metrics: Sequence[str], truth=None):
    """{metric: mean over the queries}."""
    from ranx import evaluate as ranx_evaluate

    truth = qrels(queries) if truth is None else truth
    out = ranx_evaluate(truth, run(queries, rows, "run"), list(metrics), save_results_in_run=False)
    out = out if isinstance(out, dict) else {metrics[0]: out}
    return {m: round(float(v), 4) for m, v in out.items()}


def compare(queries: QuerySet, a: tuple[str, list], b: tuple[str, list], metric: str,
            stat_test: str = "student") -> dict:  # fmt: skip
    """Paired significance test of run a against run b on one metric (ranx.compare)."""
    from ranx import compare as ranx_compare

    report = ranx_compare(qrels(queries), [run(queries, a[1], a[0]), run(queries, b[1], b[0])],
                          metrics=[metric], stat_test=stat_test, rounding_digits=4)  # fmt: skip
    d = report.to_dict()
    wtl = d[a[0]]["win_tie_loss"][b[0]][metric]
    return {"a": a[0], "b": b[0], "metric": metric, "stat_test": stat_test,
            "a_score": round(float(d[a[0]]["scores"][metric]), 4),
            "b_score": round(float(d[b[0]]["scores"][metric]), 4),
            "p_value": float(d[a[0]]["comparisons"][b[0]][metric]),
            "win_tie_loss": [int(wtl["W"]), int(wtl["T"]), int(wtl["L"])]}  # fmt: skip


def grid(method: str, retrievers: Sequence[str], candidates: int) -> list[SearchSettings]:
    """The settings tried for one method: lexical's weight fixed at 1 (only ratios count),
    semantic's, personal's and the prior's varied where they take part, and rrf's c."""
    others = [r for r in ("semantic", "personal", PRIOR) if r in retrievers]
    choices = {"semantic": RRF_WEIGHTS if method == "rrf" else SCORE_WEIGHTS,
               "personal": PERSONAL_WEIGHTS, PRIOR: PRIOR_WEIGHTS}  # fmt: skip
    combos = [{}]
    for r in others:
        combos = [{**c, r: w} for c in combos for w in choices[r]]
    cs = C_GRID if method == "rrf" else (60.0,)
    return [SearchSettings(method, c, {"lexical": 1.0, **w}, candidates)
            for c in cs for w in combos]  # fmt: skip


Objective = tuple[float, ...]
"""A fusion's validation figures compared leximin: each set's primary metric over its best
single retriever's, worst set first (then the next worst...), then their mean."""
FLOOR = 1e-3
"""A set's best single retriever's score is at least this in the ratio (none may find a thing)."""
Sets = list[tuple[QuerySet, list[Lists], bool]]


def choose(
    method: str, sets: Sets, candidates: int, say: Callable[[str], None] | None = None
) -> tuple[SearchSettings, Objective, list[dict]]:
    """The grid's best settings for `method` on these (validation) sets, its objective, and
    every point tried. Each set counts as the ratio of its primary metric (with the fan where
    the set has fans) to its best single retriever's on the same queries: the goal is to beat
    that retriever on every set, and a ratio keeps one set's scale (a name's MRR near 0.9, a
    topic's NDCG near 0.05) from outvoting another's. The worst set's ratio decides first."""
    settings = grid(method, _retrievers(sets), candidates)
    ratios = sums(sets, settings) / _scale(sets)
    tried = [{"c": s.c, "weights": s.weights, "sets": _by_set(sets, r),
              "objective": list(leximin(r))}
             for s, r in zip(settings, ratios, strict=True)]  # fmt: skip
    i = max(range(len(settings)), key=lambda i: (leximin(ratios[i]), -i))
    if say is not None:
        say(f"  {method}: {len(settings)} settings, best {tried[i]}")
    return settings[i], leximin(ratios[i]), tried


def choose_routes(
    sets: Sets, candidates: int, routes: dict[str, list[np.ndarray]],
    say: Callable[[str], None] | None = None, rounds: int = 10,
) -> tuple[dict[str, SearchSettings], Objective, dict[str, list[float]]]:  # fmt: skip
    """A setting per route (the queries each mask of `routes` marks, one mask per set), chosen
    together: each set's metric is the sum over the routes answering its queries, so a route's
    setting is picked, in turn, for the leximin objective of every set given the others', until
    none changes. Starts from each route's own best. Returns the settings, the objective and
    each set's ratio."""
    options = [s for m in ("rrf", "weighted") for s in grid(m, _retrievers(sets), candidates)]
    scale = _scale(sets)
    taken = {r: keep for r, keep in routes.items() if any(m.any() for m in keep)}
    tables = {r: sums(sets, options, keep) for r, keep in taken.items()}
    pick = {r: int(np.argmax((t / scale).sum(1))) for r, t in tables.items()}
    for _ in range(rounds):
        before = dict(pick)
        for r, table in tables.items():
            rest = sum(tables[o][pick[o]] for o in tables if o != r)
            ratios = (rest + table) / scale
            pick[r] = max(range(len(options)), key=lambda i: (leximin(ratios[i]), i == pick[r], -i))
        if pick == before:
            break
    total = sum(t[pick[r]] for r, t in tables.items()) / scale
    if say is not None:
        say(f"  routes: {({r: _describe(options[i]) for r, i in pick.items()})}, "
            f"ratios {_by_set(sets, total)}")  # fmt: skip
    return {r: options[i] for r, i in pick.items()}, leximin(total), _by_set(sets, total)


def leximin(ratios: np.ndarray) -> Objective:
    r = np.round(np.asarray(ratios, float), 4)
    return (*sorted(r.tolist()), round(float(r.mean()), 4))


def sums(sets: Sets, settings: list[SearchSettings], keep=None) -> np.ndarray:
    """[settings, sets]: each set's primary metric summed over its (kept) queries."""
    keep = keep or [np.ones(len(q), bool) for q, _, _ in sets]
    out = np.zeros((len(settings), len(sets)))
    for j, ((q, lists, fan), mask) in enumerate(zip(sets, keep, strict=True)):
        if mask.any():
            which = np.flatnonzero(mask)
            part, kept = q.take(which), [lists[i] for i in which]
            truth = qrels(part)
            for i, s in enumerate(settings):
                out[i, j] = per_query(part, fused(kept, s, 10, fan, part.exclude), truth).sum()
    return out


def best_singles(sets: Sets) -> np.ndarray:
    """Each set's best single retriever's mean primary metric (at least FLOOR). The prior
    alone is not one: counted, Last.fm's choice traded names for tags (its topic route
    answers a fifth of the names), and fell below lexical on names (BENCHMARKS.md, issue 16)."""
    out = []
    for q, lists, fan in sets:
        names = {r for ls in lists for r in ls if r not in NOT_SINGLE and (fan or r != "personal")}
        truth = qrels(q)
        out.append(max(per_query(q, single(lists, n, 10, q.exclude), truth).mean() for n in names))
    return np.maximum(np.array(out), FLOOR)


def per_query(queries: QuerySet, rows: list[list[int]], truth) -> np.ndarray:
    """The set's primary metric of each query, in the set's order."""
    from ranx import evaluate as ranx_evaluate

    metric, ranked = PRIMARY[queries.kind], run(queries, rows, "run")
    ranx_evaluate(truth, ranked, [metric], save_results_in_run=True)
    return np.array([ranked.scores[metric].get(q, 0.0) for q in queries.ids])


def _scale(sets: Sets) -> np.ndarray:
    """What a set's summed metric is divided by: its size × its best single retriever's mean."""
    return np.array([len(q) for q, _, _ in sets]) * best_singles(sets)


def _retrievers(sets: Sets) -> list[str]:
    return sorted({r for _, lists, _ in sets for ls in lists for r in ls})


def _by_set(sets: Sets, ratios) -> dict[str, float]:
    return {q.kind: round(float(r), 4) for (q, _, _), r in zip(sets, ratios, strict=True)}


def _describe(s: SearchSettings) -> str:
    return f"{s.method} c {s.c:g} {s.weights}"
