"""Creator search quality on labelled query sets (issue 16): every retriever and every fusion
side by side, fusion constants chosen on a validation half, figures on the test half, once.

    pip install -e '.[bench]'     # ranx
    python benchmarks/search_quality.py --dataset synthetic_demo|lastfm_search|synthetic_1m_creators

The served version of the dataset's index is loaded the way the service loads it (a
Recommender over its feature store, the user tower in-process), so the retrievers are the
served ones and each fan's vector is what `/search?user_id=` uses. Query sets (search.queries):
navigational (targets drawn uniformly, and again by audience) and personal on every dataset,
topical on Last.fm with its tag hold-out. Each set
is split by query into validation and test halves; a small grid (search.evaluation) picks rrf's c
and weights and the weighted fusion's weights by the mean of the sets' primary metrics on
validation; the test half is then evaluated once: every single retriever, both fusions, the
chosen fusion against the best single retriever (ranx paired t-test), and on the personal set
the chosen fusion with the fan against the same query without (the lift).

With --grams choose, both ways of asking the lexical retriever for name trigrams
(search.lexical) are collected, each gets its fusion chosen, and the way whose fusion is better
on validation (choose_way) is the one evaluated on test. --query_precision choose does the same
for the semantic retriever's query encoder, fp32 and int8 (index config `query_precision`;
both made as the rebuild job makes them), with the trigram way given; int8, the faster, is
taken when its fusion keeps KEEP of fp32's validation metric on every set. --reading words,fit
(two or more of search.topics.READINGS) routes the same lists each way (SearchSettings.reading:
how a query is told to read as a name) and takes the way whose fusion is better on validation.

Writes artifacts/bench/search_quality/<dataset>.json and .png (<dataset>-c<n>, -near<n>,
-grams-<way>, -query-<precision> for other --candidates, --near, --grams than the defaults, or
a --query_precision); prints a table per set.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from index import store  # noqa: E402
from index.lexical import tokens  # noqa: E402
from search import evaluation as ev  # noqa: E402
from search import queries as qs  # noqa: E402
from search.engine import PRIOR, SearchSettings  # noqa: E402
from search.lexical import GRAMS  # noqa: E402
from search.topics import READINGS  # noqa: E402

OUT = REPO / "artifacts" / "bench" / "search_quality"
SETS = {
    "synthetic_demo": ("navigational", qs.BY_AUDIENCE, "personal"),
    "lastfm_search": ("navigational", qs.BY_AUDIENCE, "topical", "personal"),
    "synthetic_1m_creators": ("navigational", qs.BY_AUDIENCE, "personal"),
}
"""Each dataset's labelled sets. Names come twice: targets drawn uniformly (where a name
several creators share cannot be told apart by any ranking, in expectation) and in proportion
to audience + 1 (as fans look creators up: the popularity prior's case)."""
SINGLES = ("lexical", "semantic", "personal")
"""The single retrievers a fusion is measured against. The popularity prior alone (the text
candidates by audience) is reported beside them and compared with the fusion too: on Last.fm's
tags it beats both text retrievers."""
STARTED = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {msg}", flush=True)


def recommender(dataset: str):
    """The served bundle of the dataset's index, as `python -m serving up` loads it (features
    materialised first when missing), with the user tower in-process."""
    from serving.features.embedded import EmbeddedStore
    from serving.features.materialise import materialise
    from serving.pipeline.recommender import Recommender
    from serving.pipeline.towers import InProcessTowers

    root, features = REPO / "artifacts/index" / dataset, REPO / "artifacts/features" / dataset
    if not features.exists():
        tower = store.read_manifest(root)["user_tower"]
        data = store.read_manifest(root)["catalog"]["data_dir"]
        say(f"materialising features of {data} into {features}")
        materialise(data, features, tower["attribute_buckets"], tower["attribute_width"])
    rec = Recommender(root, EmbeddedStore.open(features), InProcessTowers())
    rec.refresh()
    return rec


def build_sets(
    dataset: str, catalog: qs.Catalog, n: int, seed: int, kinds: tuple[str, ...] | None = None
) -> list[qs.QuerySet]:
    """The dataset's labelled query sets (SETS), or those of `kinds` among them."""
    made = []
    for kind in SETS[dataset] if kinds is None else [k for k in SETS[dataset] if k in kinds]:
        if kind == "navigational":
            made.append(qs.navigational(catalog, n, seed))
        elif kind == qs.BY_AUDIENCE:
            made.append(qs.navigational(catalog, n, seed, weights=qs.audience(catalog) + 1.0))
        elif kind == "topical":
            made.append(qs.topical(catalog, n=n, seed=seed))
        else:
            made.append(qs.personal(catalog, n, seed))
        say(f"{kind}: {len(made[-1])} queries, e.g. {made[-1].text[:4]}")
    return made


def fan_vectors(rec, queries: qs.QuerySet) -> tuple[qs.QuerySet, list[np.ndarray]]:
    """The fans' vectors as /search computes them; a fan without one is dropped (said)."""
    bundle = rec.bundle
    vectors = [rec.user_vector(f, bundle)[0] for f in queries.fans]
    known = np.flatnonzero([v is not None for v in vectors])
    if len(known) < len(queries):
        say(f"personal: {len(queries) - len(known)} fans without a vector dropped")
    return queries.take(known), [vectors[i] for i in known]


def tuned_for(kind: str, tried: dict[str, list[dict]], candidates: int):
    """The grid point best on this set's validation half alone, of either method: what one
    setting per kind of query would give (the service has one for all)."""
    method, t = max(((m, t) for m, ts in tried.items() for t in ts),
                    key=lambda mt: mt[1]["sets"][kind])  # fmt: skip
    return SearchSettings(method, t["c"], t["weights"], candidates), t["sets"][kind]


def test_runs(q: qs.QuerySet, lists, chosen: dict[str, SearchSettings], k: int, as_name) -> dict:
    """Every single retriever and each fusion on one test set (with and without the fan on
    the personal set): {run name: rows per query}."""
    has_fan = q.kind == "personal"
    names = sorted({r for ls in lists for r in ls}, key=[*SINGLES, PRIOR].index)
    runs = {name: ev.single(lists, name, k, q.exclude) for name in names}
    for method, s in chosen.items():
        runs[method] = ev.fused(lists, s, k, has_fan, q.exclude, as_name)
        if has_fan:
            runs[f"{method}, no fan"] = ev.fused(lists, s, k, False, q.exclude, as_name)
    return runs


def misses(q: qs.QuerySet, rows: list[list[int]], names: np.ndarray) -> dict:
    """Queries whose first answer is not relevant, and how many of those are ambiguous: the
    creator put first has every word of the query in its name, so the query fits it at least
    as well as the one it was made from ('Zoe's TV' for Zoe's Reel TV, first Zoe's Cut TV).
    With the target drawn uniformly, no ranking can do better on those in expectation."""
    missed = ambiguous = 0
    for text, relevant, ranked in zip(q.text, q.relevant, rows, strict=True):
        if ranked and ranked[0] in relevant:
            continue
        missed += 1
        words = set(tokens(text))
        ambiguous += bool(ranked and words and words <= set(tokens(names[ranked[0]])))
    return {"missed_at_1": missed, "ambiguous": ambiguous}


def report_set(q: qs.QuerySet, runs: dict, best_method: str, names: np.ndarray) -> dict:
    metrics = qs.METRICS[q.kind]
    primary = qs.PRIMARY[q.kind]
    table = {name: ev.evaluate(q, rows, metrics) for name, rows in runs.items()}
    singles = [n for n in SINGLES if n in runs]
    best_single = max(singles, key=lambda n: table[n][primary])
    out = {"queries": len(q), "metrics": list(metrics), "runs": table, "best_single": best_single,
           "chosen": best_method}  # fmt: skip
    out["fusion_vs_best_single"] = ev.compare(
        q, (best_method, runs[best_method]), (best_single, runs[best_single]), primary
    )
    out["tuned_vs_best_single"] = ev.compare(
        q, ("tuned", runs["tuned"]), (best_single, runs[best_single]), primary
    )
    if PRIOR in runs:  # the prior alone, a list the fusion holds, though not a retriever
        out["fusion_vs_prior"] = ev.compare(
            q, (best_method, runs[best_method]), (PRIOR, runs[PRIOR]), primary
        )
    if q.kind in ("navigational", qs.BY_AUDIENCE):
        out["misses"] = {name: misses(q, rows, names) for name, rows in runs.items()}
    if q.kind == "personal":
        without = f"{best_method}, no fan"
        a, b = table[best_method][primary], table[without][primary]
        out["lift"] = {"metric": primary, "with_fan": a, "without_fan": b,
                       "relative": round(a / b - 1, 4) if b else None,
                       "test": ev.compare(q, (best_method, runs[best_method]),
                                          (without, runs[without]), primary)}  # fmt: skip
    return out


def print_set(kind: str, r: dict) -> None:
    print(f"\n{kind} (test, {r['queries']} queries)")
    print(f"  {'run':<20}" + "".join(f"{m:>12}" for m in r["metrics"]))
    for name, scores in r["runs"].items():
        print(f"  {name:<20}" + "".join(f"{scores[m]:>12.4f}" for m in r["metrics"]))
    compared = ("fusion_vs_best_single", "tuned_vs_best_single", "fusion_vs_prior")
    for c in (r[key] for key in compared if key in r):
        print(f"  {c['a']} vs {c['b']} ({c['metric']}): {c['a_score']} vs {c['b_score']}, "
              f"p = {c['p_value']:.3g} ({c['stat_test']}), W/T/L {c['win_tie_loss']}")  # fmt: skip
    for name, m in r.get("misses", {}).items():
        print(
            f"  {name}: first answer wrong for {m['missed_at_1']} queries, "
            f"{m['ambiguous']} of them ambiguous (the first creator's name holds every word)"
        )
    if "lift" in r:
        lift = r["lift"]
        print(f"  personal lift ({lift['metric']}): {lift['with_fan']} with the fan vs "
              f"{lift['without_fan']} without = {lift['relative']}, "
              f"p = {lift['test']['p_value']:.3g}")  # fmt: skip


def plot(dataset: str, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = results["sets"]
    fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 3.8), squeeze=False)
    for ax, (kind, r) in zip(axes[0], sets.items(), strict=True):
        primary = qs.PRIMARY[kind]
        names = list(r["runs"])
        values = [r["runs"][n][primary] for n in names]
        colors = ["tab:orange" if n == r["chosen"] else "tab:blue" for n in names]
        ax.barh(names[::-1], values[::-1], color=colors[::-1])
        ax.set_title(f"{kind}: {primary} (test)")
        for y, v in enumerate(values[::-1]):
            ax.text(v, y, f" {v:.3f}", va="center", fontsize=8)
        ax.set_xlim(0, max([*values, 1e-3]) * 1.25)
    fig.suptitle(f"creator search on {dataset} (chosen fusion in orange)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def halves(
    rec, sets: list[qs.QuerySet], seed: int, n: int, near: int, grams: str, reading: str = "words"
) -> dict[str, list]:
    """Each set's validation and test halves with their retrievers' lists and which queries
    read as a name (`reading`: SearchSettings'): {kind: [(queries, lists, names), (…)]}."""
    out = {}
    for q in sets:
        out[q.kind] = []
        for half, part in zip(("validation", "test"), q.split(seed), strict=True):
            vectors = None
            if q.kind == "personal":
                part, vectors = fan_vectors(rec, part)
            say(f"{q.kind} {half}: asking the retrievers for {len(part)} queries")
            lists = ev.collect(rec.bundle.search, part, n, vectors, say, near, grams)
            names = ev.reads_as_name(rec.bundle.search, part, reading, lists)
            say(f"  {q.kind} {half}: {np.mean(names):.0%} read as a name")
            out[q.kind].append((part, lists, names))
    return out


