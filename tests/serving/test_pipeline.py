"""The online pipeline's seams: named stages timed by one metric, a rank stage that can be
replaced, flagged degradation stage by stage, a batch handed on after its lookup (so a paused
tower holds up no cold start), and the answer log (sampled, rotated, read back)."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving import answer_log
from serving.api.app import create_app
from serving.features.embedded import EmbeddedStore
from serving.pipeline.bundle import Tower
from serving.pipeline.recommender import Recommender
from serving.pipeline.stages import Rank, Request
from serving.pipeline.towers import InProcessTowers
from tests.serving.conftest import serve_http

STAGES = ("lookup", "encode", "retrieve", "filter", "rank", "fallback")


@pytest.fixture(scope="module")
def recommender(store_root, features_dir):
    rec = Recommender(store_root, EmbeddedStore.open(features_dir), InProcessTowers())
    assert rec.refresh()
    return rec


def test_every_stage_is_named_timed_and_counted(recommender, fans):
    batch = recommender.pipeline.run([Request(f, 5) for f in fans[:3]], recommender.bundle)
    assert [s.name for s in recommender.pipeline.stages] == list(STAGES)
    assert list(batch.timings) == list(STAGES) and all(t >= 0 for t in batch.timings.values())
    assert all(a.timings == {**batch.timings, "batch": 3} for a in batch.answers)
    with TestClient(create_app(recommender, poll_seconds=None)) as client:
        client.post("/recommend", json={"user_id": fans[0], "k": 3})
        metrics = client.get("/metrics").text
    for stage in STAGES:
        assert f'towerline_stage_seconds_count{{stage="{stage}"}} 1.0' in metrics, stage
    assert "towerline_batch_size_count 1.0" in metrics


class Reversed(Rank):
    """A stand-in for a learned re-ranker: twice the candidates, the worst scored first."""

    def depth(self, k: int) -> int:
        return 2 * k

    def order(self, batch, j: int) -> np.ndarray:
        return np.arange(len(batch.candidates[j][0]))[::-1]


def test_the_rank_stage_is_a_seam(store_root, features_dir, recommender, fans):
    ranked = Recommender(
        store_root, EmbeddedStore.open(features_dir), InProcessTowers(), rank=Reversed()
    )
    ranked.refresh()
    for fan in fans[:5]:
        plain, _ = recommender.recommend(fan, 10)
        reordered, _ = ranked.recommend(fan, 10)
        wide, _ = recommender.recommend(fan, 20)
        assert reordered.creator_ids == wide.creator_ids[::-1][:10]  # from 20 candidates
        assert reordered.scores == sorted(reordered.scores)
        assert plain.creator_ids == wide.creator_ids[:10]


class FlakyServer:
    """A tower provider whose 'server' answers the load-time probe check, then fails (or hangs)
    until `back` is set; its in-process fallback (optional) is the real tower."""

    def __init__(self, fallback: bool, hang_s: float = 0.0):
        self.fallback, self.hang_s = fallback, hang_s
        self.calls, self.back, self.loaded = 0, False, False

    def __call__(self, folder, version) -> Tower:
        real = InProcessTowers()(folder, version)

        def on_server(x):
            if self.loaded and not self.back:
                self.calls += 1
                time.sleep(self.hang_s)
                raise TimeoutError("the server did not answer")
            return real.encode(x)

        fallback = real.encode if self.fallback else None
        return Tower(on_server, real.inputs, "flaky server", fallback=fallback)


def flaky_recommender(store_root, features_dir, server: FlakyServer) -> Recommender:
    rec = Recommender(store_root, EmbeddedStore.open(features_dir), server)
    rec.refresh()
    server.loaded = True
    return rec


def test_a_dead_server_degrades_only_its_requests(store_root, features_dir, fans):
    """No in-process fallback: the model path falls back, flagged; a cold start is unchanged."""
    rec = flaky_recommender(store_root, features_dir, FlakyServer(fallback=False))
    batch = rec.pipeline.run([Request(fans[0], 5), Request("nobody-we-know", 5)], rec.bundle)
    known, cold = batch.answers
    assert (known.source, known.degraded, known.cold_start) == (
        "popular",
        "user_tower_unavailable",
        False,
    )
    assert (cold.source, cold.degraded, cold.cold_start) == ("popular", None, True)
    assert batch.model == [] and len(known.creator_ids) == 5


def test_the_same_tower_in_process_keeps_answers_personal_and_the_breaker_stops_waiting(
    store_root, features_dir, fans, recommender
):
    """Triton down: the same ONNX answers in-process, flagged; after 2 failures the breaker
    stops calling the server, lets one trial through after its cooldown, and closes when the
    server is back."""
    server = FlakyServer(fallback=True)
    rec = flaky_recommender(store_root, features_dir, server)
    want, _ = recommender.recommend(fans[0], 10)
    for fan in fans[:6]:
        got, _ = rec.recommend(fan, 10)
        assert (got.source, got.degraded) == ("model", "user_tower_in_process")
    assert got.creator_ids == recommender.recommend(fans[5], 10)[0].creator_ids
    assert rec.recommend(fans[0], 10)[0].creator_ids == want.creator_ids
    assert server.calls == 2 and rec.breakers["user_tower"].state == "open"
    breaker = rec.breakers["user_tower"]
    breaker.opened_at -= breaker.cooldown  # the cooldown has passed: one trial goes through
    server.back = True
    got, _ = rec.recommend(fans[0], 10)
    assert (got.source, got.degraded) == ("model", None) and breaker.state == "closed"


def test_a_cold_start_never_waits_on_the_user_tower(store_root, features_dir, fans):
    """The server hangs 0.5 s a call: the cold start in the same batch is delivered after the
    lookup, long before the fans that need the tower."""
    rec = flaky_recommender(store_root, features_dir, FlakyServer(fallback=True, hang_s=0.5))
    when: dict[int, float] = {}
    started = time.perf_counter()

    def deliver(i, result):
        when[i] = time.perf_counter() - started

    answers = rec.recommend_many(
        [Request(fans[0], 5), Request("nobody-we-know", 5), Request(fans[1], 5)], deliver
    )
    total = time.perf_counter() - started
    assert list(when) == [1] and when[1] < 0.25 <= 0.5 <= total
    assert answers[1][0].cold_start and answers[0][0].degraded == "user_tower_in_process"


def test_a_batch_handed_on_after_its_lookup_is_answered_as_a_whole_one_would_be(recommender, fans):
    """`handoff` stops a batch after its lookup, its cold start answered; what it admitted,
    resumed together with another batch's, gets the answers of one plain batch."""
    b = recommender.bundle
    some = str(b.index.creator_id[0])
    first = [Request(fans[0], 5), Request("nobody-we-know", 5), Request(fans[1], 5, (some,))]
    second = [Request(fans[2], 7)]
    plain = recommender.pipeline.run(first + second, b).answers
    one = recommender.pipeline.run(first, b, handoff=True)
    two = recommender.pipeline.run(second, b, handoff=True)
    assert one.model == [0, 2] and one.answers[0] is None and one.answers[2] is None
    assert one.answers[1].cold_start and one.answers[1].creator_ids == plain[1].creator_ids
    resumed = recommender.pipeline.resume([one.admitted(0), one.admitted(2), two.admitted(0)], b)
    got = [(a.creator_ids, a.scores, a.source) for a in resumed.answers]
    assert got == [(a.creator_ids, a.scores, a.source) for a in (plain[0], plain[2], plain[3])]
    assert some not in resumed.answers[1].creator_ids and len(resumed.answers[2].creator_ids) == 7
    assert resumed.timings["lookup"] >= max(one.timings["lookup"], two.timings["lookup"])


