"""A real tritonserver (the .venv-triton environment) serving the user tower: readiness, gRPC and
HTTP against torch, dynamic batching, a version added and retired under load, clean shutdown."""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from index import user_tower
from serving.triton import repository
from serving.triton import server as triton
from serving.triton.client import TritonUnavailable, UserTowerClient
from tests.serving.conftest import UNBATCHED

ONNX_FILE = "user_tower.onnx"

TOLERANCE = 1e-5
MODEL = repository.MODEL_NAME


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (the server and its Python stubs share one)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # pgrp, state; zombies are gone
            members.append(int(stat.parent.name))
    return members


def test_server_is_ready_on_localhost(triton_server):
    assert triton_server.running() and triton_server.is_ready()
    assert triton_server.model_ready(MODEL) and triton_server.model_ready(MODEL, 1)
    for url in (triton_server.grpc_url, triton_server.http_url):
        assert url.startswith("127.0.0.1:")
    assert triton_server.metrics_url.startswith("http://127.0.0.1:")
    states = {
        (m["name"], m.get("version")): m.get("state") for m in triton_server.repository_index()
    }
    assert states[(MODEL, "1")] == "READY"
    assert states.get((UNBATCHED, "1")) != "READY"  # explicit control: loaded only when asked


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_embeddings_match_torch(triton_server, user_batch, protocol):
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    with UserTowerClient(url, protocol, timeout_s=10) as client:
        assert client.ready() and client.ready("1")
        assert client.inputs == ["user", "history", "attributes"]
        assert client.max_batch_size == repository.MAX_BATCH_SIZE
        got = client.encode(user_batch.inputs)
        assert got.dtype == np.float32 and got.shape == user_batch.expected.shape
        np.testing.assert_allclose(got, user_batch.expected, atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(client.encode(user_batch.inputs, "1"), got, atol=0, rtol=0)
    with UserTowerClient(url, protocol, timeout_s=10, max_batch_size=10) as split:
        np.testing.assert_allclose(split.encode(user_batch.inputs), got, atol=TOLERANCE, rtol=0)


def test_thousand_users_and_edge_cases(triton_server, trained, user_batch):
    """1,000 random users with unknown ids, padded and empty histories, over 3 requests."""
    n, a = user_batch.inputs["history"].shape[1], user_batch.inputs["attributes"].shape[1]
    x = user_tower.random_inputs(trained, 1000, n, a, seed=3)
    with torch.no_grad():
        want = trained.model.encode_users(**{k: torch.from_numpy(v) for k, v in x.items()})
    with UserTowerClient(triton_server.grpc_url, timeout_s=10, max_batch_size=400) as client:
        np.testing.assert_allclose(client.encode(x), want.numpy(), atol=TOLERANCE, rtol=0)


def test_client_errors(triton_server, user_batch):
    x = user_batch.inputs
    with UserTowerClient(triton_server.grpc_url, timeout_s=5) as client:
        with pytest.raises(ValueError, match=r"missing user tower inputs \['history'\]"):
            client.encode({k: v for k, v in x.items() if k != "history"})
        with pytest.raises(ValueError, match=r"'history' has shape \[64, 2\]; the server takes"):
            client.encode({**x, "history": x["history"][:, :2]})
        with pytest.raises(TritonUnavailable, match="version 9 is not found"):
            client.encode(x, model_version="9")
        assert not client.ready("9")
    (port,) = triton.free_ports(1)  # nothing listens there
    for protocol in ("grpc", "http"):
        down = UserTowerClient(f"127.0.0.1:{port}", protocol, timeout_s=2)
        assert not down.ready()
        with pytest.raises(TritonUnavailable):
            down.encode(x)
        down.close()


def _hammer(client, inputs, version, requests, errors):
    for i in range(requests):
        try:
            client.encode({k: v[i % 64 : i % 64 + 1] for k, v in inputs.items()}, version)
        except Exception as e:  # every failure is counted, none may happen
            errors.append(e)


def _counts(server, name) -> tuple[int, int]:
    """(successful requests, backend executions) of version 1 so far."""
    (stats,) = server.statistics(name, 1)["model_stats"]
    return stats["inference_stats"]["success"]["count"], stats["execution_count"]


def _metric(text: str, metric: str, model: str) -> float:
    found = re.search(rf'^{metric}{{[^}}]*model="{model}"[^}}]*}} (\S+)$', text, re.M)
    assert found, f"{metric} of {model} not in the metrics"
    return float(found.group(1))


def _settled(server, name: str, at_least: int = 0) -> tuple[tuple[int, int], str]:
    """The statistics and the metrics text once the statistics count `at_least` successes and
    the metrics agree with them: a client gets its answer a moment before the server records
    it (CI once read 317 of 320 finished requests)."""
    deadline = time.monotonic() + 10
    while True:
        counts, text = _counts(server, name), server.metrics()
        agree = (_metric(text, "nv_inference_request_success", name),
                 _metric(text, "nv_inference_exec_count", name)) == counts  # fmt: skip
        if (counts[0] >= at_least and agree) or time.monotonic() > deadline:
            return counts, text
        time.sleep(0.05)


def test_dynamic_batching_joins_concurrent_requests(triton_server, user_batch):
    triton_server.load_model(UNBATCHED)
    try:
        delta = {}
        for name in (MODEL, UNBATCHED):
            before, text = _settled(triton_server, name)
            client, errors = UserTowerClient(triton_server.grpc_url, model_name=name), []
            threads = [
                threading.Thread(target=_hammer, args=(client, user_batch.inputs, "", 40, errors))
                for _ in range(8)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            client.close()
            assert errors == []
            after, text2 = _settled(triton_server, name, before[0] + 8 * 40)
            delta[name] = (after[0] - before[0], after[1] - before[1])
            metric = {
                m: _metric(text2, m, name) - _metric(text, m, name)
                for m in ("nv_inference_request_success", "nv_inference_exec_count")
            }
            assert metric == {
                "nv_inference_request_success": delta[name][0],
                "nv_inference_exec_count": delta[name][1],
            }
        requests, executions = delta[MODEL]
        assert requests == 320 and executions < requests, delta  # batched: fewer runs
        assert delta[UNBATCHED] == (320, 320)  # batching off: one run per request
    finally:
        triton_server.unload_model(UNBATCHED)


def _perturbed(trained):
    """Another model of the same shape: version 2 of the hot swap."""
    other = copy.deepcopy(trained)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.model.user_tower.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return other


class Load:
    """Requests to one version from 2 threads until stopped; every answer is checked."""

    def __init__(self, client, inputs, version, expected):
        self.client, self.inputs, self.version, self.expected = client, inputs, version, expected
        self.done, self.errors, self.stop = [], [], threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(2)]
        for t in self.threads:
            t.start()

    def _run(self):
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                got = self.client.encode(self.inputs, self.version)
                assert np.abs(got - self.expected).max() <= TOLERANCE, "wrong version answered"
                self.done.append((start, time.monotonic()))
            except Exception as e:
                self.errors.append(e)

    def finish(self):
        time.sleep(0.2)
        self.stop.set()
        for t in self.threads:
            t.join()

    def within(self, t0, t1) -> int:
        return sum(1 for s, e in self.done if s >= t0 and e <= t1)


def test_version_added_and_retired_under_load(triton_repositories, trained, user_batch, tmp_path):
    """Version 2 loads beside version 1, then version 1 is retired, while requests flow to
    the version that stays: no request fails and every answer comes from the version asked.
    (Triton 2.51 re-creates every version's instance on each load, new beside old, and switches
    when the new ones are ready; its server-wide readiness is false while a retired version
    unloads, so health checks should ask for the model's readiness.)"""
    repo = tmp_path / "repository"
    shutil.copytree(triton_repositories["local"], repo)
    model_dir = repo / MODEL
    v2 = _perturbed(trained)
    n, a = user_batch.inputs["history"].shape[1], user_batch.inputs["attributes"].shape[1]
    user_tower.export_user_tower(v2, tmp_path / ONNX_FILE, n, a)
    with torch.no_grad():
        x = {k: torch.from_numpy(v) for k, v in user_batch.inputs.items()}
        want2 = v2.model.encode_users(**x).numpy()
    assert np.abs(want2 - user_batch.expected).max() > 0.1

    with triton.TritonServer(repo, models=[MODEL], work_dir=tmp_path / "work") as server:
        client = UserTowerClient(server.grpc_url, timeout_s=10)
        load = Load(client, user_batch.inputs, "1", user_batch.expected)
        time.sleep(0.2)
        repository.add_version(model_dir, tmp_path / ONNX_FILE, 2)
        t0 = time.monotonic()
        server.load_model(MODEL)
        t1 = time.monotonic()
        load.finish()
        assert load.errors == [] and load.within(t0, t1) > 0, (load.errors[:3], len(load.done))
        np.testing.assert_allclose(client.encode(user_batch.inputs, "2"), want2, atol=TOLERANCE)

        load = Load(client, user_batch.inputs, "2", want2)
        time.sleep(0.2)
        repository.remove_version(model_dir, 1)
        t0 = time.monotonic()
        server.load_model(MODEL)
        t1 = time.monotonic()
        load.finish()
        assert load.errors == [] and load.within(t0, t1) > 0, (load.errors[:3], len(load.done))
        assert not client.ready("1") and client.ready("2")
        np.testing.assert_allclose(client.encode(user_batch.inputs), want2, atol=TOLERANCE)
        client.close()
        pgid = server.pid
        assert len(group_members(pgid)) >= 2  # the server and at least one Python stub
    assert server.process is None and not server.running()
    assert group_members(pgid) == []


def test_missing_triton_env_says_how_to_build_it(tmp_path, monkeypatch, triton_repositories):
    missing = tmp_path / "no-env"
    with pytest.raises(
        triton.TritonEnvError, match=r"no Triton server environment .*make triton-env"
    ):
        triton.TritonServer(triton_repositories["local"], env_dir=missing).start()
    monkeypatch.setenv(triton.ENV_VARIABLE, str(missing))
    with pytest.raises(triton.TritonEnvError, match=str(missing)):
        triton.triton_env()


def test_failed_start_raises_with_the_log(triton_repositories, tmp_path):
    repo = tmp_path / "repository"
    shutil.copytree(triton_repositories["local"], repo)
    (repo / MODEL / "1" / "model.onnx").write_bytes(b"not an onnx file")
    server = triton.TritonServer(repo, models=[MODEL], work_dir=tmp_path / "work")
    with pytest.raises(triton.TritonStartError, match=r"(?s)exited with code .*load failed"):
        server.start()
    assert server.process is None and (tmp_path / "work" / "tritonserver.log").is_file()


@pytest.mark.timeout(120)
def test_cli_serves_until_sigterm(triton_repositories, user_batch):
    """`python -m serving triton` as a process: ready, answering, and gone after SIGTERM."""
    root = Path(triton_repositories["local"]).parent  # the write_repositories root: uses local/
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving", "triton", "--repository", str(root), "--model", MODEL],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pid, output = None, []
    try:
        for line in proc.stdout:
            output.append(line)
            if m := re.search(r"ready \(pid (\d+)\)", line):
                pid = int(m.group(1))
            if "SIGTERM stops it" in line:
                break
        text = "".join(output)
        grpc = re.search(r"grpc\s+(127\.0\.0\.1:\d+)", text)
        assert pid and grpc, text
        with UserTowerClient(grpc.group(1), timeout_s=10) as client:
            got = client.encode(user_batch.inputs)
        np.testing.assert_allclose(got, user_batch.expected, atol=TOLERANCE, rtol=0)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, text + rest
        assert "tritonserver stopped" in rest
        assert group_members(pid) == []
    finally:
        if proc.poll() is None:
            proc.kill()  # the server dies with it (PR_SET_PDEATHSIG)
            proc.wait()
        if pid and group_members(pid):
            os.killpg(pid, signal.SIGKILL)


def test_the_model_repository_api_is_closed_to_other_processes(triton_server):
    """Loading and unloading need the per-start secret this service holds: an unauthenticated
    unload over HTTP or gRPC is refused and the model keeps serving."""
    import urllib.error
    import urllib.request

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    url = f"http://{triton_server.http_url}/v2/repository/models/{MODEL}/unload"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=5)
    assert refused.value.code in (401, 403)
    with (
        grpcclient.InferenceServerClient(triton_server.grpc_url) as client,
        pytest.raises(InferenceServerException, match=r"(?i)auth|restricted|permission|header"),
    ):
        client.unload_model(MODEL)
    time.sleep(0.5)
    assert triton_server.model_ready(MODEL)
    assert any(m["name"] == MODEL for m in triton_server.repository_index())  # with the key