ROUTES = ("name", "fan topic", "topic")
"""SearchSettings.route's names, one per fusion of `routed`."""


def route_masks(data: dict) -> dict[str, list[np.ndarray]]:
    """Which validation queries of each set each route of `routed` answers, as the service
    routes them (SearchSettings.route): the personal set's queries are asked with a fan."""
    masks = {route: [] for route in ROUTES}
    for kind, ((_, _, names), _) in data.items():
        taken = [SearchSettings.route(n, kind == "personal") for n in names]
        for route in ROUTES:
            masks[route].append(np.array([t == route for t in taken], bool))
    return masks


def choose_all(data: dict, candidates: int) -> tuple[dict, dict, dict]:
    """On the validation halves: each method's one setting for every query, and `routed`, a
    setting per route (a name, a topic with a fan, a topic without) chosen together; a route
    no validation query takes is left to the topic's setting."""
    val = [(q, lists, kind == "personal") for kind, ((q, lists, _), _) in data.items()]
    chosen, objective, tried = {}, {}, {}
    for method in ("rrf", "weighted"):
        say(f"choosing {method}'s constants on validation")
        chosen[method], objective[method], tried[method] = ev.choose(method, val, candidates, say)
    say("choosing a fusion per route, together")
    routes, objective["routed"], _ = ev.choose_routes(val, candidates, route_masks(data), say)
    base = routes.get("topic", chosen["rrf"])
    chosen["routed"] = replace(base, **{key: {"method": routes[r].method, "c": routes[r].c,
                                              "weights": routes[r].weights}
                                        for key, r in (("names", "name"), ("fans", "fan topic"))
                                        if r in routes})  # fmt: skip
    return chosen, objective, tried