class PausedServer:
    """A tower provider whose 'server' answers the load-time probe check, then holds every call
    (a SIGSTOPped Triton) until `resume` is set, when the call fails as a timed-out one does;
    the real tower answers in-process. `held` counts the calls it holds."""

    def __init__(self):
        self.resume, self.held, self.loaded = threading.Event(), threading.Semaphore(0), False

    def __call__(self, folder, version) -> Tower:
        real = InProcessTowers()(folder, version)

        def on_server(x):
            if self.loaded:
                self.held.release()
                self.resume.wait(30)
                raise TimeoutError("the server did not answer")
            return real.encode(x)

        return Tower(on_server, real.inputs, "paused server", fallback=real.encode)


def test_a_cold_start_is_answered_while_every_worker_waits_on_a_paused_tower(
    store_root, features_dir, fans
):
    """Both batch workers wait on a paused server: a known fan asked then is looked up and
    waits for a worker, a cold start asked then is answered at once, over real HTTP."""
    server = PausedServer()
    rec = flaky_recommender(store_root, features_dir, server)
    app = create_app(rec, poll_seconds=None)  # two batch workers
    http, url = serve_http(app)
    answers: dict[str, httpx.Response] = {}

    def ask(fan: str) -> None:
        answers[fan] = httpx.post(f"{url}/recommend", json={"user_id": fan, "k": 5}, timeout=30)

    asking = [threading.Thread(target=ask, args=(fan,)) for fan in fans[:3]]
    try:
        for thread in asking[:2]:
            thread.start()
            assert server.held.acquire(timeout=10)  # each worker waits on the server
        asking[2].start()
        batcher, deadline = app.state.services.batcher, time.monotonic() + 10
        while not batcher.admitted:  # looked up apart, waiting for a worker
            assert time.monotonic() < deadline, "the third fan was not looked up"
            time.sleep(0.01)
        started = time.perf_counter()
        cold = httpx.post(f"{url}/recommend", json={"user_id": "nobody-we-know", "k": 5})
        took = time.perf_counter() - started
        assert not answers  # the server is still paused: nobody on the model path answered
    finally:
        server.resume.set()
        for thread in asking:
            if thread.ident is not None:  # started
                thread.join(30)
        http.should_exit = True
    assert cold.status_code == 200 and cold.json()["cold_start"] and took < 0.5, took
    for fan in fans[:3]:
        body = answers[fan].json()
        assert (body["source"], body["degraded"]) == ("model", "user_tower_in_process"), fan


