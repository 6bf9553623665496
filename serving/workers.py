"""The service's processes: one app built from a config (`build_app`), and several worker
processes on one port (`serve`, `python -m serving up --workers N`).

One Python process answers at most about one core's worth of HTTP (the GIL): on 2 cores one
process topped out near 1,800 requests/s at 24 in flight with the machine ~80 % idle, where two
independent processes answered 2,900-4,800 (BENCHMARKS.md, issue 14). With `workers` > 1 the
process started by `up` becomes the parent of N uvicorn workers sharing the listening socket:

- the parent owns what there must be one of: the supervised Triton server, and the publishing
  of index versions to it (`Publisher`: a new `current` version is added, loaded and answering
  before the workers may use it; the newest two stay loaded, older ones are retired);
- each worker (`worker_app`) loads the bundle, opens the feature store and answers with its own
  batcher, breakers and in-process ONNX fallback; it polls the index store as one process
  would, and uses a version's tower on Triton once the parent lists it as published
  (serving.pipeline.towers.SharedTritonTowers).

They share a state folder (a temporary one, removed at exit): `triton.json`, the parent's view
of Triton written every second (the supervisor's status and the published versions) that the
workers report in /readyz, and `metrics/`, prometheus_client's multiprocess folder, so that
/metrics from any worker counts the requests of all of them. A worker the parent lost (killed,
crashed) is started again by uvicorn's supervisor; a worker whose parent died stops itself.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from prometheus_client import multiprocess
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from common.errors import FAILED, OK, UnavailableError
from common.io import write_bytes
from common.logs import setup_logging
from index import store as index_store
from serving import memory
from serving.answer_log import AnswerLog, worker_path
from serving.api.app import create_app
from serving.config import ServingConfig
from serving.pipeline.recommender import Recommender
from serving.pipeline.stages import Rank
from serving.pipeline.towers import READY_TIMEOUT_S, InProcessTowers, SharedTritonTowers
from serving.triton.client import TritonUnavailable
from serving.triton.server import die_with_parent

log = logging.getLogger(__name__)

STATE_FILE = "triton.json"
STALE_S = 5.0
"""The parent writes its view of Triton every second: older than this, a worker reports
Triton's state as unknown (the parent is stuck or gone)."""
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when first imported
SLOT_ENV = "TOWERLINE_WORKER_SLOT"
"""A worker's slot (0 … workers − 1), set for it by the parent: which answer log file is its own.
A replaced worker takes its slot, and so its predecessor's file (rotated on opening)."""


# -- one process ------------------------------------------------------------------------------


def build_app(cfg: ServingConfig, store, provider, triton_status=None):
    """The HTTP app of one service process: a recommender over `store` and the tower
    `provider`, serving the index store's current version."""
    if cfg.lock_memory:  # before the version loads: its pages are locked as they are read
        memory.lock()
    r = cfg.rank
    rank = Rank(r.candidates if r.store else 0, mmr=r.mmr, calibration=r.calibration)
    recommender = Recommender(cfg.index, store, provider, verify=cfg.verify, rank=rank)
    if triton_status is not None:
        recommender.health["triton"] = triton_status
    _first_bundle(recommender)
    freeze_heap()
    recommender.on_swap.append(lambda _bundle: freeze_heap())
    b = recommender.bundle
    log.info(
        "process %d serves %s (model %s) with %s on http://%s:%d",
        os.getpid(), b.index_version, b.model_version[:12], b.encoder_name, cfg.host, cfg.port,
    )  # fmt: skip
    return create_app(
        recommender,
        poll_seconds=cfg.poll_seconds or None,
        max_batch=cfg.max_batch,
        batch_workers=cfg.batch_workers,
        max_body_bytes=cfg.max_body_bytes,
        opentelemetry=cfg.opentelemetry,
        rooms=cfg.rooms,
        search_settings=cfg.search,
        answer_log=_answer_log(cfg),
    )


def _answer_log(cfg: ServingConfig) -> AnswerLog | None:
    """This process's answer log: the configured file, or its worker's file beside it."""
    c = cfg.answer_log
    if not c.path:
        return None
    slot = os.environ.get(SLOT_ENV)
    path = worker_path(c.path, int(slot) if slot is not None else None)
    return AnswerLog(path, c.sample, c.max_bytes, c.backups)


