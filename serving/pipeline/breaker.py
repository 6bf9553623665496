"""A circuit breaker per dependency (Triton, the feature store), and the log of its outages.

Closed, calls go through. After `failures` failures in a row the breaker opens: calls are
refused at once (no timeout waited) for `cooldown_s`, doubling up to `max_cooldown_s` while the
dependency stays down. Then one trial call is let through (half-open): a success closes the
breaker, a failure opens it again. So a hung dependency costs one timeout per cooldown, not
one per batch, and a dependency that comes back gets traffic again within `max_cooldown_s`
(8 s: one trial timeout every 8 s is little to pay), without an operator.

The log says when an outage starts, how it goes every `report_every_s` at most (with the count
of failures since), and when it ends: a few lines per outage, not one per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Breaker:
    def __init__(
        self,
        name: str,
        failures: int = 2,
        cooldown_s: float = 1.0,
        max_cooldown_s: float = 8.0,
        report_every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if failures < 1 or cooldown_s <= 0 or max_cooldown_s < cooldown_s:
            raise ValueError(
                f"breaker {name}: failures={failures}, cooldown_s={cooldown_s}, max_cooldown_s="
                f"{max_cooldown_s}: need failures >= 1 and 0 < cooldown_s <= max_cooldown_s"
            )
        self.name, self.failures, self.clock = name, failures, clock
        self.base_cooldown, self.max_cooldown, self.report_every = (
            cooldown_s, max_cooldown_s, report_every_s,
        )  # fmt: skip
        self._lock = threading.Lock()
        self.state = CLOSED
        self.streak = 0  # failures in a row
        self.cooldown = cooldown_s
        self.opened_at = 0.0  # when it last opened: the cooldown runs from here
        self.outage_started = 0.0
        self.outage_failures = 0
        self.last_report = 0.0
        self.last_error = ""
        self.opened = 0  # outages so far (for metrics)

    def allow(self) -> bool:
        """Whether a call may go to the dependency now (one trial at a time once the cooldown
        has passed)."""
        with self._lock:
            if self.state == CLOSED:
                return True
            if self.state == OPEN and self.clock() - self.opened_at >= self.cooldown:
                self.state = HALF_OPEN
                return True
            return False

    def success(self) -> None:
        with self._lock:
            if self.state != CLOSED:
                log.warning(
                    "%s is back after %.1f s (%d failed or refused calls)",
                    self.name, self.clock() - self.outage_started, self.outage_failures,
                )  # fmt: skip
            self.state, self.streak, self.cooldown = CLOSED, 0, self.base_cooldown
            self.outage_failures = 0

    def failure(self, error: BaseException | str) -> None:
        with self._lock:
            self.streak += 1
            self.outage_failures += 1
            self.last_error = (
                f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
            )
            now = self.clock()
            if self.state == HALF_OPEN:  # the trial failed: wait longer
                self.cooldown = min(self.cooldown * 2, self.max_cooldown)
                self._open(now)
                self._report(now)
            elif self.state == CLOSED and self.streak >= self.failures:
                self._open(now)
                self.opened += 1
                self.outage_started = self.last_report = now
                log.warning(
                    "%s unavailable, calls stop waiting on it for %.1f s at a time: %s",
                    self.name, self.cooldown, self.last_error[:300],
                )  # fmt: skip
            elif self.state != CLOSED:
                self._report(now)

    def call(self, fn, *args):
        """`fn(*args)` through the breaker: its result, or None when the breaker refused the
        call or the call raised (counted as a failure)."""
        if not self.allow():
            self.refused()
            return None
        try:
            out = fn(*args)
        except Exception as e:
            self.failure(e)
            return None
        self.success()
        return out

    def refused(self) -> None:
        """A call the open breaker turned away (counted in the outage, not a new failure)."""
        with self._lock:
            self.outage_failures += 1
            self._report(self.clock())

    def _report(self, now: float) -> None:
        """How the outage goes, every report_every_s at most."""
        if now - self.last_report >= self.report_every:
            self.last_report = now
            log.warning(
                "%s still unavailable (%d failed or refused calls in %.0f s): %s",
                self.name, self.outage_failures, now - self.outage_started,
                self.last_error[:300],
            )  # fmt: skip

    def _open(self, now: float) -> None:
        self.state, self.opened_at = OPEN, now

    def status(self) -> dict:
        with self._lock:
            return {"state": self.state, "failures_in_a_row": self.streak,
                    "last_error": self.last_error[:300] or None}  # fmt: skip
