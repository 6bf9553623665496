"""A throwaway redis-server on loopback for tests: the real server, never a mock.

`redis_server()` starts one on a free port with persistence off (`--save '' --appendonly no`) in
a temporary folder, waits until it answers PING and stops it on exit. The child is also asked to
die with its parent (Linux `PR_SET_PDEATHSIG`), so a test run killed outright leaves no server
behind either.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

REDIS_SERVER = shutil.which("redis-server")
MISSING_REASON = (
    "redis-server is not installed: `apt-get install redis-server` (Debian) or "
    "`brew install redis` to run the Redis feature-store tests"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the process that started it dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A running server; `stop`, `pause` and `resume` simulate outages."""

    process: subprocess.Popen
    port: int
    folder: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung server)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Start it again on the same port and folder (it loads the dump a SAVE left there)."""
        self.stop()
        with open(os.path.join(self.folder, "redis.log"), "ab") as log:
            self.process = _start(self.port, self.folder, log).process

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.resume()  # a stopped process would not act on SIGTERM until continued
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def _start(port: int, folder: str, log) -> RedisServer:
    args = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", folder, "--daemonize", "no"]
    process = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
    )
    server = RedisServer(process, port, folder)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return server  # exited: most likely the port was taken meanwhile
        if _answers_ping(port):
            return server
        time.sleep(0.02)
    server.stop()
    raise RuntimeError(f"redis-server on port {port} did not answer PING within 10 s")


@contextlib.contextmanager
def redis_server(attempts: int = 3) -> Iterator[RedisServer]:
    """Start a redis-server on a free loopback port; stop it and remove its folder on exit."""
    if REDIS_SERVER is None:
        raise RuntimeError(MISSING_REASON)
    folder = tempfile.mkdtemp(prefix="towerline-redis-")
    log_path = os.path.join(folder, "redis.log")
    server = None
    try:
        with open(log_path, "ab") as log:
            for _ in range(attempts):
                server = _start(_free_port(), folder, log)
                if server.process.poll() is None:
                    break
            else:
                with open(log_path, errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"redis-server did not start in {attempts} tries; log:\n{tail}")
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
