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


def test_the_int8_encoder_stays_near_sentence_transformers_and_ranks_alike(exported, tmp_path):
    folder, _ = exported
    record = query_encoder.quantize(folder / "q.onnx", tmp_path / "q8.onnx", "all-MiniLM-L6-v2",
                                    folder / "q.json")  # fmt: skip
    assert record["precision"] == "int8"
    assert record["parity_min_cosine"] >= query_encoder.INT8_MIN_COSINE
    assert (tmp_path / "q8.onnx").stat().st_size < (folder / "q.onnx").stat().st_size / 3
    texts = [
        "watercolor comics",
        "synthwave producer",
        "cooking from Lyon",
        "physics lessons",
        "Clara Inkwell",
        "knitting patterns",
        "true crime podcast",
        "jazz piano",
    ]
    mine = QueryEncoder(tmp_path / "q8.onnx", folder / "q.json").encode(texts)
    theirs = encode(texts, load_encoder("all-MiniLM-L6-v2"))
    assert ((mine * theirs).sum(1) >= query_encoder.INT8_MIN_COSINE).all()
    # each text's nearest of the fp32 vectors is its own: the int8 query lands where it should
    assert ((mine @ theirs.T).argmax(1) == np.arange(len(texts))).all()


def test_a_version_gets_the_precision_its_index_config_asks(tmp_path, monkeypatch):
    from common.artifacts import sha256_file
    from common.errors import ConfigError
    from index import semantic
    from index.config import IndexConfig

    monkeypatch.setattr(semantic, "CACHE", tmp_path / "cache")
    version = tmp_path / "version"
    version.mkdir()
    record = semantic._encoder_into("all-MiniLM-L6-v2", version, "int8")
    assert record["precision"] == "int8" and record["dim"] == 384
    assert record["sha256"] == sha256_file(version / "query_encoder.onnx") != record["fp32_sha256"]
    assert len(list((tmp_path / "cache" / "query_encoder").iterdir())) == 2  # fp32, int8 from it
    with pytest.raises(ConfigError, match=r"query_precision='fp16': use one of \('fp32', 'int8'\)"):
        IndexConfig(name="x", checkpoint="c", store="s", query_precision="fp16")
