"""The relevance figures (monitoring.metrics): each one against values worked by hand on a
five-answer log, and all of them against slow references (plain loops over serving's own
reading of the log, straight from each formula) on a random log with repeats, ties, unknown
creators and fans, empty and short lists."""

from __future__ import annotations

import datetime as dt
import itertools
import math

import numpy as np
import pytest

from monitoring import answers, metrics
from monitoring.catalog import Catalog
from ranking import diversity
from serving import answer_log
from tests.monitoring.helpers import DAY, T0, hand_catalog, hand_log, record, write_log

NAN = math.nan

# The hand-made log (tests/monitoring/helpers.py), worked out:
#   A1 f1 t+100 [c0 c1 c2]  A2 f2 t+200 [c0 c3] (k 3)  A3 f1 t+300 [c4 c5 cx]
#   A4 f3 t+400 [] (k 2, popular)  A5 f3 t+500 [c0 c5] (popular, degraded)
# Known slots: 3 + 2 + 2 + 0 + 2 = 9 (cx is unknown); exposure c0 3, c1 1, c2 1, c3 1, c4 1,
# c5 2, c6 0.
HAND = {
    "answers": 5,
    "fans": 3,
    "unknown_items": 1,  # cx
    "unknown_share": 1 / 10,  # of the 10 listed slots
    "empty_share": 1 / 5,  # A4
    "short_share": 2 / 5,  # A2 (2 of 3) and A4 (0 of 2)
    "cold_start_share": 2 / 5,
    "popular_share": 2 / 5,
    "degraded_share": 1 / 5,
    "coverage": 6 / 7,  # all but c6
    # exposure sorted ascending 0 1 1 1 1 2 3 (sum 9), weights 2j − 8 = −6 −4 −2 0 2 4 6:
    # Σ = −4 − 2 + 0 + 2 + 8 + 18 = 22, so Gini = 22 / 9 / (7 − 1) = 22 / 54
    "gini": 22 / 54,
    # new (first seen < 30 days before the answer): c2 (10 d), c3 (1 d), c5 (seen after it);
    # c4's time is unknown. New slots: A1 c2, A2 c3, A3 c5, A5 c5 = 4 of 9
    "new_share": 4 / 9,
    # head (20 % of 32 interactions = 6.4): c0 alone (16); tail slots: 9 − 3 (c0) = 6
    "long_tail_share": 6 / 9,
    # popularity per list: A1 (16 + 8 + 4) / 3, A2 (16 + 2) / 2, A3 (1 + 0) / 2, A5 (16 + 0) / 2
    "mean_popularity": (28 / 3 + 9 + 0.5 + 8) / 4,
    # log2(16 / k): c0 0, c1 1, c2 2, c3 3, c4 4, c5 (k 0 → 1) 4; per list 1, 1.5, 4, 2
    "novelty": (1 + 1.5 + 4 + 2) / 4,
    # 1 − cos per pair: A1 (c0c1 1, c0c2 0, c1c2 1) → 2/3; A2 c0·c3 = −1 → 2;
    # A3 c4·c5 = −0.8 → 1.8; A5 c0·c5 = 0 → 1
    "intra_list_diversity": (2 / 3 + 2 + 1.8 + 1) / 4,
    # latest lists: f1 A3 {c4 c5}, f2 A2 {c0 c3}, f3 A5 {c0 c5} (A4 is empty);
    # 1 − shared / 2: f1f2 1, f1f3 0.5, f2f3 0.5
    "personalisation": (1 + 0.5 + 0.5) / 3,
    # A1: p = (½, ½, 0), q = (⅔, ⅓, 0), q̃ = 0.99 q + 0.01 p = (0.665, 0.335, ·):
    #     ½ ln(0.5 / 0.665) + ½ ln(0.5 / 0.335)
    # A2: p = (0, 0, 1), q = (½, ½, 0), q̃(2) = 0.01: ln 100
    # A3: p = (½, ½, 0), q = (0, 0, 1), q̃ = (0.005, 0.005, ·): ½ ln 100 + ½ ln 100 = ln 100
    # A5 is f3's, who has no history
    "calibration_kl": (
        0.5 * math.log(0.5 / 0.665) + 0.5 * math.log(0.5 / 0.335) + 2 * math.log(100)
    )
    / 3,
    # model answers' scores, sorted: .1 .2 .3 .4 .5 .7 .8 .9 (n 8); type 7 at h = 7q:
    # p05 h .35 → .1 + .35 × .1; p25 h 1.75 → .2 + .75 × .1; p50 h 3.5 → .4 + .5 × .1;
    # p75 h 5.25 → .7 + .25 × .1; p95 h 6.65 → .8 + .65 × .1; mean 3.9 / 8
    "score_p05": 0.135,
    "score_p25": 0.275,
    "score_p50": 0.45,
    "score_p75": 0.725,
    "score_p95": 0.865,
    "score_mean": 3.9 / 8,
    # later: (f1 c1 ∞) hit by A1; (f1 c5 t+250) eligible (A1 before) but c5 came at t+300:
    # miss; (f2 c3 t+150) before f2's first answer: not counted; (f2 c2 t+250) miss;
    # (f3 c0 t+600) hit by A5; (f9 …) never served; (f1 cz) not in the catalog; (f1 c0 t+100)
    # at the same moment as f1's first answer, not after it: not counted. 2 hits of 4
    "online_recall": 2 / 4,
    "later_interactions": 4,
}


