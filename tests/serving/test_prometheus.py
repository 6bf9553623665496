"""The service's live metrics as a real Prometheus sees them: Debian's `prometheus` on loopback
scrapes the running service every second (OpenMetrics, so exemplars come too) and loads the
shipped alerting rules (monitoring/rules); real traffic moves the numbers, and Prometheus's
HTTP API answers the p99 of the request latency, the exemplars' trace ids and the counters.

Without the binary the Prometheus tests are skipped, saying why, except in CI (`.ci/run`
installs it), where they fail.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime as dt
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitoring import live
from serving.api.metrics import BUCKETS, MODEL_AGE, Metrics
from serving.triton.server import free_ports
from tests.serving.conftest import serve_http

PROMETHEUS = shutil.which("prometheus")
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
COUNTED = (
    "towerline_cold_starts_total", "towerline_short_answers_total",
    "towerline_empty_answers_total", "towerline_result_size_count", "towerline_result_size_sum",
)  # fmt: skip


@pytest.fixture(scope="module")
def served(store_root, features_dir):
    """The service on a real uvicorn port, in-process ONNX tower: (base URL, recommender)."""
    from serving.api.app import create_app
    from serving.features.embedded import EmbeddedStore
    from serving.pipeline.recommender import Recommender
    from serving.pipeline.towers import InProcessTowers

    rec = Recommender(store_root, EmbeddedStore.open(features_dir), InProcessTowers())
    assert rec.refresh()
    server, url = serve_http(create_app(rec, poll_seconds=None))
    yield url, rec
    server.should_exit = True


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the test process dies (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


@contextlib.contextmanager
def prometheus_server(target: str, rules: Path, folder: Path) -> Iterator[str]:
    """Prometheus on a free loopback port scraping `target` (host:port) every second with
    `rules` loaded, its storage in `folder`; its base URL, the process stopped on exit."""
    port = free_ports(1)[0]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "towerline", "static_configs": [{"targets": [target]}]}],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    cmd = [
        PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        "--enable-feature=exemplar-storage",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with open(folder / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent)  # fmt: skip
    try:
        wait_for(lambda: _ready(url, proc), 60, f"Prometheus ready; log: {folder}/prometheus.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ready(url: str, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, f"prometheus exited with {proc.returncode}"
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(check, timeout: float, what: str):
    """`check()` until it is truthy (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.25)
    return found


@pytest.fixture(scope="module")
def prometheus(served, tmp_path_factory) -> str:
    if PROMETHEUS is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is missing in CI: .ci/run installs Debian's `prometheus`")
        pytest.skip("prometheus is not installed: `apt-get install prometheus` (Debian)")
    url, _ = served
    folder = tmp_path_factory.mktemp("prometheus")
    with prometheus_server(url.removeprefix("http://"), live.RULES_PATH, folder) as prom:
        wait_for(lambda: query(prom, 'up{job="towerline"}') == 1.0, 30, "scraping the service")
        yield prom


