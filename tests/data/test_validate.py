"""Validation with quarantine: every kind of bad row, each reason, and exact reconciliation."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import config
from data import manifest
from data.config import PrepareConfig
from data.prepare import prepare
from data.validate import InputError, validate

HEADER = "user_id,creator_id,event_type,timestamp,value\n"
GOOD = [
    "fan1,cr1,follow,2024-01-02T10:00:00Z,1",
    "fan1,cr2,paid_membership,2024-01-03T10:00:00Z,5",
    "fan2,cr1,view,1704200000,1",
    "fan2,cr2,purchase,2024-02-01 08:00:00,12.5",
    "fan3,cr1,like,2024-03-01,1",
    "fan3,cr2,follow,2024-03-02T00:00:00+02:00,1",
]
# (line, reason) — the line's text, and the reason it must be quarantined with.
BAD = [
    ("fan4,cr1,follow,2024-01-02T10:00:00Z", "malformed_row"),  # a field short
    ("fan4,cr1,follow,2024-01-02T10:00:00Z,1,extra", "malformed_row"),
    ("fan4,cr1,,2024-01-02T10:00:00Z,1", "missing_field"),  # no event type
    ("fan4,cr1,follow,,1", "missing_field"),  # no timestamp
    ("fan4,cr1,follow,2024-01-02T10:00:00Z,", "missing_field"),  # no value
    ("fan4,cr1,follow,yesterday,1", "wrong_type"),
    ("fan4,cr1,follow,2024-01-02T10:00:00Z,lots", "wrong_type"),  # non-numeric value
    ("fan4,cr1,follow,2024-01-02T10:00:00Z,nan", "wrong_type"),
    ("fan4,cr1,poke,2024-01-02T10:00:00Z,1", "unknown_event_type"),
    ("fan4,cr1,purchase,2024-01-02T10:00:00Z,-4.5", "negative_value"),
    ("fan4,cr1,follow,2031-01-01T00:00:00Z,1", "future_timestamp"),
    (",cr1,follow,2024-01-02T10:00:00Z,1", "malformed_id"),  # empty id
    ("fan 4,cr1,follow,2024-01-02T10:00:00Z,1", "malformed_id"),  # space in id
    ("fan4,cr!1,follow,2024-01-02T10:00:00Z,1", "malformed_id"),
    ("fan4,cr99,follow,2024-01-02T10:00:00Z,1", "unknown_creator"),  # not in the catalog
    (GOOD[0], "duplicate"),  # exact copy of the first good row
]
BAD_BYTES = b"fan\xff5,cr1,follow,2024-01-02T10:00:00Z,1\n"  # not UTF-8
CREATORS = (
    "creator_id,name,category,tags,description,created_at\n"
    "cr1,Ink and Ember,illustration,ink|fantasy,Fantasy ink drawings,2023-01-01T00:00:00Z\n"
    "cr2,Night Bus Radio,podcasts,comedy|talk,A late-night talk show,2023-02-01\n"
    "cr2,Night Bus Radio (copy),podcasts,,,2023-02-01\n"  # duplicate catalog id
    "cr3,,music,,,tomorrow-ish\n"  # unparseable created_at
)


@pytest.fixture
def bad_logs(tmp_path):
    (tmp_path / "interactions.csv").write_bytes(
        (HEADER + "\n".join(GOOD + [line for line, _ in BAD]) + "\n").encode() + BAD_BYTES
    )
    (tmp_path / "creators.csv").write_text(CREATORS)
    return tmp_path


def test_every_bad_row_is_quarantined_with_its_reason_and_counts_reconcile(bad_logs, tmp_path):
    cfg = config.load(
        PrepareConfig,
        values={
            "name": "bad",
            "output": str(tmp_path / "out"),
            "source": {
                "kind": "csv",
                "interactions_path": str(bad_logs / "interactions.csv"),
                "creators_path": str(bad_logs / "creators.csv"),
            },
            "split": {"kind": "per_user", "test_fraction": 0.5},
            "shards": {"record_size": 1, "num_shards": 8},
            "reference_time": "2026-01-01T00:00:00Z",
        },
    )
    out = prepare(cfg, progress=False)
    q = pq.read_table(out / "quarantine.parquet").to_pylist()
    inter = {r["source_row"]: r for r in q if r["table"] == "interactions"}
    first_bad_line = 2 + len(GOOD)  # line 1 is the header
    for offset, (text, reason) in enumerate(BAD):
        row = inter.get(first_bad_line + offset)
        assert row is not None, f"line {first_bad_line + offset} ({text!r}) not quarantined"
        assert row["reason"] == reason, (text, row)
        assert row["raw"]
    encoding = inter[first_bad_line + len(BAD)]
    assert encoding["reason"] == "bad_encoding"
    assert "\\xff" in encoding["raw"]  # the bytes are kept, escaped
    assert inter[first_bad_line + len(BAD) - 1]["detail"] == "duplicate of source row 2"

    m = manifest.load(out, verify=True)
    counts = m["counts"]["interactions"]
    assert counts["in"] == len(GOOD) + len(BAD) + 1
    assert counts["accepted"] == len(GOOD)
    assert counts["quarantined"] == len(BAD) + 1
    assert counts["in"] == counts["accepted"] + counts["quarantined"]
    creators = m["counts"]["creators"]
    assert creators == {"in": 4, "accepted": 2, "quarantined": 2}
    reasons = {r["reason"] for r in q if r["table"] == "creators"}
    assert reasons == {"duplicate", "wrong_type"}
    assert sum(m["counts"]["quarantine_by_reason"].values()) == len(q)


def test_typed_batch_checks_without_parsing():
    batch = pa.table(
        {
            "user_id": ["a1", "a2", "bad id", "a3"],
            "creator_id": ["c1", "c1", "c1", "c1"],
            "event_type": ["follow", "follow", "follow", "like"],
            "timestamp": pa.array([1_000, 2_000, 3_000, None], pa.timestamp("ms", tz="UTC")),
            "value": pa.array([1.0, -1.0, 1.0, 1.0], pa.float32()),
            "_row": pa.array([10, 11, 12, 13], pa.int64()),
        }
    )
    result = validate(batch, "interactions", now_ms=10_000)
    assert result.accepted.column("_row").to_pylist() == [10]
    got = dict(
        zip(
            result.quarantined.column("source_row").to_pylist(),
            result.quarantined.column("reason").to_pylist(),
            strict=True,
        )
    )
    assert got == {11: "negative_value", 12: "malformed_id", 13: "missing_field"}
    raw = json.loads(result.quarantined.column("raw")[0].as_py())
    assert raw["user_id"] == "a2"
    # Without timestamps (a source that has none), a null time is fine.
    relaxed = validate(batch, "interactions", now_ms=10_000, timestamps_required=False)
    assert 13 in relaxed.accepted.column("_row").to_pylist()


def test_missing_column_is_a_clear_error():
    batch = pa.table({"user_id": ["a"], "creator": ["c"]})
    with pytest.raises(InputError, match=r"columns \['creator_id', .*not found.*columns are"):
        validate(batch, "interactions", now_ms=0)


def test_csv_without_a_required_column_names_it(tmp_path):
    (tmp_path / "i.csv").write_text("user_id,creator,event_type,timestamp,value\n")
    from data.sources.files import CsvSource

    with pytest.raises(ValueError, match=r"creator_id.*not found in the header"):
        list(CsvSource(interactions_path=str(tmp_path / "i.csv")).interactions())


def test_catalog_duplicates_are_only_the_later_copies():
    from data.prepare import first_occurrence

    keys = pa.array(["a", "b", "a", "c", "b", "d"])
    assert first_occurrence(keys).tolist() == [True, True, False, True, False, True]