@pytest.fixture
def hand(tmp_path) -> tuple[answers.Answers, Catalog]:
    catalog = hand_catalog()
    return answers.read(write_log(tmp_path / "answers.arrows", hand_log()), catalog), catalog


def test_every_figure_of_the_hand_made_log_is_the_one_worked_by_hand(hand):
    got = metrics.compute(*hand)
    assert list(got) == list(metrics.FIGURES)
    assert got == pytest.approx(HAND, rel=1e-6, abs=1e-6)  # scores are logged to 6 places
    assert hand[1].later.dropped == 1  # (f1, cz)


def test_the_short_head_is_the_smallest_set_that_makes_its_share(hand):
    a, catalog = hand
    # 60 % of 32 = 19.2: c0 (16) is short of it, so c1 (8) joins; c2 is past it
    assert np.flatnonzero(metrics.head(catalog, 0.6)).tolist() == [0, 1]
    assert metrics.long_tail_share(a, catalog, 0.6) == pytest.approx(5 / 9)  # 9 − 3 − 1
    # a year counts c0 (100 days) and c1 (40 days) new too, not c6 (400 days) nor c4: 8 of 9
    assert metrics.new_share(a, catalog, new_days=365) == pytest.approx(8 / 9)
    assert metrics.new_share(a, catalog, new_days=2) == pytest.approx(3 / 9)  # c3, c5 twice
    # c3 (first seen a day before t) at A2 (t + 200 s) is exactly new_days old: not new
    assert metrics.new_share(a, catalog, new_days=86_600 / DAY) == pytest.approx(2 / 9)
    # 100 days and 500 s: c0 (100 days before t) is new at A1 and A2, and exactly that old at
    # A5 (t + 500 s), so not new there; c1, c2, c3 and c5 are new wherever listed: 7 of 9
    assert metrics.new_share(a, catalog, new_days=8_640_500 / DAY) == pytest.approx(7 / 9)


def test_a_fans_latest_list_is_the_last_logged_of_its_time(tmp_path):
    records = [
        record(T0 + 5, "f1", ["c1"]),
        record(T0 + 9, "f1", ["c2"]),
        record(T0 + 9, "f1", ["c3"]),  # the same moment as the one before: logged after it
        record(T0 + 7, "f1", ["c4"]),  # logged later, answered earlier
        record(T0 + 9, "f2", ["cx"]),  # nothing the catalog holds: no list
        record(T0 + 1, "f2", ["c0"]),
    ]
    a = answers.read(write_log(tmp_path / "answers.arrows", records), hand_catalog())
    assert metrics.latest_lists(a).tolist() == [2, 5]


def test_calibration_is_the_rank_stages_kl():
    """ranking.diversity.kl is the same formula, one list at a time: A2's figure by both."""
    p, q = np.array([0.0, 0.0, 1.0]), diversity.history_mix(np.array([0, 1]), 3)
    assert diversity.kl(p, q) == pytest.approx(math.log(100))


