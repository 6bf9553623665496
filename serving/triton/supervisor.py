"""Supervision of the Triton server the service started: a dead or unresponsive server is
restarted, with backoff, and the served model versions are loaded again, with no operator.

Every `interval_s` the supervisor checks that the process runs and answers its liveness
endpoint within `interval_s`. An exited server is restarted at once; one that does not answer
`hung_checks` times in a row (paused, deadlocked) is killed, its whole process group with its
Python-backend stubs, then restarted on the same ports, so the clients' URLs stay valid. A
start that fails is retried after 1, 2, 4 … up to `max_backoff_s` seconds. After a start,
`on_restart` loads the model versions the service holds in the repository. Meanwhile the
encode stage's breaker sends nothing to Triton and answers from the in-process tower; its next
trial after the restart brings the traffic back.

The supervisor thread starts Triton again itself, so Triton's die-with-parent signal is tied to
a thread that lives as long as the service: `close()` stops the server gracefully from that
thread before it ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from serving.triton.server import TritonServer

log = logging.getLogger(__name__)

RUNNING, RESTARTING = "running", "restarting"


class Supervisor:
    def __init__(
        self,
        server: TritonServer,
        on_restart: Callable[[], None],
        interval_s: float = 1.0,
        hung_checks: int = 3,
        max_backoff_s: float = 30.0,
    ):
        self.server, self.on_restart = server, on_restart
        self.interval_s, self.hung_checks, self.max_backoff_s = (
            interval_s, hung_checks, max_backoff_s,
        )  # fmt: skip
        self.state = RUNNING
        self.restarts = 0
        self.last_error: str | None = None
        self.down_since: float | None = None
        self._misses = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="triton-supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop watching and stop the server gracefully (from the supervising thread)."""
        self._stop.set()
        self._thread.join(timeout_s)
        self.server.stop()  # a no-op when the thread already stopped it

    def status(self) -> dict:
        return {
            "state": self.state,
            "pid": self.server.pid,
            "restarts": self.restarts,
            "down_for_s": round(time.monotonic() - self.down_since, 1)
            if self.down_since is not None
            else None,
            "last_error": self.last_error,
        }

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                self.check()
        finally:
            self.server.stop()

    def check(self) -> None:
        """One round: restart the server if it exited, or has not answered for a while."""
        if not self.server.running():
            code = self.server.process.poll() if self.server.process else None
            self._restart(f"tritonserver exited (code {code})")
        elif not self.server.is_live(timeout=self.interval_s):
            self._misses += 1
            if self._misses >= self.hung_checks:
                self._restart(
                    f"tritonserver did not answer for {self._misses} checks of "
                    f"{self.interval_s:g} s (hung or paused)"
                )
        else:
            self._misses = 0

    def _restart(self, reason: str) -> None:
        self.state, self.last_error, self._misses = RESTARTING, reason, 0
        self.down_since = time.monotonic()
        log.warning("%s; restarting it", reason)
        delay = 1.0
        while not self._stop.is_set():
            self.server.stop(graceful=False)  # the whole group: the stubs of a killed server
            try:
                self.server.start()
                self.on_restart()
            except Exception as e:
                self.last_error = f"restart failed: {type(e).__name__}: {str(e)[:300]}"
                log.warning("%s; next try in %.0f s", self.last_error, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_backoff_s)
                continue
            self.restarts += 1
            log.warning(
                "tritonserver restarted (pid %d) %.1f s after it went down; models reloaded",
                self.server.pid, time.monotonic() - self.down_since,
            )  # fmt: skip
            self.state, self.down_since = RUNNING, None
            return
