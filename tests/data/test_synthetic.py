"""The synthetic creator platform: contract with data.schema, determinism, streaming, realism."""

from __future__ import annotations

import json
import re
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from data.schema import CREATORS, EVENT_CODE, EVENT_TYPES, ID_PATTERN, INTERACTIONS, USERS
from data.sources.synthetic import SyntheticSource, _Index

SMALL = {"num_events": 200_000, "num_users": 5_000, "num_creators": 1_000, "batch_size": 50_000}


def collect(source: SyntheticSource) -> pa.Table:
    return pa.Table.from_batches(list(source.interactions()))


@pytest.fixture(scope="module")
def source() -> SyntheticSource:
    return SyntheticSource(seed=7, **SMALL)


@pytest.fixture(scope="module")
def events(source: SyntheticSource) -> pa.Table:
    return collect(source)


@pytest.fixture(scope="module")
def joined(source: SyntheticSource, events: pa.Table) -> dict[str, np.ndarray]:
    """Per event: user and creator positions (= world indices), time fraction, type code."""
    user = pc.index_in(events["user_id"], value_set=source.users()["user_id"])
    creator = pc.index_in(events["creator_id"], value_set=source.creators()["creator_id"])
    assert user.null_count == 0 and creator.null_count == 0
    w = source.world
    ms = events["timestamp"].cast(pa.int64()).to_numpy()
    return {
        "user": user.to_numpy(),
        "creator": creator.to_numpy(),
        "frac": (ms - w.start_ms) / (w.end_ms - w.start_ms),
        "type": np.array([EVENT_CODE[e] for e in events["event_type"].to_pylist()]),
    }


def test_schemas_match_the_contract(source: SyntheticSource, events: pa.Table) -> None:
    assert source.creators().schema.equals(CREATORS)
    assert source.users().schema.equals(USERS)
    expected = [*INTERACTIONS, pa.field("_row", pa.int64())]
    assert [(f.name, f.type) for f in events.schema] == [(f.name, f.type) for f in expected]
    assert source.has_timestamps and not source.has_given_split
    assert source.estimated_rows == SMALL["num_events"]


def test_exact_rows_and_row_numbers_across_batches() -> None:
    batches = list(
        SyntheticSource(num_events=10_007, batch_size=1_000, num_users=300).interactions()
    )
    assert [b.num_rows for b in batches] == [1_000] * 10 + [7]
    rows = np.concatenate([b.column("_row").to_numpy() for b in batches])
    np.testing.assert_array_equal(rows, np.arange(10_007))
    assert list(SyntheticSource(num_events=0).interactions()) == []


def test_same_seed_same_bytes_different_seed_different_data() -> None:
    params = {**SMALL, "num_events": 30_000, "batch_size": 7_000}
    a, b, c = (SyntheticSource(seed=s, **params) for s in (3, 3, 4))
    for table in ("creators", "users"):
        assert getattr(a, table)().equals(getattr(b, table)())
        assert not getattr(a, table)().equals(getattr(c, table)())
    assert collect(a).equals(collect(b))
    assert not collect(a).equals(collect(c))


def test_nobody_acts_before_signup_and_no_creator_before_creation(
    source: SyntheticSource, events: pa.Table, joined: dict
) -> None:
    ms = events["timestamp"].cast(pa.int64()).to_numpy()
    w = source.world
    assert (ms >= w.created_ms[joined["creator"]]).all()
    assert (ms >= w.signup_ms[joined["user"]]).all()
    assert ms.min() >= w.start_ms and ms.max() < w.end_ms
    # Arrival over time is real: some creators and users only appear during the period.
    assert (w.created_ms > w.start_ms).mean() > 0.2 and (w.signup_ms > w.start_ms).mean() > 0.2
    assert (w.created_ms < w.start_ms).mean() > 0.2 and (w.signup_ms < w.start_ms).mean() > 0.2


def test_ids_are_well_formed(source: SyntheticSource) -> None:
    creators, users = source.creators()["creator_id"], source.users()["user_id"]
    assert creators[0].as_py() == "cr_0000000" and users[12].as_py() == "fan_00000012"
    assert pc.all(pc.match_substring_regex(creators, ID_PATTERN)).as_py()
    assert pc.all(pc.match_substring_regex(users, ID_PATTERN)).as_py()
    assert len(set(creators.to_pylist())) == SMALL["num_creators"]


def test_stream_is_time_ordered(source: SyntheticSource, events: pa.Table) -> None:
    ms = events["timestamp"].cast(pa.int64()).to_numpy()
    assert (np.diff(ms) >= 0).all()  # batch c covers the c-th time slice, sorted inside
    batches = list(source.interactions())
    assert len(batches) == 4 and batches[1].column("timestamp")[0].value > ms[0]


