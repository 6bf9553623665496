"""Fixtures of the explorer tests: the serving tests' tiny model, published index and feature
store (tests/serving/conftest.py), registered here too, and the explorer on a real server."""

from __future__ import annotations

import shutil

import pytest

from tests.serving import conftest as serving_fixtures

one_thread = serving_fixtures.one_thread
tiny_data = serving_fixtures.tiny_data
tiny_checkpoint = serving_fixtures.tiny_checkpoint
trained = serving_fixtures.trained
published = serving_fixtures.published
store_root = serving_fixtures.store_root
features_dir = serving_fixtures.features_dir
fans = serving_fixtures.fans
rank_store = serving_fixtures.rank_store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = "Debian's chromium is not installed: apt-get install chromium (.ci/run does)"


@pytest.fixture(scope="package")
def site(store_root, features_dir):
    """The service with the explorer room, in-process tower, on a real uvicorn server:
    (base URL, recommender)."""
    from serving.api.app import create_app
    from serving.features.embedded import EmbeddedStore
    from serving.pipeline.recommender import Recommender
    from serving.pipeline.towers import InProcessTowers

    rec = Recommender(store_root, EmbeddedStore.open(features_dir), InProcessTowers())
    assert rec.refresh()
    http, url = serving_fixtures.serve_http(create_app(rec, poll_seconds=None, rooms=["explorer"]))
    yield url, rec
    http.should_exit = True


@pytest.fixture(scope="package")
def ranked_site(store_root, features_dir, rank_store):
    """The same with the rank stage on (the version's ranker over the towers' top 50)."""
    from serving.api.app import create_app
    from serving.features.embedded import EmbeddedStore
    from serving.pipeline.recommender import Recommender
    from serving.pipeline.stages import Rank
    from serving.pipeline.towers import InProcessTowers

    towers = InProcessTowers(rank_store=rank_store)
    rec = Recommender(store_root, EmbeddedStore.open(features_dir), towers, rank=Rank(50))
    assert rec.refresh()
    http, url = serving_fixtures.serve_http(create_app(rec, poll_seconds=None, rooms=["explorer"]))
    yield url, rec
    http.should_exit = True


@pytest.fixture(scope="package")
def browser():
    """Headless chromium (Debian's, by path: Playwright cannot download its own here)."""
    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="package")
def second_version(site, tiny_data, tmp_path_factory) -> str:
    """A second model's version published into the site's store (another seed, no map); the
    site keeps serving the first (it does not poll)."""
    from index import rebuild
    from tests.index.conftest import index_config, train_tiny

    _, rec = site
    run = train_tiny(tiny_data, tmp_path_factory.mktemp("run2"), epochs=1, seed=7, workers=0)
    result = rebuild.run(index_config(rec.index_root, run, tiny_data, map_points=0))
    assert result.status == "published", result.summary
    return result.version


@pytest.fixture(scope="package")
def drifted_site(published, features_dir, tiny_data, tmp_path_factory):
    """The service with the explorer room serving a second model's version (another seed, no
    map), published over the tiny one past a drift limit with --allow_drift true: (base URL,
    recommender, the version it replaced)."""
    from index import rebuild, store
    from serving.api.app import create_app
    from serving.features.embedded import EmbeddedStore
    from serving.pipeline.recommender import Recommender
    from serving.pipeline.towers import InProcessTowers
    from tests.index.conftest import index_config, train_tiny

    root = tmp_path_factory.mktemp("drifted") / "store"
    shutil.copytree(published.store, root)  # store_root may hold more versions by now
    first = store.current_version(root)
    run = train_tiny(tiny_data, tmp_path_factory.mktemp("run3"), epochs=1, seed=7, workers=0)
    limits = {"max_cosine_shift": 2.0, "min_list_overlap": 1.0}  # the second breaks at 1
    cfg = index_config(root, run, tiny_data, map_points=0, drift=limits, allow_drift=True)
    result = rebuild.run(cfg)
    assert result.status == "published", result.summary
    rec = Recommender(root, EmbeddedStore.open(features_dir), InProcessTowers())
    assert rec.refresh() and rec.bundle.index_version == result.version
    http, url = serving_fixtures.serve_http(create_app(rec, poll_seconds=None, rooms=["explorer"]))
    yield url, rec, first
    http.should_exit = True


@pytest.fixture(scope="package")
def monitored_site(store_root, features_dir, tmp_path_factory):
    """The service with an answer log and the monitoring room beside the explorer: (base URL,
    recommender, the answer log's path)."""
    from serving.answer_log import AnswerLog
    from serving.api.app import create_app
    from serving.features.embedded import EmbeddedStore
    from serving.pipeline.recommender import Recommender
    from serving.pipeline.towers import InProcessTowers

    rec = Recommender(store_root, EmbeddedStore.open(features_dir), InProcessTowers())
    assert rec.refresh()
    log = AnswerLog(tmp_path_factory.mktemp("served") / "answers.arrows")
    app = create_app(rec, poll_seconds=None, answer_log=log, rooms=["explorer", "monitoring"])
    http, url = serving_fixtures.serve_http(app)
    yield url, rec, log
    http.should_exit = True