def validation_means(data: dict, s: SearchSettings) -> np.ndarray:
    """Each set's mean primary metric on its validation half under `s`, as served (routes by
    the queries' name reading, the personal set with its fans)."""
    out = []
    for kind, ((q, lists, names), _) in data.items():
        rows = ev.fused(lists, s, 10, kind == "personal", q.exclude, names)
        out.append(ev.per_query(q, rows, ev.qrels(q)).mean())
    return np.array(out)


KEEP = 0.99
"""A faster way (int8's query encoder) is taken when its fusion keeps this share of the best
way's validation metric on every set."""


def choose_way(
    ways: dict[str, dict], candidates: int, faster: str | None = None
) -> tuple[str, dict, dict]:
    """The way of retrieving (the trigram way of search.lexical, the query encoder's
    precision) whose chosen fusion is best on validation, compared leximin on each set's
    metric over the best single retriever of any way (one yardstick for all: each way's own
    singles differ); or the `faster` way, when its fusion keeps KEEP of the best's
    validation metric on every set. Returns the way, its choice (choose_all's) and what each
    way scored."""
    picks, scored = {}, {}
    for grams, data in ways.items():
        say(f"way {grams}:")
        picks[grams] = choose_all(data, candidates)
    val = lambda data: [(q, ls, k == "personal") for k, ((q, ls, _), _) in data.items()]  # noqa: E731
    yardstick = np.max([ev.best_singles(val(d)) for d in ways.values()], axis=0)
    for grams, (chosen, objective, _) in picks.items():
        best = max(chosen, key=lambda m: objective[m])
        means = validation_means(ways[grams], chosen[best])
        per_set = dict(zip(ways[grams], means.round(4).tolist(), strict=True))
        scored[grams] = {"fusion": best, "validation": per_set,
                         "objective": list(ev.leximin(means / yardstick))}  # fmt: skip
        say(f"way {grams}: {scored[grams]}")
    way = max(scored, key=lambda g: tuple(scored[g]["objective"]))
    if faster in scored and faster != way:
        best, fast = scored[way]["validation"], scored[faster]["validation"]
        if all(fast[k] >= KEEP * best[k] for k in best):
            say(f"way {faster}: within {KEEP:.0%} of {way} on every set, and faster")
            way = faster
    return way, picks[way], scored


