"""Reading the service's answer log into columns (monitoring.answers), against serving's own
reader (serving.answer_log.read, one dict per answer) as the slow reference."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest

from common.errors import MissingInputError
from monitoring import answers
from serving import answer_log
from serving.pipeline.stages import Answer, default_pipeline
from tests.monitoring.helpers import T0, hand_catalog, hand_log, record, write_log


def assert_matches_records(got: answers.Answers, records: list[dict]) -> None:
    """Every column of `got` against the records, one at a time, in plain Python."""
    assert len(got) == len(records)
    for i, r in enumerate(records):
        assert got.ts[i] == pytest.approx(dt.datetime.fromisoformat(r["ts"]).timestamp(), abs=1e-6)
        for label in ("route", "model_version", "index_version", "source", "degraded"):
            assert getattr(got, label)[i] == r[label]
        assert got.cold_start[i] == r["cold_start"]
        fan = r["request"].get("user_id")
        assert (got.fan_ids[got.fan[i]] if got.fan[i] >= 0 else None) == fan
        assert got.k[i] == r["request"].get("k", -1)
        n = len(r["items"])
        assert got.lengths[i] == n
        assert [got.creator_ids[c] for c in got.item_codes[i, :n]] == r["items"]
        assert (got.item_codes[i, n:] == -1).all()
        assert np.allclose(got.scores[i, :n], r["scores"]) and np.isnan(got.scores[i, n:]).all()
        for stage in answers.STAGES:  # a stage the answer was not timed in is NaN
            want = r["timings"].get(stage, math.nan)
            assert got.timings[stage][i] == pytest.approx(want, nan_ok=True)
        assert got.batch[i] == r["timings"]["batch"]


def test_stages_are_the_services_pipeline_stages():
    assert tuple(s.name for s in default_pipeline(None).stages) == answers.STAGES


def test_a_rotated_log_reads_back_in_order_as_serving_reads_it(tmp_path):
    """The real AnswerLog writer with 4 KB files and 3-answer batches: it rotates into .1 ..
    .3, and the columns hold what serving's reader finds, oldest first."""
    path = tmp_path / "log" / "answers.arrows"
    log = answer_log.AnswerLog(path, max_bytes=4096, backups=3, batch_rows=3)
    for i in range(40):
        items = [f"cr_{(i + j) % 23}" for j in range(i % 6)]  # lengths 0..5
        answer = Answer(
            items,
            [1.0 / (j + 1) for j in range(len(items))],
            "model",
            timings={"lookup": 0.001 * i, "encode": 0.002, "batch": 1 + i % 3},
        )
        log.offer(
            "recommend",
            {"user_id": f"fan_{i % 7}", "k": 5},
            answer,
            {"model_version": "m", "index_version": f"v{i // 20}"},
        )
    log.close()
    records = list(answer_log.read(path))
    got = answers.read(path)
    olds = [answer_log.rotated(path, i) for i in (3, 2, 1)]
    assert got.files[:3] == tuple(olds) and got.files[3:] in ((), (path,))  # the live file last
    assert 0 < len(records) < 40  # the oldest rotated away
    assert [r["request"]["user_id"] for r in records][-1] == "fan_4"  # 39 % 7: the last kept
    assert_matches_records(got, records)
    assert got.torn == 0


def test_lists_of_different_lengths_are_padded(tmp_path):
    records = [
        record(T0, "a", ["x", "y", "z"], [0.5, 0.25, 0.125]),
        record(T0 + 1, "b", []),
        record(T0 + 2, "a", ["y"], [0.75]),
    ]
    got = answers.read(write_log(tmp_path / "answers.arrows", records))
    assert got.item_codes.shape == got.scores.shape == (3, 3)
    ids = got.creator_ids
    assert [[ids[c] if c >= 0 else None for c in row] for row in got.item_codes] == [
        ["x", "y", "z"],
        [None, None, None],
        ["y", None, None],
    ]
    assert got.lengths.tolist() == [3, 0, 1]
    np.testing.assert_array_equal(got.scores[2], [0.75, np.nan, np.nan])
    assert got.fan_ids[got.fan].tolist() == ["a", "b", "a"]
    assert_matches_records(got, records)


def test_creators_the_catalog_lacks_are_counted_not_lost(tmp_path):
    got = answers.read(write_log(tmp_path / "answers.arrows", hand_log()), hand_catalog())
    # the third answer lists c4, c5 and cx; the catalog holds c0..c6
    assert got.unknown == 1 and got.unknown_ids() == ["cx"]
    assert got.items[2].tolist() == [4, 5, -1] and got.lengths[2] == 3 and got.sizes[2] == 2
    assert got.items[0].tolist() == [0, 1, 2]
    # f1 and f2 have histories, f3 has none
    assert got.fan_rows.tolist() == [0, 1, 0, -1, -1]
    subset = got.take(got.fan_ids[got.fan] == "f1")
    assert len(subset) == 2 and subset.unknown == 1 and subset.catalog is got.catalog
    np.testing.assert_array_equal(subset.items, got.items[[0, 2]])
    np.testing.assert_array_equal(subset.scores, got.scores[[0, 2]])  # A1's, A3's: 3 each
    assert subset.score_values.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    none = got.take(np.zeros(len(got), bool))
    assert len(none) == 0 and len(none.score_values) == 0 and none.unknown == 0


def test_an_unbound_log_says_so(tmp_path):
    got = answers.read(write_log(tmp_path / "answers.arrows", hand_log()))
    assert got.items is None and len(got) == 5
    with pytest.raises(ValueError, match=r"bind\(catalog\)"):
        got.unknown  # noqa: B018 (a property: reading it is the test)


def test_an_empty_log_is_zero_answers_and_a_missing_one_a_clear_error(tmp_path):
    empty = answers.read(write_log(tmp_path / "answers.arrows", []), hand_catalog())
    assert len(empty) == 0 and empty.item_codes.shape[0] == 0 and empty.unknown == 0
    with pytest.raises(MissingInputError, match=r"--answer_log.path .*nowhere.arrows"):
        answers.read(tmp_path / "nowhere.arrows")


def test_torn_batches_are_counted_and_the_rest_read(tmp_path):
    """A write cut short at the end of a rotated file (a service killed mid-batch), and the live
    file's batch still being written: each counted in `torn`, every whole batch still read."""
    good = hand_log()
    write_log(tmp_path / "answers.arrows.1", good[:2], torn=good[2:4])
    path = write_log(tmp_path / "answers.arrows", good[2:], torn=good[:1])
    got = answers.read(path)
    assert got.torn == 2
    assert_matches_records(got, good)
    assert list(answer_log.read(path)) == good


def test_workers_logs_read_as_one_timeline(tmp_path):
    """Two workers' logs beside the configured path, one only rotated files: merged by time,
    each one's order kept."""
    log = hand_log()
    path = tmp_path / "answers.arrows"
    write_log(answer_log.worker_path(path, 0), [log[0], log[2], log[3]])
    # worker 1's live file has just rotated away: its log is its rotated file alone
    write_log(answer_log.rotated(answer_log.worker_path(path, 1), 1), [log[1], log[4]])
    got = answers.read(path)
    assert [p.name for p in got.files] == ["answers.w0.arrows", "answers.w1.arrows.1"]
    assert_matches_records(got, log)
    tied = [record(T0, "a", ["x"]), record(T0, "b", ["y"]), record(T0 - 1, "c", ["z"])]
    write_log(path, tied)  # a single process's log too, listed first
    got = answers.read(path)
    assert len(got) == 8 and got.fan_ids[got.fan[:3]].tolist() == ["c", "a", "b"]  # stable
