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
from search.engine import Engine, SearchSettings, fuse
from search.queries import PRIMARY, QuerySet

Lists = dict[str, fusion.Ranked]
C_GRID = (5.0, 10.0, 20.0, 40.0, 60.0, 100.0)
RRF_WEIGHTS = (0.1, 0.25, 0.5, 1.0, 2.0)
SCORE_WEIGHTS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
PERSONAL_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)


def collect(
    engine: Engine,
    queries: QuerySet,
    n: int,
    vectors: Sequence[np.ndarray | None] | None = None,
    say: Callable[[str], None] | None = None,
    near: int = 0,
) -> list[Lists]:
    """Each retriever's n best rows for every query (personal where a fan's vector is given,
    looking among the fan's `near` nearest creators too, as SearchSettings.near says)."""
    out, started = [], time.perf_counter()
    for i, text in enumerate(queries.text):
        vector = None if vectors is None else vectors[i]
        out.append(engine.candidates(text, n, vector, near=near))
        if say is not None and ((i + 1) % 250 == 0 or i + 1 == len(queries)):
            rate = (i + 1) / (time.perf_counter() - started)
            say(f"  {queries.kind}: {i + 1}/{len(queries)} queries ({rate:.0f}/s)")
    return out


def fused(
    lists: list[Lists], settings: SearchSettings, k: int, fan: bool, exclude: list[list[int]],
    names: Sequence[bool] | None = None,
) -> list[list[int]]:  # fmt: skip
    """Each query's k best rows under `settings` (the name fusion for the queries `names` marks
    as reading as a name), with or without the fan's personal list."""
    names = [False] * len(lists) if names is None else names
    return [[h.row for h in fuse(_with_fan(ls, fan), k, settings.for_query(nm), ex)]
            for ls, ex, nm in zip(lists, exclude, names, strict=True)]  # fmt: skip


def reads_as_name(engine: Engine, queries: QuerySet) -> list[bool]:
    """Which queries the service would fuse as a name (Engine.reads_as_name)."""
    return [engine.reads_as_name(t) for t in queries.text]


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
    semantic's and personal's varied where they take part, and rrf's c."""
    others = [r for r in ("semantic", "personal") if r in retrievers]
    choices = {"semantic": RRF_WEIGHTS if method == "rrf" else SCORE_WEIGHTS,
               "personal": PERSONAL_WEIGHTS}  # fmt: skip
    combos = [{}]
    for r in others:
        combos = [{**c, r: w} for c in combos for w in choices[r]]
    cs = C_GRID if method == "rrf" else (60.0,)
    return [SearchSettings(method, c, {"lexical": 1.0, **w}, candidates)
            for c in cs for w in combos]  # fmt: skip


def choose(
    method: str,
    sets: list[tuple[QuerySet, list[Lists], bool]],
    candidates: int,
    say: Callable[[str], None] | None = None,
    keep: list[np.ndarray] | None = None,
) -> tuple[SearchSettings, float, list[dict]]:
    """The grid's best settings for `method` by the mean of each set's primary metric (with
    the fan where a set has fans), its objective, and every point tried. With `keep` (a mask
    per set) only those queries count, each set's metric weighted by the share kept: the
    objective of the queries one fusion of a routed pair answers."""
    retrievers = sorted({r for _, lists, _ in sets for ls in lists for r in ls})
    keep = keep or [np.ones(len(q), bool) for q, _, _ in sets]
    subsets = []
    for (q, lists, fan), mask in zip(sets, keep, strict=True):
        if mask.any():
            which = np.flatnonzero(mask)
            part = q.take(which)
            subsets.append((part, [lists[i] for i in which], fan, mask.mean(), qrels(part)))
    tried = []
    for setting in grid(method, retrievers, candidates):
        per_set = {q.kind: share * evaluate(q, fused(lists, setting, 10, fan, q.exclude),
                                            [PRIMARY[q.kind]], truth)[PRIMARY[q.kind]]
                   for q, lists, fan, share, truth in subsets}  # fmt: skip
        objective = round(float(np.sum(list(per_set.values())) / len(sets)), 4)
        tried.append({"c": setting.c, "weights": setting.weights, "sets": per_set,
                      "objective": objective})  # fmt: skip
    best = max(range(len(tried)), key=lambda i: (tried[i]["objective"], -i))
    if say is not None:
        say(f"  {method}: {len(tried)} settings, best {tried[best]}")
    chosen = grid(method, retrievers, candidates)[best]
    return chosen, tried[best]["objective"], tried