def test_an_empty_log_has_counts_of_zero_and_no_figures(tmp_path):
    empty = answers.read(write_log(tmp_path / "answers.arrows", []))
    got = metrics.compute(empty, hand_catalog())
    assert got["answers"] == got["fans"] == got["unknown_items"] == 0
    assert got["later_interactions"] == 0
    counted = ("answers", "fans", "unknown_items", "later_interactions")
    assert all(math.isnan(v) for k, v in got.items() if k not in counted)


def test_a_planted_popularity_bias_moves_the_exposure_figures(tmp_path):
    """Lists drawn towards the popular end raise Gini and popularity, lower coverage, the
    tail's share and novelty."""
    rng = np.random.default_rng(3)
    catalog = random_catalog(rng, creators=200)
    order = np.argsort(-catalog.popularity, kind="stable")
    figures = []
    for weights in (np.ones(200), 1.0 / (1 + np.arange(200)) ** 2):
        records = []
        for i in range(300):
            rows = rng.choice(order, 10, replace=False, p=weights / weights.sum())
            records.append(record(T0 + i, f"f{i % 40}", catalog.creator_ids[rows].tolist()))
        log = write_log(tmp_path / f"bias{len(figures)}.arrows", records)
        figures.append(metrics.compute(answers.read(log), catalog))
    fair, biased = figures
    assert biased["gini"] > fair["gini"] + 0.2
    assert biased["mean_popularity"] > fair["mean_popularity"]
    assert biased["coverage"] < fair["coverage"] and biased["novelty"] < fair["novelty"]
    assert biased["long_tail_share"] < fair["long_tail_share"]


# ---- the slow references: plain loops over serving.answer_log.read's dicts ----------------


def ref_figures(records, catalog: Catalog, raw: dict, new_days=30.0, head_share=0.2) -> dict:
    """Every figure by the plain loops below; `raw` holds the catalog's inputs as given."""
    row = {c: i for i, c in enumerate(catalog.creator_ids)}
    lists = [[row[c] for c in r["items"] if c in row] for r in records]
    ts = [dt.datetime.fromisoformat(r["ts"]).timestamp() for r in records]
    return {
        **ref_counts(records, row),
        **ref_exposure(lists, ts, raw, new_days, head_share),
        **ref_per_list(lists, raw),
        "personalisation": ref_personalisation(records, lists, ts),
        "calibration_kl": ref_calibration(records, lists, raw),
        **ref_scores(records),
        **ref_recall(records, lists, ts, raw, row),
    }


def ref_counts(records, row) -> dict:
    n = len(records)
    listed = sum(len(r["items"]) for r in records)
    unknown = sum(c not in row for r in records for c in r["items"])
    asked = [r for r in records if "k" in r["request"]]
    return {
        "answers": n,
        "fans": len({r["request"].get("user_id") for r in records} - {None}),
        "unknown_items": unknown,
        "unknown_share": share(unknown, listed),
        "empty_share": share(sum(not r["items"] for r in records), n),
        "short_share": share(sum(len(r["items"]) < r["request"]["k"] for r in asked), len(asked)),
        "cold_start_share": share(sum(r["cold_start"] for r in records), n),
        "popular_share": share(sum(r["source"] == "popular" for r in records), n),
        "degraded_share": share(sum(r["degraded"] is not None for r in records), n),
    }


def share(part, whole) -> float:
    return part / whole if whole else NAN


def ref_exposure(lists, ts, raw, new_days, head_share) -> dict:
    pop, first = raw["popularity"], raw["first_seen"]
    count = [0] * len(pop)
    for items in lists:
        for c in items:
            count[c] += 1
    e = sorted(count)
    size, total, slots = len(e), sum(e), sum(len(x) for x in lists)
    gini = sum((2 * j - size - 1) * e[j - 1] / total for j in range(1, size + 1)) / (size - 1)
    new = sum(
        t - first[c] < new_days * DAY for items, t in zip(lists, ts, strict=True) for c in items
    )
    head, before = set(), 0
    for c in sorted(range(size), key=lambda c: (-pop[c], c)):
        if before < head_share * sum(pop):
            head.add(c)
        before += pop[c]
    tail = sum(c not in head for items in lists for c in items)
    return {
        "coverage": sum(x > 0 for x in count) / size,
        "gini": gini,
        "new_share": new / slots,  # a NaN first-seen time compares False: not new
        "long_tail_share": tail / slots,
    }