def _first_bundle(recommender: Recommender) -> None:
    """Load the current version, waiting out a user-tower server that does not answer yet (a
    worker started again while Triton restarts); anything else fails the start at once."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            recommender.refresh()
            return
        except (TritonUnavailable, UnavailableError) as e:
            if time.monotonic() > deadline:
                raise
            log.warning("no bundle yet (%s); trying again in 1 s", e)
            time.sleep(1.0)


def freeze_heap() -> None:
    """Move everything loaded so far (the bundle: a million-entry id map, the index) out of the
    garbage collector's sight: a full collection otherwise walks it all, a pause of hundreds of
    milliseconds that lands on whichever requests are in flight."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


# -- the parent ---------------------------------------------------------------------------------


class Publisher:
    """In the parent: puts each new current index version on Triton before the workers may
    swap to it, retires versions older than the newest `keep`, and writes Triton's state
    (`triton.json`) every second for the workers."""

    def __init__(self, provider, index_root: str, poll_s: float, state: Path, keep: int = 2):
        self.provider, self.root, self.poll_s = provider, Path(index_root), poll_s
        self.path, self.keep = state / STATE_FILE, keep
        self.published: list[tuple[str, int]] = []  # (index version, model version), oldest first
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    def __enter__(self) -> Publisher:
        self.publish_current()  # the first version: a failure fails the start
        self.write()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10.0)

    def publish_current(self) -> None:
        current = index_store.current_version(self.root)
        if current is None or (self.published and self.published[-1][0] == current):
            return
        number = self.provider.publish(index_store.versions_dir(self.root) / current, current)
        self.published.append((current, number))
        self.last_error = None
        log.info("published %s on Triton as version %d", current, number)
        while len(self.published) > self.keep:
            _, old = self.published.pop(0)
            self.provider.retire(old)

    def write(self) -> None:
        supervisor = getattr(self.provider, "supervisor", None)
        triton = supervisor.status() if supervisor is not None else {"state": "running"}
        state = {
            "triton": triton | {"published": [n for _, n in self.published]},
            "last_publish_error": self.last_error,
            "written_at": time.time(),
        }
        write_bytes(self.path, json.dumps(state).encode())

    def _run(self) -> None:
        next_poll = time.monotonic() + self.poll_s
        while not self._stop.wait(1.0):
            if self.poll_s and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.poll_s
                try:
                    self.publish_current()
                except Exception as e:  # Triton down or hung: retried at the next poll
                    self.last_error = f"{type(e).__name__}: {str(e)[:300]}"
                    log.error("could not publish the current version: %s", self.last_error)
            try:
                self.write()
            except OSError as e:
                log.error("could not write %s: %s", self.path, e)


@dataclass
class WorkerSpec:
    """What a worker process is started with (it is pickled to the spawned process)."""

    cfg: ServingConfig
    state: str
    triton_url: str | None
    """The parent's Triton; None = the tower runs in-process (encoder onnx)."""
    parent: int
    quiet: bool = False


def serve(cfg: ServingConfig, provider) -> int:
    """Run `cfg.workers` worker processes on the configured port until SIGINT/SIGTERM;
    `provider` is the parent's tower provider (a TritonTowers it publishes to, or in-process)."""
    state = Path(tempfile.mkdtemp(prefix="towerline-workers-"))
    (state / "metrics").mkdir()
    os.environ[MULTIPROC_ENV] = str(state / "metrics")
    try:
        triton = not isinstance(provider, InProcessTowers)
        url = provider.url if triton else None
        quiet = logging.getLogger().level >= logging.WARNING  # as the parent was told
        spec = WorkerSpec(cfg, str(state), url, os.getpid(), quiet)
        config = uvicorn.Config(
            functools.partial(worker_app, spec), factory=True, host=cfg.host, port=cfg.port,
            workers=cfg.workers, log_level="warning", access_log=False,
        )  # fmt: skip
        publisher = Publisher(provider, cfg.index, cfg.poll_seconds, state) if triton else None
        with publisher or contextlib.nullcontext():
            workers = Workers(config, state / "metrics")
            log.info("%d workers on http://%s:%d", cfg.workers, cfg.host, cfg.port)
            workers.run()
        failed = [p.pid for p in workers.processes if p.exitcode == STARTUP_FAILURE]
        if failed:
            log.error("worker %s could not start (see its log above): stopped", failed)
            return FAILED
        return OK
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(state, ignore_errors=True)


