"""A real Triton server for the model repositories (serving.triton.repository).

`TritonServer` runs the tritonserver that nvidia-pytriton bundles (the `.venv-triton`
environment, `make triton-env`) on the local repository, bound to 127.0.0.1, in explicit
model-control mode so that versions are added and loaded only when asked (the hot swap). Only
this object can load or unload models: Triton's model-repository API is restricted to requests
carrying a secret made at each start (`control_key`), so another local process cannot unload
the user tower. Its CLI is `python -m serving triton`.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from serving.triton.repository import CONFIG, LOCAL

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
ENV_VARIABLE = "TOWERLINE_TRITON_ENV"
DEFAULT_ENV = REPO / ".venv-triton"
CONTROL_HEADER = "towerline-control-key"
"""The header Triton's model-repository API (load, unload, index) requires (--http-restricted-api
and --grpc-restricted-protocol)."""


class TritonEnvError(FileNotFoundError):
    """The Triton server environment is not installed where we look for it."""


class TritonStartError(RuntimeError):
    """tritonserver exited or did not become ready; the message ends with its log."""


# -- the Triton environment --------------------------------------------------------------------


def triton_env(env_dir: str | Path | None = None) -> Path:
    """The Triton server's virtual environment: `env_dir`, $TOWERLINE_TRITON_ENV, or
    `<repo>/.venv-triton`, checked to hold tritonserver."""
    env = Path(env_dir or os.environ.get(ENV_VARIABLE) or DEFAULT_ENV)
    found = sorted(env.glob("lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    if not found:
        raise TritonEnvError(
            f"no Triton server environment at {env} (looked for lib/python3*/site-packages/"
            f"pytriton/tritonserver/bin/tritonserver); run `make triton-env` in {REPO}, or set "
            f"{ENV_VARIABLE} to a virtual environment with serving/triton-requirements.txt "
            f"installed"
        )
    return env


@functools.cache
def _env_python(env: Path) -> tuple[str, str]:
    """The env's Python version (which stub to use) and the folder of its libpython."""
    code = (
        "import sys, sysconfig; "
        "print(f'{sys.version_info[0]}.{sys.version_info[1]}'); "
        "print(sysconfig.get_config_var('LIBDIR'))"
    )
    out = subprocess.run(
        [str(env / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    version, libdir = out.stdout.split()
    return version, libdir


def _layout(env: Path) -> dict[str, Path]:
    (binary,) = sorted(
        env.glob("lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver")
    )
    server_dir = binary.parents[1]
    return {
        "binary": binary,
        "python_backend": server_dir / "backends" / "python",
        "stubs": server_dir / "python_backend_stubs",
        "libs": server_dir.parents[1] / "nvidia_pytriton.libs",
    }


def prepare_backends(env: Path, work_dir: Path) -> Path:
    """A backend folder whose Python backend has the stub for the env's Python beside it
    (where the backend looks for it); pytriton ships the stubs apart."""
    layout, (version, _) = _layout(env), _env_python(env)
    stub = layout["stubs"] / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonEnvError(
            f"no Python backend stub for Python {version} at {stub}; rebuild the env "
            f"(`make triton-env`) with a Python that nvidia-pytriton supports"
        )
    backends = work_dir / "backends"
    target = backends / "python"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(layout["python_backend"], target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, target / "triton_python_backend_stub")
    return backends


def server_environment(env: Path) -> dict[str, str]:
    """The server's environment: the env's bin first on PATH (the stub's embedded Python finds
    its prefix, hence numpy<2 and onnxruntime, from the `python3` there), libpython and the
    libraries pytriton bundles (the stub links libcudart even on CPU) on LD_LIBRARY_PATH, and
    none of this process's Python settings."""
    _, libdir = _env_python(env)
    skip = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    out = {k: v for k, v in os.environ.items() if k not in skip}
    out["PATH"] = os.pathsep.join([str(env / "bin"), out.get("PATH", "/usr/bin:/bin")])
    libs = [libdir, str(_layout(env)["libs"]), out.get("LD_LIBRARY_PATH", "")]
    out["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    return out


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held together while picked, so distinct)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In a child process: `sig` when the process that started it dies, however it dies
    (Linux's PR_SET_PDEATHSIG; a no-op where there is none)."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG


# -- the server ---------------------------------------------------------------------------------


class TritonServer:
    """A real tritonserver on `repository`, bound to 127.0.0.1, explicit model control.

    `with TritonServer(repo, models=["user_tower"]) as server:` starts it, waits until the
    models are ready and stops it on exit. URLs: `grpc_url` and `http_url` are host:port, as
    tritonclient takes them; `metrics_url` is the Prometheus endpoint. The server runs in its
    own process group, which `stop` ends whole (the Python stubs included); it is also stopped
    at interpreter exit, and with `die_with_parent` killed by the kernel if this process dies
    (Linux; note that is tied to the thread that starts it, so start it from a thread that
    lives as long as the server should).
    """

    def __init__(
        self,
        repository: str | Path,
        models: list[str] | tuple[str, ...] = ("*",),
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        work_dir: str | Path | None = None,
        env_dir: str | Path | None = None,
        startup_timeout_s: float = 60.0,
        exit_timeout_s: int = 5,
        die_with_parent: bool = True,
        restrict_control: bool = True,
        extra_args: list[str] | tuple[str, ...] = (),
    ):
        self.repository = Path(repository).resolve()
        self.models = list(models)
        self._ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self._work_dir = Path(work_dir) if work_dir else None
        self._env_dir = env_dir
        self.startup_timeout_s = startup_timeout_s
        self.exit_timeout_s = exit_timeout_s
        self.die_with_parent = die_with_parent
        self.extra_args = list(extra_args)
        self.restrict_control = restrict_control
        self.control_key: str | None = None
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self._owned_work_dir: Path | None = None
        self._lock = threading.Lock()

    # -- addresses
    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self._ports['grpc']}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self._ports['http']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self._ports['metrics']}/metrics"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    # -- life cycle
    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> TritonServer:
        """Start the server and wait until it and its models are ready (TritonStartError with
        the log's tail when it dies or the timeout passes)."""
        if self.process is not None:
            raise RuntimeError(f"this server is already started (pid {self.pid}); stop() it first")
        if not self.repository.is_dir():
            raise FileNotFoundError(
                f"model repository {self.repository} not found; write one with "
                f"serving.triton.repository.write_repositories (or `python -m serving "
                f"repository --onnx FILE --output DIR`)"
            )
        env = triton_env(self._env_dir)
        self.control_key = secrets.token_urlsafe(24) if self.restrict_control else None
        work, backends = self._prepare_work_dir(env)
        self._launch_until_ready(env, backends, work)
        return self

    def _prepare_work_dir(self, env: Path) -> tuple[Path, Path]:
        """The work folder (the given one, or a temporary one this server owns and removes)
        and the backend folder prepared in it; a temporary one is removed again when that
        fails."""
        work = self._work_dir or Path(tempfile.mkdtemp(prefix="towerline-triton-"))
        self._owned_work_dir = None if self._work_dir else work
        work.mkdir(parents=True, exist_ok=True)
        try:
            backends = prepare_backends(env, work)
        except BaseException:
            self._remove_work_dir()
            raise
        return work, backends

    def _launch_until_ready(self, env: Path, backends: Path, work: Path) -> None:
        """Launch on the chosen ports and free ones for the rest, and wait until ready; tried
        again (3 tries in all) only when a port this picked was taken meanwhile."""
        chosen = {k: v for k, v in self._ports.items() if v}
        for attempt in range(3):  # a picked port can be taken before the server binds it
            free = iter(free_ports(3))
            self._ports = {k: chosen.get(k) or next(free) for k in ("http", "grpc", "metrics")}
            try:
                self._launch(env, backends, work)
                self._wait_ready()
                return
            except TritonStartError as e:
                self.stop(_keep_work_dir=True)  # the error names the log: keep it
                if len(chosen) == 3 or "already in use" not in str(e) or attempt == 2:
                    raise
                log.info("a port was taken while tritonserver started; retrying")
        raise AssertionError("unreachable")

    def _command(self, env: Path, backends: Path) -> list[str]:
        cmd = [
            str(_layout(env)["binary"]),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            f"--http-port={self._ports['http']}",
            f"--grpc-port={self._ports['grpc']}",
            f"--metrics-port={self._ports['metrics']}",
            "--allow-metrics=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            "--model-control-mode=explicit",
            "--log-verbose=0",
        ]
        if self.control_key:
            secret = f"model-repository:{CONTROL_HEADER}={self.control_key}"
            cmd += [f"--http-restricted-api={secret}", f"--grpc-restricted-protocol={secret}"]
        return cmd + [f"--load-model={m}" for m in self.models] + self.extra_args

    def _launch(self, env: Path, backends: Path, work: Path) -> None:
        self.log_path = work / "tritonserver.log"
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self._command(env, backends),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=server_environment(env),
                cwd=work,
                start_new_session=True,  # its own process group: stop() ends the stubs too
                preexec_fn=die_with_parent if self.die_with_parent else None,
            )
        atexit.register(self.stop)
        log.info("tritonserver pid %d on %s (log %s)", self.pid, self.repository, self.log_path)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        named = [m for m in self.models if m != "*"]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonStartError(
                    f"tritonserver exited with code {self.process.returncode} while starting "
                    f"on {self.repository}; log {self.log_path} ends:\n{self.log_tail()}"
                )
            if self.is_ready() and all(self.model_ready(m) for m in named):
                return
            time.sleep(0.1)
        raise TritonStartError(
            f"tritonserver on {self.repository} was not ready after {self.startup_timeout_s} s "
            f"(startup_timeout_s); log {self.log_path} ends:\n{self.log_tail()}"
        )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, _keep_work_dir: bool = False, graceful: bool = True) -> int | None:
        """SIGTERM, wait out Triton's exit timeout, then SIGKILL the whole process group (at
        once when not `graceful`: a hung server). Returns the server's exit code (None when it
        was never started)."""
        with self._lock:
            proc, self.process = self.process, None
        if proc is None:
            return None
        atexit.unregister(self.stop)
        if graceful and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver pid %d ignored SIGTERM; killing it", proc.pid)
        with contextlib.suppress(ProcessLookupError):  # stubs left behind, or the server itself
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
        if not _keep_work_dir:
            self._remove_work_dir()
        return code

    def _remove_work_dir(self) -> None:
        """The temporary work folder this server made, if it made one (not a given one)."""
        if self._owned_work_dir is not None:
            shutil.rmtree(self._owned_work_dir, ignore_errors=True)
            self._owned_work_dir = None

    # -- HTTP API (urllib: nothing beyond the standard library for the launcher)
    def _request(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        timeout: float = 5.0,
        control: bool = False,
    ):
        data = json.dumps(body).encode() if body is not None else None
        headers = {CONTROL_HEADER: self.control_key} if control and self.control_key else {}
        url = f"http://{self.http_url}{path}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            payload = r.read()
        return json.loads(payload) if payload else None

    def _ok(self, path: str, timeout: float = 2.0) -> bool:
        try:
            self._request("GET", path, timeout=timeout)
            return True
        except (urllib.error.URLError, OSError):
            return False

    def is_ready(self) -> bool:
        return self._ok("/v2/health/ready")

    def is_live(self, timeout: float = 1.0) -> bool:
        """The server answers its liveness endpoint within `timeout` (a paused or hung one
        does not)."""
        return self._ok("/v2/health/live", timeout)

    def model_ready(self, name: str, version: str | int = "") -> bool:
        return self._ok(
            f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/ready"
        )

    def load_model(self, name: str, timeout_s: float = 60.0) -> None:
        """(Re)load a model from the repository: new versions are loaded, removed ones unloaded
        (returns when done; raises with Triton's reason on failure)."""
        self._control(name, "load", timeout_s)

    def unload_model(self, name: str, timeout_s: float = 30.0) -> None:
        self._control(name, "unload", timeout_s)

    def _control(self, name: str, action: str, timeout_s: float) -> None:
        try:
            path = f"/v2/repository/models/{name}/{action}"
            self._request("POST", path, {}, timeout_s, control=True)
        except urllib.error.HTTPError as e:
            reason = e.read().decode(errors="replace")
            raise RuntimeError(
                f"Triton could not {action} {name!r}: {reason}; log {self.log_path} ends:\n"
                f"{self.log_tail(15)}"
            ) from None

    def statistics(self, name: str, version: str | int = "") -> dict:
        """Triton's inference statistics of a model: per version, `inference_stats`,
        `inference_count` (items) and `execution_count` (backend runs, i.e. batches)."""
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/stats"
        return self._request("GET", path)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return r.read().decode()

    def repository_index(self) -> list[dict]:
        """Every model in the repository with its versions' states (READY, UNAVAILABLE, ...)."""
        return self._request("POST", "/v2/repository/index", {}, control=True)


