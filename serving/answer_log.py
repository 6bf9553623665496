"""The answer log: a sampled, size-rotated JSON-lines record of what the service answered.

One line per answer, written off the request path by a thread of its own:

    {"ts": "2026-12-02T12:00:00.123+00:00", "route": "recommend",
     "request": {"user_id": "fan_0042", "k": 10, "exclude": []},
     "model_version": "3f2a…", "index_version": "v00012-…",
     "items": ["cr_0007", …], "scores": [0.83, …], "source": "model",
     "cold_start": false, "degraded": null, "timings": {"lookup": 0.0002, …, "batch": 3}}

Sampling is by fan, not by request (a stable hash of the user id against `sample`): a sampled
fan's answers are all logged, so what a fan was shown over time can be set beside what they did
later (the relevance monitor's online recall). The file rotates at `max_bytes` into `.1` …
`.<backups>` (stdlib's RotatingFileHandler), so the log never outgrows `(backups + 1) ×
max_bytes`. When the writer falls behind by `queue_size` lines, new lines are dropped and
counted rather than slowing answers down. Off unless a path is configured.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import logging.handlers
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from serving.pipeline.stages import Answer

_STOP = object()


def sampled(user_id: str, rate: float) -> bool:
    """Whether a fan's answers are logged: the same verdict for the same id, every time."""
    if rate >= 1.0:
        return True
    h = int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=8).digest(), "little")
    return h < rate * 2**64


def record(route: str, request: dict, answer: Answer, versions: dict) -> dict:
    """The JSON object of one answer (the module docstring shows one)."""
    return {
        "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "route": route,
        "request": request,
        **versions,
        "items": answer.creator_ids,
        "scores": [round(s, 6) for s in answer.scores],
        "source": answer.source,
        "cold_start": answer.cold_start,
        "degraded": answer.degraded,
        "timings": answer.timings,
    }


class AnswerLog:
    """Appends sampled answers to `path`, rotating it; `counts` says what became of each."""

    def __init__(
        self,
        path: str | Path,
        sample: float = 1.0,
        max_bytes: int = 64 << 20,
        backups: int = 5,
        queue_size: int = 10_000,
    ):
        if not 0.0 < sample <= 1.0 or max_bytes < 1 or backups < 1:
            raise ValueError(
                f"answer log sample={sample}, max_bytes={max_bytes}, backups={backups}: need "
                f"0 < sample <= 1, max_bytes >= 1 and backups >= 1"
            )
        self.path, self.sample = Path(path), sample
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._queue: queue.Queue = queue.Queue(queue_size)
        self.counts = {"written": 0, "dropped": 0, "unsampled": 0}
        self._thread = threading.Thread(target=self._write, name="answer-log", daemon=True)
        self._thread.start()

    def offer(self, route: str, request: dict, answer: Answer, versions: dict) -> str:
        """Queue one answer if its fan is sampled; returns what became of it."""
        if not sampled(str(request.get("user_id") or request.get("creator_id")), self.sample):
            outcome = "unsampled"
        else:
            try:
                self._queue.put_nowait(record(route, request, answer, versions))
                return "queued"
            except queue.Full:
                outcome = "dropped"
        self.counts[outcome] += 1
        return outcome

    def _write(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            line = json.dumps(item, separators=(",", ":"))
            self._handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
            self.counts["written"] += 1

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then close the file."""
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._handler.close()


def parts(path: str | Path) -> list[Path]:
    """A log's files that exist, oldest first: `.<backups>` … `.1`, then the live file."""
    path = Path(path)
    rotated = sorted(
        path.parent.glob(f"{path.name}.*"),
        key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0,
        reverse=True,
    )
    return [part for part in [*rotated, path] if part.exists()]


def read(path: str | Path) -> Iterator[dict]:
    """Every record of a log and its rotated files, oldest first."""
    for part in parts(path):
        with open(part, encoding="utf-8") as f:
            yield from (json.loads(line) for line in f if line.strip())
