"""Tests of the public-dataset sources (data/sources/public.py).

The real datasets live outside the repo (../shared/datasets beside the clone, or wherever
TOWERLINE_DATASETS points); tests that need one skip when its folder is absent. The rejects and
missing-file tests build their own small folders and always run.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from data.schema import CREATORS, INTERACTIONS, REASONS, SOURCE_ROW_COLUMN, SPLIT_COLUMN, USERS
from data.sources.base import Source
from data.sources.public import BATCH_ROWS, LastFmSource, LightGCNSource, MovieLensSource

INTERACTION_NAMES = [*INTERACTIONS.names, SOURCE_ROW_COLUMN]


def datasets_root() -> Path:
    """TOWERLINE_DATASETS if set, else ../shared/datasets beside the repo."""
    env = os.environ.get("TOWERLINE_DATASETS")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "datasets"


def dataset(folder: str) -> Path:
    path = datasets_root() / folder
    if not path.is_dir():
        pytest.skip(f"public dataset {folder} not found at {path}")
    return path


def load(source: Source) -> dict:
    """All tables of a source, with its interaction batches kept for batch-level checks."""
    batches = list(source.interactions())
    return {
        "source": source,
        "batches": batches,
        "interactions": pa.Table.from_batches(batches),
        "creators": source.creators(),
        "users": source.users(),
    }


def distinct(column: pa.ChunkedArray) -> int:
    return len(pc.unique(column))


def check_interaction_batches(batches: list[pa.RecordBatch], names: list[str]) -> None:
    assert batches
    for batch in batches:
        assert batch.schema.names == names
        assert batch.num_rows <= BATCH_ROWS
        for f in INTERACTIONS:
            assert batch.schema.field(f.name).type == f.type, f.name
        assert batch.schema.field(SOURCE_ROW_COLUMN).type == pa.int64()


@pytest.fixture(scope="module")
def gowalla() -> dict:
    return load(LightGCNSource(dataset("gowalla")))


@pytest.fixture(scope="module")
def lastfm() -> dict:
    return load(LastFmSource(dataset("lastfm-hetrec2011-2k")))


@pytest.fixture(scope="module")
def movielens() -> dict:
    return load(MovieLensSource(dataset("movielens-100k")))


# --- Gowalla (LightGCN format) ---


def test_gowalla_counts(gowalla):
    table = gowalla["interactions"]
    split = table[SPLIT_COLUMN]
    assert pc.sum(pc.equal(split, "train")).as_py() == 810_128
    assert pc.sum(pc.equal(split, "test")).as_py() == 217_242
    assert table.num_rows == 810_128 + 217_242
    assert distinct(table["user_id"]) == 29_858
    assert distinct(table["creator_id"]) == 40_981
    assert gowalla["creators"].num_rows == 40_981
    assert gowalla["users"].num_rows == 29_858
    assert gowalla["source"].rejects == []


def test_gowalla_schema_and_values(gowalla):
    source = gowalla["source"]
    assert source.has_given_split and not source.has_timestamps
    check_interaction_batches(gowalla["batches"], [*INTERACTION_NAMES, SPLIT_COLUMN])
    table = gowalla["interactions"]
    assert table["timestamp"].null_count == table.num_rows
    assert pc.all(pc.equal(table["value"], 1.0)).as_py()
    assert pc.all(pc.equal(table["event_type"], "follow")).as_py()
    first = table.slice(0, 1).to_pylist()[0]
    assert first["user_id"] == "0" and first["creator_id"] == "0"
    assert first[SOURCE_ROW_COLUMN] == 0 and first[SPLIT_COLUMN] == "train"
    assert gowalla["creators"].schema == CREATORS
    assert gowalla["users"].schema == USERS
    assert source.estimated_rows == table.num_rows


def test_gowalla_describe_md5(gowalla):
    described = gowalla["source"].describe()
    assert described["kind"] == "lightgcn"
    assert described["path"] == str(dataset("gowalla"))
    assert described["files"]["train.txt"] == "5eec1eb2edb8dd648377d348b8e136cf"
    assert described["files"]["test.txt"] == "c04e2c4bcd2389f53ed8281816166149"


# --- Last.fm HetRec 2011 ---


def test_lastfm_counts(lastfm):
    table = lastfm["interactions"]
    assert table.num_rows == 92_834
    assert distinct(table["user_id"]) == 1_892
    assert distinct(table["creator_id"]) == 17_632
    assert lastfm["creators"].num_rows == 17_632
    assert lastfm["users"].num_rows == 1_892
    assert lastfm["source"].estimated_rows == 92_834
    assert lastfm["source"].rejects == []


def test_lastfm_schema_and_first_row(lastfm):
    assert not lastfm["source"].has_timestamps
    check_interaction_batches(lastfm["batches"], INTERACTION_NAMES)
    first = lastfm["interactions"].slice(0, 1).to_pylist()[0]
    assert first == {
        "user_id": "2",
        "creator_id": "51",
        "event_type": "follow",
        "timestamp": None,
        "value": 13883.0,
        SOURCE_ROW_COLUMN: 1,  # line 0 is the header
    }
    assert lastfm["creators"].schema == CREATORS
    assert lastfm["users"].schema == USERS
    assert lastfm["source"].describe()["kind"] == "lastfm"


def test_lastfm_names_decoded(lastfm):
    creators = {r["creator_id"]: r for r in lastfm["creators"].to_pylist()}
    assert creators["1"]["name"] == "MALICE MIZER"
    assert creators["18"]["name"] == "The Crüxshadows"
    assert creators["201"]["name"] == "Ленинград"
    assert not any("\ufffd" in (r["name"] or "") for r in creators.values())


def test_lastfm_categories_and_tags(lastfm):
    creators = {r["creator_id"]: r for r in lastfm["creators"].to_pylist()}
    # MALICE MIZER: j-rock 5 times, visual kei 3, gothic and japanese 2, then ties at 1.
    assert creators["1"]["category"] == "j-rock"
    assert creators["1"]["tags"][:4] == ["j-rock", "visual kei", "gothic", "japanese"]
    tagged = [r for r in creators.values() if r["tags"]]
    assert len(tagged) > 12_000  # 12,133 of the catalog's artists carry a tag
    assert all(r["category"] == r["tags"][0] and len(r["tags"]) <= 5 for r in tagged)
    assert all(r["description"] and r["name"] in r["description"] for r in tagged)
    untagged = [r for r in creators.values() if not r["tags"]]
    assert all(r["category"] is None for r in untagged)
    # tags.dat writes "español" in Latin-1; it must come through decoded, not as U+FFFD.
    assert "español" in creators["12915"]["tags"]


# --- MovieLens 100K ---


def test_movielens_counts(movielens):
    table = movielens["interactions"]
    assert table.num_rows == 100_000
    assert distinct(table["user_id"]) == 943
    assert distinct(table["creator_id"]) == 1_682
    assert movielens["creators"].num_rows == 1_682
    assert movielens["users"].num_rows == 943
    assert movielens["source"].rejects == []


def test_movielens_first_rating(movielens):
    assert movielens["source"].has_timestamps
    check_interaction_batches(movielens["batches"], INTERACTION_NAMES)
    first = movielens["interactions"].slice(0, 1).to_pylist()[0]
    assert first == {
        "user_id": "196",
        "creator_id": "242",
        "event_type": "like",
        "timestamp": datetime.fromtimestamp(881250949, UTC),
        "value": 3.0,
        SOURCE_ROW_COLUMN: 0,
    }
    assert movielens["interactions"]["timestamp"].null_count == 0


def test_movielens_items_and_users(movielens):
    assert movielens["creators"].schema == CREATORS
    assert movielens["users"].schema == USERS
    items = {r["creator_id"]: r for r in movielens["creators"].to_pylist()}
    toy = items["1"]
    assert toy["name"] == "Toy Story (1995)"
    assert toy["category"] == "Animation"
    assert toy["tags"] == ["Animation", "Children's", "Comedy"]
    assert toy["created_at"] == datetime(1995, 1, 1, tzinfo=UTC)
    assert items["543"]["name"] == "Misérables, Les (1995)"  # Latin-1 in u.item
    assert items["267"]["created_at"] is None  # the "unknown" movie has no date
    users = {r["user_id"]: r for r in movielens["users"].to_pylist()}
    assert users["1"]["attributes"] == ["age=24", "gender=M", "occupation=technician", "zip=85711"]
    assert users["1"]["country"] == "US"


# --- rejects and errors, on small folders written here ---


def write(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def test_lightgcn_rejects_malformed_lines(tmp_path):
    folder = write(
        tmp_path / "lgcn",
        {
            "train.txt": b"0 1 2 3\n1 x 5\n2 4\n3 1.5\n4\n\n5 6 7\n",
            "test.txt": b"0 9\n1 -2\n",
        },
    )
    source = LightGCNSource(folder)
    table = pa.Table.from_batches(list(source.interactions()))
    assert table.column_names == [*INTERACTION_NAMES, SPLIT_COLUMN]
    train = table.filter(pc.equal(table[SPLIT_COLUMN], "train")).to_pydict()
    assert list(zip(train["user_id"], train["creator_id"], strict=True)) == [
        ("0", "1"), ("0", "2"), ("0", "3"), ("2", "4"), ("5", "6"), ("5", "7"),
    ]  # fmt: skip
    assert train[SOURCE_ROW_COLUMN] == [0, 0, 0, 2, 6, 6]
    assert table.filter(pc.equal(table[SPLIT_COLUMN], "test"))["creator_id"].to_pylist() == ["9"]
    rejects = source.drain_rejects()
    assert [(r["table"], r["source_row"], r["reason"]) for r in rejects] == [
        ("interactions", 1, "malformed_row"),
        ("interactions", 3, "malformed_row"),
        ("interactions", 1, "malformed_row"),
    ]
    assert rejects[0]["raw"] == "1 x 5" and "train.txt" in rejects[0]["detail"]
    assert source.creators() is None and source.users() is None  # no item/user lists


def test_lastfm_rejects_and_decoding(tmp_path):
    folder = write(
        tmp_path / "lastfm",
        {
            "user_artists.dat": b"userID\tartistID\tweight\n"
            b"2\t51\t10\n2\t52\n3\t51\tmany\n3\t52\t7\n",
            "artists.dat": b"id\tname\turl\tpictureURL\n51\tBj\xc3\xb6rk\tu\tp\n52\tbroken\n"
            b"53\tSigur R\xf3s\tu\tp\n",
            "tags.dat": b"tagID\ttagValue\n1\tindie\n2\tespa\xf1ol\n",
            "user_taggedartists.dat": b"userID\tartistID\ttagID\tday\tmonth\tyear\n"
            b"2\t51\t1\t1\t4\t2009\n3\t51\t2\t1\t4\t2009\n4\t51\t2\t1\t4\t2009\n",
        },
    )
    source = LastFmSource(folder)
    table = pa.Table.from_batches(list(source.interactions()))
    assert table.to_pydict() == {
        "user_id": ["2", "3"],
        "creator_id": ["51", "52"],
        "event_type": ["follow", "follow"],
        "timestamp": [None, None],
        "value": [10.0, 7.0],
        SOURCE_ROW_COLUMN: [1, 4],
    }
    rejects = source.drain_rejects()
    assert [(r["table"], r["source_row"], r["reason"]) for r in rejects] == [
        ("interactions", 2, "malformed_row"),
        ("interactions", 3, "wrong_type"),
    ]
    assert rejects[1]["raw"] == "3\t51\tmany"
    creators = {r["creator_id"]: r for r in source.creators().to_pylist()}
    assert sorted(creators) == ["51", "53"]
    assert creators["51"]["name"] == "Björk"
    assert creators["51"]["tags"] == ["español", "indie"]  # two uses beat one
    assert creators["51"]["category"] == "español"
    assert creators["53"]["name"] == "Sigur Rós"  # a Latin-1 byte in a UTF-8 file
    assert creators["53"]["tags"] is None and creators["53"]["description"] is None
    creator_rejects = source.drain_rejects()
    assert [(r["table"], r["source_row"]) for r in creator_rejects] == [("creators", 2)]
    assert {r["reason"] for r in rejects + creator_rejects} <= set(REASONS)


def test_movielens_rejects(tmp_path):
    genres = b"|0" * 18
    folder = write(
        tmp_path / "ml",
        {
            "u.data": b"1\t10\t4\t881250949\n1\t11\t5\n2\t10\t3\tsoon\n",
            "u.item": b"10|Caf\xe9 (1995)|01-Jan-1995||url|1" + genres + b"\n11|short|x\n",
            "u.user": b"1|24|M|technician|85711\n2|53|F\n",
        },
    )
    source = MovieLensSource(folder)
    table = pa.Table.from_batches(list(source.interactions()))
    assert table["creator_id"].to_pylist() == ["10"]
    assert source.creators().to_pylist()[0]["name"] == "Café (1995)"
    assert source.users()["user_id"].to_pylist() == ["1"]
    assert [(r["table"], r["source_row"], r["reason"]) for r in source.drain_rejects()] == [
        ("interactions", 1, "malformed_row"),
        ("interactions", 2, "wrong_type"),
        ("creators", 1, "malformed_row"),
        ("users", 1, "malformed_row"),
    ]


@pytest.mark.parametrize(
    ("cls", "present", "missing"),
    [
        (LastFmSource, ["user_artists.dat", "artists.dat", "tags.dat"], "user_taggedartists.dat"),
        (MovieLensSource, ["u.data", "u.user"], "u.item"),
        (LightGCNSource, ["train.txt"], "test.txt"),
    ],
)
def test_missing_file_names_path_and_file(tmp_path, cls, present, missing):
    write(tmp_path, {name: b"" for name in present})
    with pytest.raises(FileNotFoundError, match=f"{missing} not found in {tmp_path}"):
        cls(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        LastFmSource(tmp_path / "absent")


def test_empty_source_still_yields_a_typed_batch(tmp_path):
    folder = write(tmp_path, {"train.txt": b"", "test.txt": b"7\n"})  # user 7 has no items
    batches = list(LightGCNSource(folder).interactions())
    assert [b.num_rows for b in batches] == [0, 0]
    check_interaction_batches(batches, [*INTERACTION_NAMES, SPLIT_COLUMN])
