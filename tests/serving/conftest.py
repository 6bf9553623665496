"""Fixtures of the serving tests, meant for every test of serving/ (the service's too).

    tiny_data, tiny_checkpoint,  the index tests' tiny dataset, 2-epoch 16-dim model, its
    trained, tower_onnx,         ONNX user tower, a batch of request inputs with torch's
    user_batch, published        answers, and an index store with one version
                                 (tests/index/conftest.py; mean pooling, with attributes)
    triton_repositories          write_repositories of that tower: {"production", "local"}
                                 roots holding `user_tower` and `user_tower_unbatched` (dynamic
                                 batching off); read-only, copy a repository to change it
    triton_server                a real TritonServer on the local root, `user_tower` loaded
                                 (package scope: one server for the folder; leave it as found)
    store_root                   a private copy of `published` for the service tests
    features_dir                 the tiny dataset materialised as that version's tower hashes
    fans                         40 user ids with a training history

Everything is package-scoped, so the model is trained and the server started once.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.index import conftest as index_fixtures

# the index tests' fixtures, registered here too (package scope: built once for this folder)
one_thread = index_fixtures.one_thread
tiny_data = index_fixtures.tiny_data
tiny_checkpoint = index_fixtures.tiny_checkpoint
trained = index_fixtures.trained
tower_onnx = index_fixtures.tower_onnx
user_batch = index_fixtures.user_batch
published = index_fixtures.published  # an index store with one version (read-only)

UNBATCHED = "user_tower_unbatched"


@pytest.fixture(scope="package")
def triton_repositories(tower_onnx, tmp_path_factory) -> dict:
    from serving.triton.repository import write_repositories

    root = tmp_path_factory.mktemp("triton-repositories")
    written = write_repositories(tower_onnx[0], root)
    write_repositories(tower_onnx[0], root, dynamic_batching=False, model_name=UNBATCHED)
    return written


@pytest.fixture(scope="package")
def triton_server(triton_repositories, tmp_path_factory):
    """A running tritonserver (127.0.0.1, free ports) with `user_tower` loaded; stopped, its
    process group ended, when the package's tests are done, failed or not."""
    from serving.triton.repository import MODEL_NAME
    from serving.triton.server import TritonServer

    work = tmp_path_factory.mktemp("triton-work")
    with TritonServer(triton_repositories["local"], models=[MODEL_NAME], work_dir=work) as server:
        yield server


@pytest.fixture(scope="package")
def store_root(published, tmp_path_factory) -> Path:
    """A private copy of the published store (the swap test adds a version to its own copy)."""
    root = tmp_path_factory.mktemp("service") / "store"
    shutil.copytree(published.store, root)
    return root


@pytest.fixture(scope="package")
def features_dir(store_root, tiny_data, tmp_path_factory) -> Path:
    from index import store
    from serving.features.materialise import materialise

    tower = store.read_manifest(store_root)["user_tower"]
    out = tmp_path_factory.mktemp("features") / "store"
    materialise(tiny_data, out, tower["attribute_buckets"], tower["attribute_width"])
    return out


@pytest.fixture(scope="package")
def rank_store(store_root, tmp_path_factory) -> Path:
    """A ranking store holding the ranker of `store_root`'s version (`python -m ranking train`
    over its towers' top 50, a few seconds)."""
    from ranking.config import RankingConfig
    from ranking.train import run

    out = tmp_path_factory.mktemp("ranking") / "store"
    run(RankingConfig(name="tiny", index=str(store_root), store=str(out), candidates=50))
    return out


@pytest.fixture(scope="package")
def fans(tiny_data) -> list[str]:
    from data import tables

    t = pq.read_table(tiny_data / tables.USERS, columns=["user_id", "train_count"])
    ids = np.asarray(t["user_id"].to_pylist())[t["train_count"].to_numpy() > 0]
    return sorted(ids.tolist())[:40]


def serve_http(app):
    """`app` on a real uvicorn server on a free loopback port, started: (server, base URL).
    Set `server.should_exit` to stop it."""
    import uvicorn

    from serving.triton.server import free_ports

    port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def service(store_root, features_dir):
    """The app with the in-process ONNX tower, through FastAPI's test client: (client,
    recommender), one per test module."""
    from fastapi.testclient import TestClient

    from serving.api.app import create_app
    from serving.features.embedded import EmbeddedStore
    from serving.pipeline.recommender import Recommender
    from serving.pipeline.towers import InProcessTowers

    rec = Recommender(store_root, EmbeddedStore.open(features_dir), InProcessTowers())
    assert rec.refresh()
    with TestClient(create_app(rec, poll_seconds=None)) as client:
        yield client, rec


@contextlib.contextmanager
def redis_recommender(store_root: Path, features_dir: Path):
    """A real redis-server loaded with `features_dir` and a recommender reading it, tower
    in-process, its first version loaded: (recommender, server)."""
    from serving.features.redis_store import RedisStore
    from serving.pipeline.recommender import Recommender
    from serving.pipeline.towers import InProcessTowers
    from tests.serving.redis_server import redis_server

    with redis_server() as redis:
        RedisStore.load(features_dir, redis.url)
        rec = Recommender(store_root, RedisStore(redis.url), InProcessTowers())
        rec.refresh()
        yield rec, redis


@contextlib.contextmanager
def on_local_triton(store_root: Path, tmp: Path, timeout_s: float):
    """A copy of the store and a local Triton (no model yet) with the towers provider the
    service wires to it: (root, triton, towers)."""
    from serving.config import TritonSettings
    from serving.pipeline.towers import TritonTowers
    from serving.triton.server import TritonServer

    root, repo = tmp / "store", tmp / "triton"
    shutil.copytree(store_root, root)
    (repo / "local").mkdir(parents=True)
    settings = TritonSettings(repository=str(repo), timeout_s=timeout_s)
    with TritonServer(repo / "local", models=[], work_dir=tmp / "work") as triton:
        yield root, triton, TritonTowers(repo, triton.grpc_url, settings, triton)


def documented(response, model) -> dict:
    """A 200's body, checked to have the shape the OpenAPI spec documents (`model`)."""
    assert response.status_code == 200, response.text
    out = response.json()
    assert model.model_validate(out).model_dump() == out
    return out


def ids(body: dict) -> list[str]:
    """The creator ids of an answer's items, in order."""
    return [i["creator_id"] for i in body["items"]]
