"""The query encoder exported to ONNX with its tokenizer gives the vectors sentence-transformers
gives (the ones the catalog's creator text vectors were made with), batch by batch, without
torch at query time."""

from __future__ import annotations

import numpy as np
import pytest

from data.text import encode, load_encoder
from index import query_encoder
from index.onnx import QueryEncoder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("query-encoder")
    record = query_encoder.export("all-MiniLM-L6-v2", folder, "q.onnx", "q.json")
    return folder, record


def test_the_export_matches_sentence_transformers(exported):
    folder, record = exported
    assert record["dim"] == 384 and record["parity_max_abs_diff"] <= query_encoder.PARITY_ATOL
    texts = ["Clara Inkwell draws watercolor comics", "synthwave", "🙂", "שלום עולם", "x" * 3000]
    mine = QueryEncoder(folder / "q.onnx", folder / "q.json").encode(texts)
    theirs = encode(texts, load_encoder("all-MiniLM-L6-v2"))
    assert mine.shape == (5, 384) and mine.dtype == np.float32
    assert np.abs(mine - theirs).max() < 1e-4
    assert np.allclose(np.linalg.norm(mine, axis=1), 1.0, atol=1e-5)


def test_one_query_alone_gets_its_batch_vector(exported):
    folder, _ = exported
    enc = QueryEncoder(folder / "q.onnx", folder / "q.json")
    batch = enc.encode(["lofi", "cooking from Lyon, every Sunday"])
    assert np.allclose(enc.encode(["lofi"])[0], batch[0], atol=1e-5)  # padding changes nothing
    assert enc.encode([]).shape == (0, 384)