def ref_per_list(lists, raw) -> dict:
    pop, vectors, users = raw["popularity"], raw["unit"], raw["num_users"]
    arp = [sum(pop[c] for c in x) / len(x) for x in lists if x]
    nov = [sum(math.log2(users / max(pop[c], 1)) for c in x) / len(x) for x in lists if x]
    ild = []
    for x in lists:
        if len(x) >= 2:
            pairs = [(i, j) for i in range(len(x)) for j in range(len(x)) if i != j]
            distance = sum(1 - float(np.dot(vectors[x[i]], vectors[x[j]])) for i, j in pairs)
            ild.append(distance / len(pairs))
            assert ild[-1] == pytest.approx(diversity.intra_list_diversity(vectors[x]), abs=1e-9)
    return {
        "mean_popularity": np.mean(arp),
        "novelty": np.mean(nov),
        "intra_list_diversity": np.mean(ild) if ild else NAN,
    }


def ref_latest(records, lists, ts) -> list[list[int]]:
    """Each fan's latest list with a known creator, in the log order of those lists."""
    latest = {}
    for _, pos in sorted((t, pos) for pos, t in enumerate(ts)):
        fan = records[pos]["request"].get("user_id")
        if fan is not None and lists[pos]:
            latest[fan] = pos
    return [lists[pos] for pos in sorted(latest.values())]


def ref_personalisation(records, lists, ts, pairs=None) -> float:
    latest = ref_latest(records, lists, ts)
    pairs = itertools.combinations(range(len(latest)), 2) if pairs is None else pairs
    h = [
        1 - len(set(latest[i]) & set(latest[j])) / min(len(set(latest[i])), len(set(latest[j])))
        for i, j in pairs
    ]
    return float(np.mean(h)) if h else NAN


def ref_calibration(records, lists, raw) -> float:
    category, g = raw["category"], raw["num_categories"]
    history = {}
    for fan, c in zip(*raw["history"], strict=True):
        history.setdefault(fan, []).append(c)
    kls = []
    for r, items in zip(records, lists, strict=True):
        mine = history.get(r["request"].get("user_id"))
        if not mine or not items:
            continue
        p = [mine.count(x) / len(mine) for x in range(g)]
        q = [sum(category[c] == x for c in items) / len(items) for x in range(g)]
        kls.append(
            sum(p[x] * math.log(p[x] / (0.99 * q[x] + 0.01 * p[x])) for x in range(g) if p[x])
        )
    return float(np.mean(kls)) if kls else NAN


def ref_scores(records) -> dict:
    s = sorted(x for r in records if r["source"] == "model" for x in r["scores"])
    out = {"score_mean": sum(s) / len(s)}
    for q in metrics.QUANTILES:  # Hyndman & Fan's type 7, by hand
        h = (len(s) - 1) * q
        lo = math.floor(h)
        hi = min(lo + 1, len(s) - 1)
        out[f"score_p{round(q * 100):02d}"] = s[lo] + (h - lo) * (s[hi] - s[lo])
    return out


def ref_recall(records, lists, ts, raw, row) -> dict:
    hits = eligible = 0
    for fan, creator, t in zip(*raw["later"], strict=True):
        if creator not in row:
            continue
        earlier = [p for p, r in enumerate(records) if r["request"].get("user_id") == fan]
        earlier = [p for p in earlier if ts[p] < t]
        if earlier:
            eligible += 1
            hits += any(row[creator] in lists[p] for p in earlier)
    return {"online_recall": hits / eligible if eligible else NAN, "later_interactions": eligible}


# ---- a random log against the references ---------------------------------------------------


def random_catalog(rng, creators=40, fans=12, categories=5, dim=3) -> Catalog:
    return catalog_of(random_raw(rng, creators, fans, categories, dim))


def catalog_of(raw: dict) -> Catalog:
    return Catalog.build(
        raw["ids"],
        raw["popularity"],
        raw["first_seen"],
        raw["category"],
        raw["vectors"],
        num_users=raw["num_users"],
        num_categories=raw["num_categories"],
        history=raw["history"],
        later=raw["later"],
    )