def ways(rec, sets: list[qs.QuerySet], args, scratch: Path) -> dict[str, dict]:
    """`halves` for each way asked: both trigram ways or both query encoder precisions
    (made as the rebuild job makes them: benchmarks/query_encoder_speed.encoders), or the one
    way the arguments give."""
    readings = args.reading.split(",")
    ask = functools.partial(halves, rec, sets, args.seed, args.candidates, args.near)
    if len(readings) > 1:  # the same lists, routed each way
        first = ask(args.grams, reading=readings[0])
        return {readings[0]: first} | {r: rerouted(rec.bundle.search, first, r)
                                       for r in readings[1:]}  # fmt: skip
    ask = functools.partial(ask, reading=readings[0])
    if args.query_precision is None:
        return {g: ask(g) for g in (GRAMS if args.grams == "choose" else (args.grams,))}
    from benchmarks.query_encoder_speed import encoders

    semantic = rec.bundle.search.semantic
    if semantic is None:
        raise SystemExit("--query_precision: this version has no semantic retriever")
    made = encoders(rec.bundle.index.folder, scratch)
    out = {}
    for precision in made if args.query_precision == "choose" else (args.query_precision,):
        semantic.encoder = made[precision]
        say(f"query encoder {precision}:")
        out[precision] = ask(args.grams)
    return out


