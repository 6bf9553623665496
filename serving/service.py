"""`python -m serving up`: the feature store, the user tower (Triton or in-process) and the HTTP
service, wired from one config; `--detach` leaves them running in the background for `make demo`,
and `down` stops them.

The user tower of every index version is served as a version of one Triton model, `user_tower`,
numbered by the index version's sequence (`v00012-…` → 12): the service asks Triton for exactly
the version its bundle was built for, so each answer names one consistent model/index pair. A
new index version is added to the repository, loaded next to the served one, checked against
the index's probe vectors, and only then swapped in; the old version is unloaded a little later.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common.config import to_yaml
from common.io import write_bytes
from serving.config import ServingConfig
from serving.pipeline.towers import InProcessTowers, TritonTowers
from serving.triton.repository import LOCAL

log = logging.getLogger(__name__)


def materialise_features(cfg: ServingConfig) -> None:
    """Materialise a configured feature-store folder that does not exist yet, from the dataset
    the current index was built from, hashed as its user tower expects."""
    from index import store
    from serving.features.materialise import materialise

    spec = cfg.features
    if "://" not in spec and not Path(spec).exists():
        manifest = store.read_manifest(Path(cfg.index))
        tower = manifest["user_tower"]
        data = cfg.data or manifest["catalog"]["data_dir"]
        log.info("materialising features from %s into %s", data, spec)
        materialise(data, spec, tower["attribute_buckets"], tower["attribute_width"])


@contextlib.contextmanager
def towers(cfg: ServingConfig):
    """The tower provider for the config, with a local Triton server when one is needed."""
    if cfg.encoder == "onnx":
        yield InProcessTowers(rank_store=cfg.rank.store)
        return
    s = cfg.triton
    repository = Path(s.repository)
    if s.url:
        # its repository must be `repository`/local
        yield TritonTowers(repository, s.url, s, rank_store=cfg.rank.store)
        return
    with _local_triton(cfg, repository) as provider:
        yield provider


@contextlib.contextmanager
def _local_triton(cfg: ServingConfig, repository: Path):
    """Towers on a Triton server started here, on a fresh `repository`, and supervised: the
    server is restarted (and its models reloaded) if it dies or hangs, and stopped on exit."""
    from serving.triton.server import TritonServer
    from serving.triton.supervisor import Supervisor

    s = cfg.triton
    _fresh_repository(repository)
    with TritonServer(
        repository / LOCAL,
        http_port=s.http_port or None,
        grpc_port=s.grpc_port or None,
        metrics_port=s.metrics_port or None,
        models=[],
    ) as server:
        url = server.grpc_url if s.protocol == "grpc" else server.http_url
        log.info("Triton ready: gRPC %s, HTTP %s", server.grpc_url, server.http_url)
        provider = TritonTowers(repository, url, s, server, rank_store=cfg.rank.store)
        provider.supervisor = Supervisor(server, on_restart=provider.reload).start()
        try:
            yield provider
        finally:
            provider.supervisor.close()  # stops Triton gracefully, from the thread that restarts it


def _fresh_repository(repository: Path) -> None:
    """An empty local model repository at `repository`/local, for a Triton started here."""
    # the repositories are derived from the index store: start from nothing, so a version left
    # by an earlier run is never loaded
    shutil.rmtree(repository, ignore_errors=True)
    (repository / LOCAL).mkdir(parents=True, exist_ok=True)


def up(cfg: ServingConfig) -> int:
    """Run everything in the foreground until SIGINT/SIGTERM: one service process, or with
    `workers` > 1 the parent of that many (serving.workers)."""
    import faiss
    import uvicorn

    from serving import workers
    from serving.features import open_store

    # uvicorn re-raises the SIGTERM it handled once it has drained: with the default action
    # that ended the process before Triton was stopped and its folders removed
    signal.signal(signal.SIGTERM, lambda *_: log.info("SIGTERM: stopping"))
    materialise_features(cfg)
    with towers(cfg) as provider:
        if cfg.workers > 1:
            return workers.serve(cfg, provider)
        faiss.omp_set_num_threads(cfg.search_threads)
        store = open_store(cfg.features)
        status = provider.supervisor.status if getattr(provider, "supervisor", None) else None
        app = workers.build_app(cfg, store, provider, status)
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False)
    store.close()
    return 0


# -- background mode (make demo) ---------------------------------------------------------------


def run_dir(cfg: ServingConfig) -> Path:
    return Path(cfg.run_dir) if cfg.run_dir else Path("artifacts") / "serving" / cfg.name


def detach(cfg: ServingConfig, wait_s: float) -> int:
    """Start `up` in its own session on the resolved config (written beside its log as
    config.yaml), logging to a file; return once /readyz says ready."""
    folder = run_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    if _alive(folder / "service.pid"):
        print(f"already running (pid {(folder / 'service.pid').read_text().strip()}); "
              f"stop it with `python -m serving down --config ...`")  # fmt: skip
        return 0
    proc = _spawn(cfg, folder)
    return _await_ready(proc, f"http://{cfg.host}:{cfg.port}", folder / "service.log", wait_s)


def _spawn(cfg: ServingConfig, folder: Path) -> subprocess.Popen:
    """Start `up` on the config written to `folder`, in its own session (so `down` stops it
    and its Triton server together), logging to `folder`/service.log; its pid is recorded."""
    write_bytes(folder / "config.yaml", to_yaml(cfg).encode())
    cmd = [sys.executable, "-m", "serving", "up", "--config", str(folder / "config.yaml")]
    log_path = folder / "service.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=os.getcwd()
        )
    (folder / "service.pid").write_text(f"{proc.pid}\n")
    return proc


def _await_ready(proc: subprocess.Popen, url: str, log_path: Path, wait_s: float) -> int:
    """Poll /readyz until the service says ready (0), exits or `wait_s` passes (1)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"the service exited with {proc.returncode}; see {log_path}")
            print(_tail(log_path))
            return 1
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/readyz", timeout=1) as r,
        ):
            info = json.loads(r.read())
            print(
                f"service ready at {url} (pid {proc.pid}): {info['index_version']}, "
                f"model {info['model_version'][:12]}, {info['encoder']}; log {log_path}"
            )
            return 0
        time.sleep(0.5)
    print(f"the service was not ready within {wait_s:.0f} s; see {log_path}")
    return 1


def down(cfg: ServingConfig, wait_s: float = 20.0) -> int:
    pid_file = run_dir(cfg) / "service.pid"
    if not _alive(pid_file):
        print("not running")
        pid_file.unlink(missing_ok=True)
        return 0
    pid = int(pid_file.read_text())
    os.killpg(pid, signal.SIGTERM)  # the service and its Triton server share the session
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.2)
    if _pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    print(f"stopped (pid {pid})")
    return 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours counts as gone
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return status != "Z"
    return True


def _alive(pid_file: Path) -> bool:
    if not pid_file.exists():
        return False
    with contextlib.suppress(ValueError):
        return _pid_alive(int(pid_file.read_text()))
    return False


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""
