"""`python -m serving up --workers 2` as real processes: a parent with the supervised Triton
and two workers on one port. Both workers answer, /metrics of either counts the requests of
both, a newly published version reaches every worker, a killed worker is replaced while the
other answers, and SIGTERM leaves no process or temporary folder behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from serving.triton.server import free_ports
from tests.conftest import REPO

WORKERS = 2


@pytest.fixture
def service(store_root, features_dir, tmp_path):
    """The parent process (its own session) on a private store copy and temporary folder:
    (process, base URL, store root, scratch folder)."""
    root = tmp_path / "store"
    shutil.copytree(store_root, root)
    port = free_ports(1)[0]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    cmd = [
        sys.executable, "-m", "serving", "up",
        "--config", str(REPO / "configs" / "serving" / "synthetic_demo.yaml"),
        "--index", str(root), "--features", str(features_dir), "--port", str(port),
        "--triton.repository", str(tmp_path / "triton"), "--workers", str(WORKERS),
        "--poll_seconds", "0.5", "--answer_log.path", str(tmp_path / "log" / "answers.arrows"),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "service.log", "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "TMPDIR": str(scratch)},
        )  # fmt: skip
        try:
            _wait(lambda: _ready(url) is not None, 180, f"ready; log: {tmp_path / 'service.log'}")
            yield proc, url, root, scratch
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


def _ready(url: str) -> dict | None:
    """/readyz on a new connection (SO_REUSEPORT hands it to either worker)."""
    try:
        r = httpx.get(f"{url}/readyz", timeout=5)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.2)


def _worker_pids(url: str, tries: int = 40) -> set[int]:
    return {r["pid"] for r in (_ready(url) for _ in range(tries)) if r is not None}


def _post_all(url: str, fans: list[str], clients: int = 8, each: int = 25) -> list[int]:
    """clients × each /recommend requests on keep-alive connections: the status codes."""
    codes: list[int] = []

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as c:
            for j in range(each):
                body = {"user_id": fans[(i * each + j) % len(fans)], "k": 5}
                codes.append(c.post("/recommend", json=body).status_code)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


def _requests_counted(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    pattern = r'^towerline_requests_total\{endpoint="recommend",[^}]*\} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def test_two_workers_answer_and_count_together(service, fans):
    proc, url, _, _ = service
    pids = _worker_pids(url)
    assert len(pids) == WORKERS and proc.pid not in pids, pids
    codes = _post_all(url, fans)
    assert codes == [200] * len(codes) and len(codes) == 200
    # any worker's /metrics counts both workers' answers, exactly
    assert _requests_counted(url) == 200
    ready = _ready(url)
    assert ready["dependencies"]["triton"]["state"] == "running"
    assert ready["dependencies"]["triton"]["published"] == [1]


def test_each_worker_keeps_its_own_answer_log_read_as_one(service, fans, tmp_path):
    from monitoring import answers
    from serving import answer_log

    assert set(_post_all(service[1], fans, clients=8, each=5)) == {200}
    path = tmp_path / "log" / "answers.arrows"
    # each worker writes its batch within the log's flush_seconds (1 s) of its first answer
    _wait(lambda: len(list(answer_log.read(path))) == 40, 20, "40 answers logged")
    names = {p.name for p in path.parent.iterdir()}
    assert names and names <= {"answers.w0.arrows", "answers.w1.arrows"}, names
    got = answers.read(path)
    assert len(got) == 40 and (got.route == "recommend").all() and got.torn == 0
    assert (np.diff(got.ts) >= 0).all()  # one timeline
    assert sorted(got.fan_ids[got.fan].tolist()) == sorted((fans * 40)[:40])


def test_a_new_version_reaches_every_worker(service, fans, tiny_data, tmp_path):
    from index import rebuild
    from tests.index.conftest import index_config, train_tiny

    _, url, root, _ = service
    second = train_tiny(tiny_data, tmp_path / "run2", epochs=1, seed=7, workers=0)
    result = rebuild.run(index_config(root, second, tiny_data))
    assert result.status == "published", result.summary

    def everywhere() -> bool:
        answers = [_ready(url) for _ in range(20)]
        return {a["index_version"] for a in answers if a} == {result.version}

    _wait(everywhere, 90, f"serving {result.version} in every worker")
    assert "user_tower/2" in _ready(url)["encoder"]
    assert set(_post_all(url, fans, clients=4, each=10)) == {200}


def test_a_killed_worker_is_replaced_and_sigterm_leaves_nothing(service, fans, tmp_path):
    proc, url, _, scratch = service
    pids = _worker_pids(url)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    # the other worker answers meanwhile; the parent starts a new one on the same socket
    _wait(lambda: len(_worker_pids(url) - {victim}) == WORKERS, 120, "two live workers again")
    replaced_s = time.monotonic() - killed_at
    assert set(_post_all(url, fans, clients=4, each=10)) == {200}
    print(f"\nworker replaced in {replaced_s:.1f} s")

    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(60) == 0
    session = subprocess.run(
        ["ps", "-s", str(proc.pid), "-o", "pid=,stat=,args="], capture_output=True, text=True
    ).stdout.splitlines()
    assert [line for line in session if line.split()[1][0] != "Z"] == []
    left = [p.name for p in scratch.iterdir() if p.name.startswith("towerline-")]
    assert left == [], f"temporary folders left behind: {left}"
    triton = subprocess.run(["pgrep", "-f", str(tmp_path / "triton")], capture_output=True)
    assert triton.stdout == b"", "a tritonserver or stub of the service is still running"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=2)


def test_workers_stop_when_their_parent_is_killed(service):
    proc, url, _, _ = service
    pids = _worker_pids(url)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to stop them: the kernel tells them
    proc.wait(10)

    def gone() -> bool:
        return not any(os.path.exists(f"/proc/{pid}") for pid in pids)

    _wait(gone, 30, f"workers {sorted(pids)} stopped")
