"""Reading the service's answer log into columns (monitoring.answers), against serving's own
reader (serving.answer_log.read, one dict per line) as the slow reference."""

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
    """The real AnswerLog writer with 1 KB files: it rotates into .1 .. .3, and the columns
    hold what serving's line reader finds, oldest first."""
    path = tmp_path / "log" / "answers.jsonl"
    log = answer_log.AnswerLog(path, max_bytes=1024, backups=3)
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
    assert len(got.files) == 4 and got.files[-1] == path  # rotated, the live file last
    assert 0 < len(records) < 40  # the oldest rotated away
    assert [r["request"]["user_id"] for r in records][-1] == "fan_4"  # 39 % 7: the last kept
    assert_matches_records(got, records)
    assert got.bad_lines == 0


def test_lists_of_different_lengths_are_padded(tmp_path):
    records = [
        record(T0, "a", ["x", "y", "z"], [0.5, 0.25, 0.125]),
        record(T0 + 1, "b", []),
        record(T0 + 2, "a", ["y"], [0.75]),
    ]
    got = answers.read(write_log(tmp_path / "answers.jsonl", records))
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
    got = answers.read(write_log(tmp_path / "answers.jsonl", hand_log()), hand_catalog())
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
    got = answers.read(write_log(tmp_path / "answers.jsonl", hand_log()))
    assert got.items is None and len(got) == 5
    with pytest.raises(ValueError, match=r"bind\(catalog\)"):
        got.unknown  # noqa: B018 (a property: reading it is the test)


def test_an_empty_log_is_zero_answers_and_a_missing_one_a_clear_error(tmp_path):
    empty = answers.read(write_log(tmp_path / "answers.jsonl", []), hand_catalog())
    assert len(empty) == 0 and empty.item_codes.shape[0] == 0 and empty.unknown == 0
    with pytest.raises(MissingInputError, match=r"--answer_log.path .*nowhere.jsonl"):
        answers.read(tmp_path / "nowhere.jsonl")


def test_lines_that_are_not_answers_are_counted_and_the_rest_read(tmp_path):
    """A write cut short in the middle of a rotated file, and lines without a time or a
    list: each counted in bad_lines, every good line still read."""
    good = hand_log()
    older = write_log(tmp_path / "answers.jsonl.1", good[:2], tail=b'{"ts":"2001-09-09T01:5')
    with open(older, "ab") as f:
        f.write(b"\n" + (b'{"ts":"yesterday","items":["c0"]}\n') + b'{"route":"recommend"}\n')
    write_log(tmp_path / "answers.jsonl", good[2:], tail=b"[1, 2]\n")
    got = answers.read(tmp_path / "answers.jsonl")
    assert got.bad_lines == 4  # the cut line, the bad time, the line without a list, [1, 2]
    assert_matches_records(got, good)


def test_a_line_still_being_written_is_left_for_the_next_read(tmp_path):
    """The live file's last line without its newline (the service is writing it): not read
    and counted, the lines before it read on the fast path."""
    path = write_log(tmp_path / "answers.jsonl", hand_log(), tail=b'{"ts":"2001-09-09T01:4')
    got = answers.read(path)
    assert got.bad_lines == 1
    assert_matches_records(got, hand_log())