def query(prom: str, promql: str) -> float | None:
    """An instant query's one value (None when it has none)."""
    body = httpx.get(f"{prom}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert body["status"] == "success", body
    result = body["data"]["result"]
    assert len(result) <= 1, f"{promql} gave {len(result)} series: aggregate it"
    return float(result[0]["value"][1]) if result else None


def settled(prom: str, promql: str, want: float) -> None:
    """Wait until Prometheus has scraped `promql` at `want`: fail with its last value."""
    deadline = time.monotonic() + 20
    while (value := query(prom, promql)) != want and time.monotonic() < deadline:
        time.sleep(0.25)
    assert value == want, f"{promql} is {value} in Prometheus, want {want}"


def served_counts(url: str) -> dict[str, float]:
    """The COUNTED samples of /recommend as the service says them now (a baseline that does
    not wait on the next scrape)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    out = dict.fromkeys(COUNTED, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in out and sample.labels.get("endpoint") == "recommend":
                out[sample.name] += sample.value
    return out


def exposed(text: str, name: str) -> float:
    """The one sample of an unlabelled gauge in a Prometheus text exposition."""
    (value,) = [
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    ]
    return value


def training_time(checkpoint_path) -> float:
    """When the tiny model's training run saved its checkpoint, as the run recorded it."""
    from index.checkpoint import load

    return dt.datetime.fromisoformat(load(checkpoint_path).trained_at).timestamp()


def recommend(client: httpx.Client, body: dict, trace_id: str | None = None) -> tuple[dict, float]:
    headers = {"traceparent": f"00-{trace_id}-{'1' * 16}-01"} if trace_id else {}
    started = time.perf_counter()
    r = client.post("/recommend", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json(), time.perf_counter() - started


# -- without Prometheus: the exposition itself -----------------------------------------------


def test_the_model_age_counts_from_the_training_run_and_is_nan_where_unknown(served, published):
    """The served model's age is since its training run saved it (recorded in the checkpoint,
    copied into the index version's manifest); a version from before training recorded it
    reads NaN, never the previous version's age."""
    url, rec = served
    text = httpx.get(f"{url}/metrics", timeout=5).text
    age = exposed(text, MODEL_AGE)
    assert abs(age - (time.time() - training_time(published.checkpoint))) < 30, age
    assert age >= exposed(text, "towerline_version_age_seconds") - 1  # trained, then built
    metrics = Metrics()
    assert math.isnan(exposed(metrics.exposition()[0].decode(), MODEL_AGE))  # none loaded
    old = {**rec.bundle.index.manifest}
    old["model"] = {k: v for k, v in old["model"].items() if k != "trained_at"}
    older = dataclasses.replace(
        rec.bundle, index=dataclasses.replace(rec.bundle.index, manifest=old)
    )
    metrics.served(rec.bundle)
    assert exposed(metrics.exposition()[0].decode(), MODEL_AGE) == pytest.approx(age, abs=30)
    metrics.swapped(older)
    assert math.isnan(exposed(metrics.exposition()[0].decode(), MODEL_AGE))
    old.pop("created_at")  # the version's own age: NaN too, not the one before's
    metrics.swapped(older)
    assert math.isnan(exposed(metrics.exposition()[0].decode(), "towerline_version_age_seconds"))


def test_openmetrics_with_exemplars_when_asked_for_and_text_otherwise(served, fans):
    url, _ = served
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with httpx.Client(base_url=url, timeout=10) as client:
        recommend(client, {"user_id": fans[0], "k": 5}, trace_id)
        recommend(client, {"user_id": fans[1], "k": 5}, "0" * 32)  # invalid: all zeros
        some = str(served[1].bundle.index.creator_id[3])  # a sync handler, in a worker thread
        similar_trace = "a" * 32
        headers = {"traceparent": f"00-{similar_trace}-{'1' * 16}-01"}
        assert client.get(f"/similar/{some}", headers=headers).status_code == 200
        om = client.get("/metrics", headers={"Accept": OPENMETRICS})
        text = client.get("/metrics")
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n")
    exemplars = [line for line in om.text.splitlines() if " # {" in line]
    stages = [e for e in exemplars if e.startswith("towerline_stage_seconds_bucket")]
    routes = [e for e in exemplars if e.startswith("towerline_request_seconds_bucket")]
    assert exemplars and len(stages) + len(routes) == len(exemplars)
    assert any(f'trace_id="{trace_id}"' in e for e in routes)
    # the stages that answered the traced request's batch (alone: one in flight) carry it too
    for stage in ("lookup", "encode", "retrieve"):
        assert any(f'stage="{stage}"' in e and trace_id in e for e in stages), stage
    assert any('endpoint="similar"' in e and similar_trace in e for e in exemplars)
    assert "0" * 32 not in om.text
    assert text.headers["content-type"].startswith("text/plain")
    assert " # {" not in text.text and "towerline_cold_starts_total" in text.text


def test_several_workers_add_up_without_exemplars(tmp_path):
    """In prometheus_client's multiprocess mode (serving.workers) exemplars are not stored:
    none are taken, and both expositions still carry the numbers, read from the folder."""
    script = (
        "from serving.api.metrics import TRACE_ID, Metrics\n"
        "a, b = Metrics(), Metrics()\n"
        "TRACE_ID.set('4bf92f3577b34da6a3ce929d0e0e4736')\n"
        "a.timed('recommend', 0.003); b.timed('recommend', 0.2)\n"
        "assert not a.exemplars\n"
        "for accept in (None, 'application/openmetrics-text;version=1.0.0'):\n"
        "    body, kind = a.exposition(accept)\n"
        "    print(kind); print(body.decode())\n"
    )  # fmt: skip
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, cwd=Path(live.REPO))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count('towerline_request_seconds_count{endpoint="recommend"} 2.0') == 2
    assert "application/openmetrics-text" in done.stdout and " # {" not in done.stdout


# -- through a real Prometheus -------------------------------------------------------------------


def test_prometheus_answers_the_p99_of_real_traffic_with_its_traces(served, prometheus, fans):
    url, _ = served
    sent, took = [], []
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(300):  # over a few scrapes, so the rate has points before and after
            trace_id = f"{i + 1:032x}"
            body, seconds = recommend(client, {"user_id": fans[i % len(fans)], "k": 10}, trace_id)
            assert len(body["items"]) == 10 and not body["cold_start"]
            sent.append(trace_id)
            took.append(seconds)
            time.sleep(0.01)
    total = 'sum(towerline_requests_total{endpoint="recommend",status="200"})'
    wait_for(lambda: (query(prometheus, total) or 0) >= 300, 20, "300 requests scraped")
    time.sleep(2)  # a scrape after the last request
    p99 = query(
        prometheus, 'histogram_quantile(0.99, sum by (le) '
        '(rate(towerline_request_seconds_bucket{endpoint="recommend"}[1m])))',
    )  # fmt: skip
    # the handler's time is within the client's round trip: its p99 lies at or under the
    # bucket bound over the slowest round trip (the histogram interpolates inside a bucket)
    ceiling = next((b for b in BUCKETS if b >= max(took)), BUCKETS[-1])
    assert p99 is not None and math.isfinite(p99) and 0 < p99 <= ceiling, (p99, max(took))
    now = time.time()
    found = httpx.get(
        f"{prometheus}/api/v1/query_exemplars", timeout=5,
        params={"query": 'towerline_request_seconds_bucket{endpoint="recommend"}',
                "start": now - 120, "end": now},
    ).json()  # fmt: skip
    traces = {e["labels"]["trace_id"] for s in found["data"] for e in s["exemplars"]}
    # a bucket shows its latest exemplar: some of these requests' traces, whatever came before
    assert traces & set(sent), traces


def test_cold_starts_short_and_empty_answers_and_sizes_move_as_served(served, prometheus, fans):
    url, rec = served
    everyone = [str(c) for c in rec.bundle.index.creator_id]
    asks = (
        [{"user_id": f"nobody-{i}", "k": 5} for i in range(7)]  # cold starts, 5 each
        + [{"user_id": fans[i], "k": 1000} for i in range(4)]  # short: 300 creators
        + [{"user_id": f"nobody-else-{i}", "k": 5, "exclude": everyone} for i in range(3)]
    )  # fmt: skip
    before = served_counts(url)
    with httpx.Client(base_url=url, timeout=10) as client:
        answers = [recommend(client, body)[0] for body in asks]
    sizes = [len(a["items"]) for a in answers]
    cold = sum(a["cold_start"] for a in answers)
    assert cold == 10 and sizes[:7] == [5] * 7 and sizes[11:] == [0] * 3
    assert all(0 < n < 1000 for n in sizes[7:11]), sizes
    want = {
        "towerline_cold_starts_total": cold,
        "towerline_short_answers_total": 4,
        "towerline_empty_answers_total": 3,
        "towerline_result_size_count": len(asks),
        "towerline_result_size_sum": sum(sizes),
    }
    for name, increase in want.items():
        settled(prometheus, f'sum({name}{{endpoint="recommend"}})', before[name] + increase)


def test_the_versions_age_the_models_age_and_the_encoder_are_scraped(served, prometheus, published):
    _, rec = served
    manifest = rec.bundle.index.manifest
    from serving.api.metrics import built_at

    age = query(prometheus, "towerline_version_age_seconds")
    assert age is not None and abs(age - (time.time() - built_at(manifest))) < 30, age
    model_age = query(prometheus, MODEL_AGE)
    trained = training_time(published.checkpoint)
    assert manifest["model"]["trained_at"] == dt.datetime.fromtimestamp(trained, dt.UTC).isoformat()
    assert model_age is not None and abs(model_age - (time.time() - trained)) < 30, model_age
    body = httpx.get(
        f"{prometheus}/api/v1/query", params={"query": "towerline_serving_info == 1"}
    ).json()  # fmt: skip
    (series,) = body["data"]["result"]
    assert series["metric"]["index_version"] == rec.bundle.index_version
    assert series["metric"]["encoder"] == rec.bundle.encoder_name


def test_the_shipped_rules_load_and_evaluate_in_prometheus(served, prometheus):
    shipped = yaml.safe_load(live.RULES_PATH.read_text())["groups"][0]["rules"]
    with httpx.Client(base_url=served[0], timeout=10) as client:  # a fallback's series too
        recommend(client, {"user_id": "nobody-at-all", "k": 5})
    # every series the rules read is one the service exposes (a renamed metric would leave
    # its alert silent forever, not failing)
    for name in sorted({n for r in shipped for n in re.findall(r"towerline_\w+", r["expr"])}):
        wait_for(lambda n=name: query(prometheus, f"count({n})"), 20, f"{name} scraped")

    def evaluated() -> list[dict] | None:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    rules = wait_for(evaluated, 20, "every rule evaluated")
    assert [r["name"] for r in rules] == [r["alert"] for r in shipped]
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r["lastError"]) for r in rules]
    targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]
    (target,) = targets["activeTargets"]
    assert target["health"] == "up" and not target["lastError"], target
