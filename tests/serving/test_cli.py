"""`python -m serving up --detach | try | down` (as `make demo` runs them); the shipped configs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from common.config import load
from common.errors import ConfigError
from serving.config import ENCODERS, ServingConfig
from serving.triton.server import free_ports
from tests.conftest import REPO


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "serving").glob("*.yaml")))
def test_every_shipped_serving_config_loads(path):
    cfg = load(ServingConfig, path)
    assert cfg.name == path.stem
    assert cfg.encoder in ENCODERS


def test_a_bad_serving_config_names_the_field():
    path = REPO / "configs" / "serving" / "synthetic_demo.yaml"
    with pytest.raises(ConfigError, match="colour"):
        load(ServingConfig, path, ["--colour", "blue"])
    with pytest.raises(ConfigError, match="--encoder='tensorflow'"):
        load(ServingConfig, path, ["--encoder", "tensorflow"])
    with pytest.raises(ConfigError, match="grpc_prot"):
        load(ServingConfig, path, ["--triton.grpc_prot", "1"])
    with pytest.raises(ConfigError, match=r"--answer_log.sample=0\.0"):
        load(ServingConfig, path, ["--answer_log.sample", "0"])
    with pytest.raises(ConfigError, match=r"--rank.mmr=1\.5 must be in \[0, 1\]"):
        load(ServingConfig, path, ["--rank.mmr", "1.5"])
    with pytest.raises(ConfigError, match="set one of them to 0"):
        load(ServingConfig, path, ["--rank.mmr", "0.2", "--rank.calibration", "0.2"])


def test_up_detached_answers_then_down_stops_everything(published, tmp_path):
    """The demo's path: materialise on first start, Triton + service in the background, real
    answers through `try`, and `down` leaves no process behind."""
    store = tmp_path / "store"
    shutil.copytree(published.store, store)
    port = free_ports(1)[0]
    args = [
        "--config", str(REPO / "configs" / "serving" / "synthetic_demo.yaml"),
        "--index", str(store), "--features", str(tmp_path / "features"), "--port", str(port),
        "--run_dir", str(tmp_path / "run"), "--triton.repository", str(tmp_path / "triton"),
        "--answer_log.path", str(tmp_path / "run" / "answers.arrows"),
    ]  # fmt: skip

    scratch = tmp_path / "scratch"  # the service's temporary folders (Triton's work folder)
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}

    def serving(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "serving", *command, *args],
            cwd=REPO, capture_output=True, text=True, timeout=240, env=env,
        )  # fmt: skip

    up = serving("up", "--detach")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "service ready" in up.stdout and "triton" in up.stdout
        assert (tmp_path / "features" / "manifest.json").exists()  # materialised on first start
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            ready = json.loads(r.read())
        assert ready["ready"] and "user_tower/1" in ready["encoder"]
        tried = serving("try", "--users", "2")
        assert tried.returncode == 0, tried.stdout + tried.stderr
        assert tried.stdout.count("(model;") == 2
        assert "cold start: popular creators" in tried.stdout
        assert f"http://127.0.0.1:{port}/docs" in tried.stdout
        assert f"The relevance explorer: http://127.0.0.1:{port}/explorer" in tried.stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/explorer", timeout=5) as r:
            assert b"Towerline explorer" in r.read()  # the room is mounted by the real service
        again = serving("up", "--detach")
        assert again.returncode == 0 and "already running" in again.stdout
        pid = int((tmp_path / "run" / "service.pid").read_text())
    finally:
        down = serving("down")
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    # live processes of the service's session (Triton, its stubs); a zombie waiting for init to
    # reap it is gone already
    session = subprocess.run(
        ["ps", "-s", str(pid), "-o", "pid=,stat=,args="], capture_output=True, text=True
    ).stdout.splitlines()
    leftover = [line for line in session if line.split()[1][0] != "Z"]
    assert leftover == [], f"processes left in the service's session: {leftover}"
    assert not os.path.exists(tmp_path / "run" / "service.pid")
    # Triton was stopped by the service, not killed with it: its work folder is gone too
    # (onnxruntime keeps a `.ses` file of its own in the temporary folder)
    ours = [p.name for p in scratch.iterdir() if p.name.startswith("towerline-")]
    assert ours == [], f"temporary folders left behind: {ours}"
    triton = subprocess.run(["pgrep", "-f", str(tmp_path / "triton")], capture_output=True)
    assert triton.stdout == b"", "a tritonserver or stub of the service is still running"