def random_raw(rng, creators, fans, categories, dim) -> dict:
    ids = np.array([f"cr{i:03d}" for i in range(creators)])
    fan_ids = [f"fan{i}" for i in range(fans)]
    first_seen = T0 - rng.uniform(-5, 90, creators) * DAY
    first_seen[rng.random(creators) < 0.1] = np.nan
    vectors = rng.standard_normal((creators, dim))
    history = [
        (f, int(rng.integers(categories)))
        for f in fan_ids[: fans - 3]
        for _ in range(rng.integers(1, 6))
    ]
    later_fans = [fan_ids[i] for i in rng.integers(0, fans, 80)] + ["never", "never"]
    later_creators = [*ids[rng.integers(0, creators, 80)].tolist(), "cr000", "zz"]
    later_ts = T0 + rng.uniform(0, 4000, 82)
    later_ts[rng.random(82) < 0.2] = np.inf
    return {
        "ids": ids,
        "popularity": rng.integers(0, 30, creators),
        "first_seen": first_seen,
        "category": rng.integers(0, categories, creators),
        "num_categories": categories,
        "vectors": vectors,
        "unit": vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
        "num_users": 50,
        "fan_ids": fan_ids,
        "history": ([f for f, _ in history], [c for _, c in history]),
        "later": (later_fans, later_creators, later_ts),
    }


def random_records(rng, raw, n=240) -> list[dict]:
    """Answers with ties in time, unknown creators, empty and short lists, /similar answers
    (no fan) and popular fallbacks."""
    out = []
    for i in range(n):
        size = int(rng.integers(0, 9))
        items = rng.choice(raw["ids"], size, replace=False).tolist()
        if size and rng.random() < 0.15:
            items[-1] = f"zz{i % 4}"
        fan = raw["fan_ids"][rng.integers(len(raw["fan_ids"]))] if rng.random() < 0.9 else None
        popular = rng.random() < 0.2
        out.append(
            record(
                T0 + float(rng.integers(0, 3000)),
                fan,
                items,
                np.sort(rng.random(size))[::-1],
                k=int(rng.integers(1, 9)),
                route="recommend" if fan else "similar",
                source="popular" if popular else "model",
                cold_start=popular,
                degraded="user_tower_in_process" if rng.random() < 0.1 else None,
            )
        )
    return out


@pytest.fixture(params=[0, 1, 2])
def random_log(request, tmp_path):
    rng = np.random.default_rng(request.param)
    raw = random_raw(rng, creators=40, fans=12, categories=5, dim=3)
    catalog = catalog_of(raw)
    path = write_log(tmp_path / "answers.arrows", random_records(rng, raw))
    return answers.read(path, catalog), catalog, list(answer_log.read(path)), raw


def test_every_figure_matches_its_slow_reference_on_random_logs(random_log):
    a, catalog, records, raw = random_log
    got = metrics.compute(a, catalog, pairs=10**9, diversity_lists=None)
    want = ref_figures(records, catalog, raw)
    assert want["unknown_items"] > 0 and want["empty_share"] > 0 and want["short_share"] > 0
    assert want["later_interactions"] > 0
    for name in metrics.FIGURES:
        assert got[name] == pytest.approx(want[name], rel=1e-6, abs=1e-9, nan_ok=True), name


def test_sampled_pairs_and_lists_are_the_references_on_the_same_sample(random_log):
    a, catalog, records, _ = random_log
    ts = [dt.datetime.fromisoformat(r["ts"]).timestamp() for r in records]
    row = {c: i for i, c in enumerate(catalog.creator_ids)}
    lists = [[row[c] for c in r["items"] if c in row] for r in records]
    latest = ref_latest(records, lists, ts)
    i, j = metrics.fan_pairs(len(latest), 20, seed=5)
    assert len(i) == 20 and (i != j).all()
    got = metrics.personalisation(a, catalog, pairs=20, seed=5)
    assert got == pytest.approx(ref_personalisation(records, lists, ts, zip(i, j, strict=True)))
    exact = metrics.intra_list_diversity(a, catalog, lists=None)
    sampled = metrics.intra_list_diversity(a, catalog, lists=60, seed=1)
    assert sampled != exact and sampled == pytest.approx(exact, abs=0.1)
