"""Creator search's query encoder as Triton's second model: published with the user tower as
the same numbered version, answering /search's semantic retriever, and, when Triton does not
answer, replaced by the same ONNX in this process, flagged, until Triton is back.

A real tritonserver (the Python backend running the exported MiniLM through onnxruntime)."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index import store
from search.semantic import Semantic
from serving.api.app import create_app
from serving.api.search import SearchResponse
from serving.features.embedded import EmbeddedStore
from serving.pipeline.bundle import version_number
from serving.pipeline.recommender import Recommender
from serving.triton.repository import MODEL_NAME, QUERY_MODEL_NAME, versions
from tests.serving.conftest import documented, on_local_triton

QUERIES = ["watercolor comics", "synthwave", "Ünïcode ÀCCENTS and a much longer query of words"]


@pytest.fixture(scope="module")
def on_triton(store_root, features_dir, tmp_path_factory):
    """The service with both models on a local Triton: (client, recommender, server, towers)."""
    tmp = tmp_path_factory.mktemp("search-triton")
    with on_local_triton(store_root, tmp, timeout_s=1.0) as (root, triton, towers):
        rec = Recommender(root, EmbeddedStore.open(features_dir), towers)
        assert rec.refresh()
        with TestClient(create_app(rec, poll_seconds=None)) as client:
            yield client, rec, triton, towers


def ask(client, q: str, **params) -> dict:
    return documented(client.get("/search", params={"q": q, **params}), SearchResponse)


def test_the_query_encoder_is_published_beside_the_user_tower(on_triton):
    _, rec, triton, towers = on_triton
    number = version_number(rec.bundle.index_version)
    for model in (MODEL_NAME, QUERY_MODEL_NAME):
        assert versions(towers.model_dir(model)) == [number]
        assert triton.model_ready(model, number)
    assert rec.bundle.tower.query_name.endswith(f"{QUERY_MODEL_NAME}/{number}")


def test_triton_embeds_queries_as_the_in_process_encoder_does(on_triton):
    client, rec, _, _ = on_triton
    local = Semantic(rec.bundle.index.folder)
    feed = local.encoder.tokenize(QUERIES)
    on_server = rec.bundle.tower.query(feed)
    np.testing.assert_allclose(on_server, local.encoder.run(feed), atol=1e-4)
    for q in QUERIES:
        vector, why = rec.query_vector(q, rec.bundle)
        assert why is None
        np.testing.assert_allclose(vector[0], local.embed([q])[0], atol=1e-4)
        body = ask(client, q, k=5)
        assert body["degraded"] is None and "semantic" in body["retrievers"]
        rows, _ = local.search(q, 100)
        for item in body["items"]:
            row = rec.bundle.row_of[item["creator_id"]]
            if "semantic" in item["ranks"]:
                assert rows[item["ranks"]["semantic"] - 1] == row


def test_without_the_model_on_triton_search_embeds_here_flagged_then_recovers(on_triton):
    client, _, triton, _ = on_triton
    before = ask(client, QUERIES[0], k=5)
    triton.unload_model(QUERY_MODEL_NAME)
    try:
        flagged = [ask(client, QUERIES[0], k=5) for _ in range(3)]
        ready = client.get("/readyz").json()
    finally:
        triton.load_model(QUERY_MODEL_NAME)
    for body in flagged:  # the same answer, embedded in this process instead
        assert body["degraded"] == "query_encoder_in_process"
        assert body["items"] == before["items"]
    assert ready["ready"] and "query_encoder_in_process" in ready["degraded"]
    assert ready["dependencies"]["query_encoder"]["breaker"]["state"] != "closed"
    deadline = time.monotonic() + 20  # the breaker's cooldown, then a trial that succeeds
    while ask(client, QUERIES[0], k=5)["degraded"] is not None:
        assert time.monotonic() < deadline, "the query encoder on Triton did not come back"
        time.sleep(0.5)


def test_a_new_version_brings_its_query_encoder_and_retires_the_old(on_triton, tmp_path):
    _, rec, _, towers = on_triton
    folder = rec.bundle.index.folder
    old = version_number(rec.bundle.index_version)
    new = old + 1
    copy = tmp_path / f"v{new:05d}"
    shutil.copytree(folder, copy)
    assert towers.publish(copy, copy.name) == new
    assert versions(towers.model_dir(QUERY_MODEL_NAME)) == [old, new]
    towers.retire(new)
    assert versions(towers.model_dir(QUERY_MODEL_NAME)) == [old]
    assert (folder / store.QUERY_ENCODER).exists()