def test_sampling_is_by_fan_and_stable():
    ids = [f"fan_{i:05d}" for i in range(4000)]
    picked = [answer_log.sampled(u, 0.25) for u in ids]
    assert picked == [answer_log.sampled(u, 0.25) for u in ids]  # the same verdict each time
    assert 0.22 < np.mean(picked) < 0.28
    assert all(answer_log.sampled(u, 1.0) for u in ids[:10])


def test_the_answer_log_records_rotates_and_reads_back(recommender, fans, tmp_path):
    path = tmp_path / "answers" / "answers.arrows"
    log = answer_log.AnswerLog(path, sample=1.0, max_bytes=4096, backups=3, batch_rows=2)
    with TestClient(create_app(recommender, poll_seconds=None, answer_log=log)) as client:
        for fan in fans[:12]:
            assert client.post("/recommend", json={"user_id": fan, "k": 4}).status_code == 200
        some = str(recommender.bundle.index.creator_id[3])
        client.get(f"/similar/{some}", params={"k": 2})
        metrics = client.get("/metrics").text
    # closed with the app: everything queued is on disk
    records = list(answer_log.read(path))
    rotated = sorted(p.name for p in path.parent.iterdir())
    assert "answers.arrows.1" in rotated and len(rotated) > 1  # 4 KB files: it rotated
    assert sum(p.stat().st_size for p in path.parent.iterdir()) <= 4 * (4096 + 2048)
    recommends = [r for r in records if r["route"] == "recommend"]
    assert [r["request"]["user_id"] for r in recommends] == fans[12 - len(recommends) : 12]
    last = recommends[-1]
    assert last["request"] == {"user_id": fans[11], "k": 4, "exclude": []}
    assert last["model_version"] == recommender.bundle.model_version
    assert last["index_version"] == recommender.bundle.index_version
    assert len(last["items"]) == len(last["scores"]) == 4 and last["source"] == "model"
    assert set(STAGES) <= set(last["timings"])
    assert records[-1]["route"] == "similar" and records[-1]["request"]["creator_id"] == some
    assert 'towerline_answer_log_records_total{outcome="queued"} 13.0' in metrics
    assert log.counts["written"] == 13