def rerouted(engine, data: dict, reading: str) -> dict:
    """`halves`' data with each query's name reading redone by `reading` (SearchSettings')."""
    out = {kind: [(q, lists, ev.reads_as_name(engine, q, reading, lists)) for q, lists, _ in parts]
           for kind, parts in data.items()}  # fmt: skip
    for kind, ((_, _, names), _) in out.items():
        say(f"  reading {reading}: {np.mean(names):.0%} of {kind}'s validation read as a name")
    return out


def readings(text: str) -> str:
    """--reading's value: one of READINGS, or several comma-separated to choose from."""
    unknown = [r for r in text.split(",") if r not in READINGS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"{unknown}: use one or more of {READINGS}, e.g. words,fit"
        )
    return text


def served_precision(bundle) -> str:
    return (bundle.index.manifest.get("semantic") or {}).get("precision", "fp32")


def describe(s: SearchSettings, objective: tuple) -> dict:
    return {"method": s.method, "c": s.c, "weights": s.weights, "names": s.names,
            "fans": s.fans, "validation": objective}  # fmt: skip


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=sorted(SETS), required=True)
    ap.add_argument("--queries", type=int, default=1000, help="per set, before the split")
    ap.add_argument("--candidates", type=int, default=SearchSettings().candidates)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--near",
        type=int,
        default=SearchSettings().near,
        help="the fan's nearest creators the personal retriever looks in (0: off)",
    )
    ap.add_argument(
        "--grams",
        choices=[*GRAMS, "choose"],
        default=SearchSettings().grams,
        help="whose name trigrams the lexical retriever asks for (search.lexical); choose: "
        "each way's fusion chosen, then the better way on validation",
    )
    ap.add_argument(
        "--query_precision",
        choices=[*store.QUERY_PRECISIONS, "choose"],
        help="the semantic retriever's query encoder (index config query_precision) instead "
        "of the version's; choose: each one's fusion chosen, then the better on validation",
    )
    ap.add_argument(
        "--reading",
        type=readings,
        default=SearchSettings().reading,
        help=f"how a query is told to read as a name (SearchSettings.reading: {READINGS}); "
        "several, comma-separated: each way's fusions chosen, then the best on validation",
    )
    ap.add_argument(
        "--count-prior",
        action="store_true",
        help="count the popularity prior alone among the single lists the choice must beat "
        "(a diagnostic: the served choice does not)",
    )
    args = ap.parse_args()
    several = "," in args.reading
    if sum(x == "choose" for x in (args.grams, args.query_precision)) + several > 1:
        ap.error("--grams choose, --query_precision choose and several --reading: one at a time")
    return args


def label_of(args) -> str:
    """What the ways compared differ in: the query encoder's precision, the name reading, or
    (one way, or both trigram ways) the lexical retriever's trigrams."""
    if args.query_precision == "choose":
        return "query_precision"
    return "reading" if "," in args.reading else "grams"