# -- command line (`python -m serving triton`) --------------------------------------------------


def add_triton_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repository",
        required=True,
        help="a local model repository, or the root write_repositories wrote (uses its local/)",
    )
    parser.add_argument("--model", action="append", help="model to load (default: all)")
    parser.add_argument("--http-port", type=int)
    parser.add_argument("--grpc-port", type=int)
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--work-dir", help="backends and the server log (default: a temp dir)")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds")


def local_repository(path: str | Path) -> Path:
    """A repository as given, or the local/ one of a write_repositories root."""
    path = Path(path)
    if (path / LOCAL).is_dir() and not any(path.glob(f"*/{CONFIG}")):
        return path / LOCAL
    return path


def cli_triton(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM, then stop cleanly (0), or 1 if the server dies."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = TritonServer(
        local_repository(args.repository),
        models=args.model or ["*"],
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        work_dir=args.work_dir,
        startup_timeout_s=args.startup_timeout,
    )
    with server:
        print(
            f"tritonserver ready (pid {server.pid}) on {server.repository}\n"
            f"  grpc    {server.grpc_url}\n  http    http://{server.http_url}\n"
            f"  metrics {server.metrics_url}\n  log     {server.log_path}\n"
            f"Ctrl-C or SIGTERM stops it.",
            flush=True,
        )
        while not stop.wait(0.5):
            if not server.running():
                print(f"tritonserver exited; log ends:\n{server.log_tail()}", file=sys.stderr)
                return 1
    print("tritonserver stopped", flush=True)
    return 0