class Workers(Multiprocess):
    """uvicorn's worker supervisor, with a listening socket per worker, all bound to the port
    with SO_REUSEPORT: the kernel spreads new connections over the workers. With one shared
    socket the first worker to wake accepts every pending connection, and keep-alive clients
    stay where they landed (16 benchmark connections all went to one of two workers). A
    worker that dies is started again on its own socket, where connections wait meanwhile; its
    live gauges leave the metrics folder (its counters stay: what it answered still counts)."""

    def __init__(self, config, metrics_dir: Path):
        super().__init__(config, sockets=[])
        self.metrics_dir = str(metrics_dir)
        self.slots = reuseport_sockets(config.host, config.port, config.workers)

    def init_processes(self) -> None:
        for slot in range(len(self.slots)):
            self.processes.append(self._start(slot))

    def keep_subprocess_alive(self) -> None:
        for i, process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung: gone for good
            process.join()
            multiprocess.mark_process_dead(process.pid, self.metrics_dir)
            if process.exitcode == STARTUP_FAILURE:  # broken: it would fail again and again
                log.error("worker %d failed to start: stopping the service", process.pid)
                self.should_exit.set()
                return
            log.warning("worker %d died (exit code %s): starting another", process.pid,
                        process.exitcode)  # fmt: skip
            self.processes[i] = self._start(i)

    def restart_all(self) -> None:  # SIGHUP
        for i, old in enumerate(self.processes):
            new = self._start(i)
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                log.error("the new worker %d was not ready: keeping %d", new.pid, old.pid)
                return
            old.terminate()
            old.join()
            self.processes[i] = new

    def handle_ttin(self) -> None:
        log.warning("SIGTTIN ignored: the number of workers is --workers")

    handle_ttou = handle_ttin

    def _start(self, slot: int) -> Process:
        process = Process(self.config, [self.slots[slot]])
        os.environ[SLOT_ENV] = str(slot)  # the child (spawned) starts with the parent's env
        try:
            process.start()
        finally:
            os.environ.pop(SLOT_ENV, None)
        return process


def reuseport_sockets(host: str, port: int, n: int) -> list[socket.socket]:
    """n listening sockets on one port (0: a free one, the same for all)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    out = []
    for _ in range(n):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        port = sock.getsockname()[1]
        sock.listen(2048)
        sock.set_inheritable(True)
        out.append(sock)
    return out


# -- a worker -----------------------------------------------------------------------------------


def worker_app(spec: WorkerSpec):
    """The app of one worker process (uvicorn's app factory, called in the worker). A worker
    that cannot start exits with uvicorn's STARTUP_FAILURE, which stops the parent rather than
    starting it again forever."""
    setup_logging(spec.quiet)
    _stop_with_parent(spec.parent)
    try:
        return _worker_app(spec)
    except Exception:
        log.exception("worker %d could not start", os.getpid())
        sys.exit(STARTUP_FAILURE)


def _worker_app(spec: WorkerSpec):
    import faiss

    from serving.features import open_store

    cfg, state = spec.cfg, Path(spec.state)
    faiss.omp_set_num_threads(cfg.search_threads)
    store = open_store(cfg.features)
    if spec.triton_url is None:
        return build_app(cfg, store, InProcessTowers(rank_store=cfg.rank.store))

    def published() -> list[int]:
        return read_state(state)["triton"].get("published", [])

    s = cfg.triton
    provider = SharedTritonTowers(
        Path(s.repository), spec.triton_url, s, published, rank_store=cfg.rank.store
    )
    return build_app(cfg, store, provider, lambda: read_state(state)["triton"])


def read_state(state: Path) -> dict:
    """The parent's last word on Triton; state `unknown` when it is missing or stale."""
    try:
        info = json.loads((state / STATE_FILE).read_text())
    except (OSError, ValueError) as e:
        return {"triton": {"state": "unknown", "last_error": f"no word from the parent: {e}"}}
    age = time.time() - info["written_at"]
    if age > STALE_S:
        stale = f"the parent's last word is {age:.0f} s old"
        info["triton"] |= {"state": "unknown", "last_error": stale}
    return info


def _stop_with_parent(parent: int) -> None:
    """SIGTERM this worker (a graceful stop) when the parent dies, even by SIGKILL."""
    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)