def test_popularity_is_heavy_tailed(joined: dict) -> None:
    counts = np.sort(np.bincount(joined["creator"], minlength=SMALL["num_creators"]))[::-1]
    share = counts.cumsum() / counts.sum()
    assert share[SMALL["num_creators"] // 100 - 1] > 0.10  # top 1% of creators: >10x fair share
    assert share[SMALL["num_creators"] // 10 - 1] > 0.45  # top 10%


def test_fans_stay_in_their_categories_and_communities(
    source: SyntheticSource, joined: dict
) -> None:
    w, k = source.world, source.communities_per_category
    mine = w.pref_group[joined["user"]]  # (events, 3): the fan's community in each category
    theirs = w.creator_group[joined["creator"]]
    in_category = (mine // k == (theirs // k)[:, None]).any(axis=1)
    in_community = (mine == theirs[:, None]).any(axis=1)
    assert in_category.mean() > 0.85  # 12 categories: chance alone would give ~0.2
    assert in_community[in_category].mean() > 0.7  # 4 communities each: chance ~0.25


def test_secondary_category_gains_weight_over_time(source: SyntheticSource, joined: dict) -> None:
    w, k = source.world, source.communities_per_category
    has_two = w.num_pref[joined["user"]] >= 2
    secondary = w.creator_cat[joined["creator"]] == w.pref_group[joined["user"], 1] // k
    early = secondary[has_two & (joined["frac"] < 0.25)].mean()
    late = secondary[has_two & (joined["frac"] >= 0.75)].mean()
    assert late > early + 0.1


def test_fans_come_back_to_the_same_creators(joined: dict) -> None:
    pairs = joined["user"] * SMALL["num_creators"] + joined["creator"]
    assert 1 - np.unique(pairs).size / pairs.size > 0.5  # most events repeat a (fan, creator)
    leaving = np.isin(joined["type"], [EVENT_CODE["unfollow"], EVENT_CODE["cancel"]])
    known = np.isin(pairs[leaving], pairs[~leaving])
    assert known.mean() > 0.8  # unfollows and cancels concern creators the fan engaged with


def test_event_mix(source: SyntheticSource, events: pa.Table) -> None:
    counts = dict(
        zip(
            *np.unique(events["event_type"].to_numpy(zero_copy_only=False), return_counts=True),
            strict=True,
        )
    )
    assert set(counts) == set(EVENT_TYPES)
    assert max(counts, key=counts.get) == "view"
    mix = np.array(source.event_mix) / sum(source.event_mix)
    for name, expected in zip(EVENT_TYPES, mix, strict=True):
        assert abs(counts[name] / events.num_rows - expected) < 0.01


def test_values_follow_the_event_type(source: SyntheticSource, events: pa.Table) -> None:
    kind = events["event_type"]
    value = events["value"]
    paid = pc.filter(value, pc.equal(kind, "paid_membership")).to_numpy()
    assert set(np.unique(paid)) <= set(source.tier_prices) and len(np.unique(paid)) > 1
    bought = pc.filter(value, pc.equal(kind, "purchase")).to_numpy()
    assert bought.min() >= 1.0 and bought.std() > 1.0
    other = pc.filter(value, pc.invert(pc.is_in(kind, pa.array(["paid_membership", "purchase"]))))
    assert set(np.unique(other.to_numpy())) == {1.0}


def test_catalog_is_readable(source: SyntheticSource) -> None:
    creators = source.creators()
    names = creators["name"].to_pylist()
    assert len(set(names)) == len(names) and all(re.fullmatch(r"[A-Z][\w' ]+", n) for n in names)
    assert len(set(creators["category"].to_pylist())) == 12
    tags = pc.list_value_length(creators["tags"]).to_numpy()
    assert tags.min() >= 2 and tags.max() <= 6
    descriptions = creators["description"].to_pylist()
    assert all(n in d and d.endswith(".") for n, d in zip(names, descriptions, strict=True))
    users = source.users()
    assert pc.all(pc.match_substring_regex(users["country"], r"^[A-Z]{2}$")).as_py()
    attributes = users["attributes"].to_pylist()
    assert all(a[0].startswith("age_bucket=") and a[1].startswith("plan=") for a in attributes)


def test_describe_names_every_parameter(source: SyntheticSource) -> None:
    described = source.describe()
    assert described["kind"] == "synthetic" and described["seed"] == 7
    for key in ("num_events", "num_users", "num_creators", "start", "days", "batch_size"):
        assert described[key] == getattr(source, key)
    json.dumps(described)


def test_rejects_impossible_parameters() -> None:
    with pytest.raises(ValueError):
        SyntheticSource(num_users=0)
    with pytest.raises(ValueError):
        SyntheticSource(event_mix=(1.0,))


def stream_peak(num_events: int) -> int:
    """Peak bytes held while iterating (numpy via tracemalloc, plus Arrow's own pool)."""
    source = SyntheticSource(num_events=num_events, batch_size=100_000, num_users=5_000)
    source.world  # noqa: B018 - per-entity arrays are allowed; only events must stream
    arrow_base, arrow_peak, rows = pa.total_allocated_bytes(), 0, 0
    tracemalloc.start()
    for batch in source.interactions():
        rows += batch.num_rows
        arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - arrow_base)
    numpy_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rows == num_events
    return numpy_peak + arrow_peak


def test_memory_does_not_grow_with_num_events() -> None:
    small, large = stream_peak(200_000), stream_peak(2_000_000)
    assert large < 1.25 * small  # ten times the events, the same footprint: one batch at a time
    assert large < 2_000_000 * 40 / 4  # all 2M rows would take >= 40 bytes each


def test_index_agrees_with_searchsorted() -> None:
    rng = np.random.default_rng(0)
    arrays = [
        np.cumsum(rng.pareto(1.0, 3_000)),
        np.sort(rng.integers(0, 50, 2_000)).astype(np.float64),  # long runs of ties
        np.array([5.0]),
    ]
    for a in arrays:
        x = np.concatenate([rng.uniform(a[0] - 1, a[-1] + 1, 50_000), a, np.nextafter(a, -np.inf)])
        np.testing.assert_array_equal(_Index(a).right(x), np.searchsorted(a, x, side="right"))