def choose(args, by_way: dict[str, dict]) -> tuple[str, tuple, dict | None]:
    """The way evaluated on test (choose_way's, or the one way asked) and its choice
    (choose_all's: chosen, objective, tried), with what each way scored when several ran."""
    if "," in args.reading or "choose" in (args.grams, args.query_precision):
        faster = "int8" if label_of(args) == "query_precision" else None
        return choose_way(by_way, args.candidates, faster)
    way = next(iter(by_way))
    return way, choose_all(by_way[way], args.candidates), None


def test_sets(data: dict, chosen: dict, tried: dict, best: str, candidates: int, names) -> tuple:
    """Each set's test half evaluated once (report_set), printed; with the setting tuned for
    that set alone beside the chosen ones. Returns ({kind: report}, {kind: tuned setting})."""
    reports, tuned_settings = {}, {}
    for kind, (_, (q, lists, read_as_name)) in data.items():
        runs = test_runs(q, lists, chosen, 100, read_as_name)
        tuned, score = tuned_for(kind, tried, candidates)
        runs["tuned"] = ev.fused(lists, tuned, 100, kind == "personal", q.exclude)
        tuned_settings[kind] = {"method": tuned.method, "c": tuned.c, "weights": tuned.weights,
                                "validation": score}  # fmt: skip
        reports[kind] = report_set(q, runs, best, names)
        print_set(kind, reports[kind])
    return reports, tuned_settings


def output_path(args) -> Path:
    """artifacts/bench/search_quality/<dataset>[-<each argument away from its default>].json"""
    default = SearchSettings()
    deeper = "" if args.candidates == default.candidates else f"-c{args.candidates}"
    deeper += "" if args.near == default.near else f"-near{args.near}"
    deeper += "" if args.grams == default.grams else f"-grams-{args.grams}"
    deeper += f"-query-{args.query_precision}" if args.query_precision else ""
    deeper += "-count-prior" if args.count_prior else ""
    if args.reading != default.reading:
        deeper += f"-reading-{args.reading.replace(',', '-')}"
    return OUT / f"{args.dataset}{deeper}.json"


def main() -> None:
    args = parse_args()
    if args.count_prior:
        ev.NOT_SINGLE.clear()
    rec = recommender(args.dataset)
    bundle = rec.bundle
    say(f"{args.dataset}: serving {bundle.index_version}, retrievers: lexical"
        f"{', semantic' if bundle.search.semantic is not None else ''}, personal")  # fmt: skip
    catalog = qs.Catalog.of_version(bundle.index.folder)
    sets = build_sets(args.dataset, catalog, args.queries, args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        by_way = ways(rec, sets, args, Path(scratch))
    label = label_of(args)
    way, (chosen, objective, tried), scored = choose(args, by_way)
    grams = way if label == "grams" else args.grams
    precision = (
        way if label == "query_precision" else args.query_precision or served_precision(bundle)
    )
    best = max(chosen, key=lambda m: objective[m])
    results = {"dataset": args.dataset, "index_version": bundle.index_version,
               "queries_per_set": args.queries, "seed": args.seed, "candidates": args.candidates,
               "near": args.near, "grams": grams, "query_precision": precision,
               "reading": way if label == "reading" else args.reading,
               f"{label}_tried": scored,
               "chosen": {m: describe(s, objective[m]) for m, s in chosen.items()},
               "best_method": best, "grid": tried}  # fmt: skip
    results["sets"], results["tuned"] = test_sets(
        by_way[way], chosen, tried, best, args.candidates, catalog.name
    )
    out = output_path(args)
    OUT.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float))
    plot(args.dataset, results, out.with_suffix(".png"))
    print(
        f"\nchosen on validation: grams {grams}, query encoder {precision}, "
        f"reading {results['reading']}, {best} "
        f"{json.dumps(results['chosen'][best])}; wrote {out} and {out.with_suffix('.png')}"
    )


if __name__ == "__main__":
    main()
