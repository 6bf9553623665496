"""The answer log: a sampled, size-rotated record of what the service answered, in Arrow IPC
stream files (`.arrows`) of fixed schema.

Each answer is one record; `record` makes it and `read` gives it back, as a dict people can read:

    {"ts": "2026-12-02T12:00:00.123+00:00", "route": "recommend",
     "request": {"user_id": "fan_0042", "k": 10, "exclude": []},
     "model_version": "3f2a…", "index_version": "v00012-…",
     "items": ["cr_0007", …], "scores": [0.83, …], "source": "model",
     "cold_start": false, "degraded": null, "timings": {"lookup": 0.0002, …, "batch": 3}}

(`python -m monitoring log PATH` prints them as JSON lines.) On disk the records are columns
(`SCHEMA`): the relevance monitor reads them without parsing text, which was two thirds of its
time with JSON lines (issue 18 asks it for >= 100,000 answers per second per core). A writer
thread of its own gathers records into a batch of up to `batch_rows`, written at most
`flush_seconds` after its first record, so no answer waits on the disk and no record sits in
memory for long. A batch is the unit of loss: a service killed mid-write leaves a torn last
batch, which readers count and skip (`read_stream`).

Sampling is by fan, not by request (a stable hash of the user id against `sample`): a sampled
fan's answers are all logged, so what a fan was shown over time can be set beside what they did
later (the relevance monitor's online recall). A file rotates at `max_bytes` into `.1` …
`.<backups>`, so one log never outgrows about `(backups + 1) × max_bytes`; a service that
starts again rotates the file it finds (a stream has one header). Service processes each keep
their own log (`worker_path`: `answers.w0.arrows`, …), found together by `streams`. When the
writer falls behind by `queue_size` records, new ones are dropped and counted rather than
slowing answers down. Off unless a path is configured.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from serving.pipeline.stages import Answer, Encode, Fallback, Filter, Lookup, Rank, Retrieve

STAGES = tuple(s.name for s in (Lookup, Encode, Retrieve, Filter, Rank, Fallback))
"""The timed stages an answer's `timings` keep (serving.pipeline.stages), with `batch`, the
size of the answer's batch; other keys are not logged."""

SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("ms", tz="UTC")),
        ("route", pa.string()),
        ("user_id", pa.string()),
        ("creator_id", pa.string()),
        ("k", pa.int32()),
        ("request", pa.string()),  # the whole request as JSON: what was asked, for people
        ("model_version", pa.string()),
        ("index_version", pa.string()),
        ("items", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float32())),
        ("source", pa.string()),
        ("cold_start", pa.bool_()),
        ("degraded", pa.string()),
        ("timings", pa.struct([(name, pa.float64()) for name in (*STAGES, "batch")])),
    ]
)
"""The one definition of the log's columns (the monitor reads them by these names)."""

_AS_IS = ("model_version", "index_version", "items", "scores", "source", "cold_start", "degraded")
_STOP = object()


def sampled(user_id: str, rate: float) -> bool:
    """Whether a fan's answers are logged: the same verdict for the same id, every time."""
    if rate >= 1.0:
        return True
    h = int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=8).digest(), "little")
    return h < rate * 2**64


def record(route: str, request: dict, answer: Answer, versions: dict) -> dict:
    """One answer as a dict (the module docstring shows one)."""
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


def to_batch(records: list[dict]) -> pa.RecordBatch:
    """Records as one batch of SCHEMA (times parsed by Arrow, requests kept whole as JSON)."""
    requests = [r["request"] for r in records]
    timings = [{n: r["timings"].get(n) for n in (*STAGES, "batch")} for r in records]
    columns = {
        "ts": pa.array([r["ts"] for r in records], pa.string()).cast(SCHEMA.field("ts").type),
        "route": [r["route"] for r in records],
        "user_id": [q.get("user_id") for q in requests],
        "creator_id": [q.get("creator_id") for q in requests],
        "k": [q.get("k") for q in requests],
        "request": [json.dumps(q, separators=(",", ":")) for q in requests],
        **{c: [r[c] for r in records] for c in _AS_IS},
        "timings": timings,
    }
    return pa.RecordBatch.from_pydict(columns, schema=SCHEMA)


def from_batch(batch: pa.RecordBatch) -> Iterator[dict]:
    """A batch's records as `record` made them (a stage the answer was not timed in left out)."""
    for row in batch.to_pylist():
        for column in ("user_id", "creator_id", "k"):
            del row[column]
        row["ts"] = row["ts"].isoformat(timespec="milliseconds")
        row["request"] = json.loads(row["request"])
        row["scores"] = [round(s, 6) for s in row["scores"]]  # as logged, not float32's digits
        row["timings"] = {n: t for n, t in row["timings"].items() if t is not None}
        yield row


class RotatingStream:
    """Batches appended to one Arrow IPC stream file, rotated into `.1` … `.<backups>` when it
    reaches `max_bytes`. The file opens with the first batch; one found there is rotated first."""

    def __init__(self, path: Path, max_bytes: int, backups: int):
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._file = self._writer = None

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            if self.path.exists() and self.path.stat().st_size:
                self._rotate()
            self._file = open(self.path, "wb")  # noqa: SIM115 (kept open across batches)
            self._writer = pa.ipc.new_stream(self._file, SCHEMA)
        self._writer.write_batch(batch)
        self._file.flush()  # whole batches on disk, for a monitor reading the live file
        if self._file.tell() >= self.max_bytes:
            self.close()
            self._rotate()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()  # the stream's end marker
            self._file.close()
            self._file = self._writer = None

    def _rotate(self) -> None:
        for i in range(self.backups - 1, 0, -1):
            older = rotated(self.path, i)
            if older.exists():
                older.replace(rotated(self.path, i + 1))
        self.path.replace(rotated(self.path, 1))


class AnswerLog:
    """Appends sampled answers to `path`, rotating it; `counts` says what became of each."""

    def __init__(
        self,
        path: str | Path,
        sample: float = 1.0,
        max_bytes: int = 64 << 20,
        backups: int = 5,
        queue_size: int = 10_000,
        batch_rows: int = 512,
        flush_seconds: float = 1.0,
    ):
        if not 0.0 < sample <= 1.0 or max_bytes < 1 or backups < 1 or batch_rows < 1:
            raise ValueError(
                f"answer log sample={sample}, max_bytes={max_bytes}, backups={backups}, "
                f"batch_rows={batch_rows}: need 0 < sample <= 1 and the others >= 1"
            )
        self.path, self.sample = Path(path), sample
        self.batch_rows, self.flush_seconds = batch_rows, flush_seconds
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = RotatingStream(self.path, max_bytes, backups)
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
        pending, due = [], None
        while True:
            wait = None if due is None else max(0.0, due - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if item is not None:
                pending.append(item)
                due = due or time.monotonic() + self.flush_seconds
            if pending and (len(pending) >= self.batch_rows or time.monotonic() >= due):
                self._flush(pending)
                pending, due = [], None
        self._flush(pending)
        self._stream.close()

    def _flush(self, pending: list[dict]) -> None:
        if pending:
            self._stream.write(to_batch(pending))
            self.counts["written"] += len(pending)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then close the file."""
        self._queue.put(_STOP)
        self._thread.join(timeout)


def rotated(path: Path, i: int) -> Path:
    return path.with_name(f"{path.name}.{i}")


def worker_path(path: str | Path, worker: int | None) -> Path:
    """The log of service process `worker` (None: the only one) beside `path`."""
    path = Path(path)
    return path if worker is None else path.with_name(f"{path.stem}.w{worker}{path.suffix}")


def streams(path: str | Path) -> list[list[Path]]:
    """The logs at `path`: the one process's and each worker's, each as its files that exist,
    oldest first (`.<backups>` … `.1`, then the live file)."""
    path = Path(path)
    # a worker's live file may not exist (just rotated, reopened with its next batch): its
    # rotated files name it too
    named = path.parent.glob(f"{path.stem}.w*{path.suffix}*")
    workers = {p.with_suffix("") if p.suffix[1:].isdigit() else p for p in named}
    heads = [path, *sorted(h for h in workers if h.suffix == path.suffix)]
    out = []
    for head in heads:
        olds = [p for p in path.parent.glob(f"{head.name}.*") if p.suffix[1:].isdigit()]
        files = [*sorted(olds, key=lambda p: int(p.suffix[1:]), reverse=True), head]
        if existing := [p for p in files if p.exists()]:
            out.append(existing)
    return out


def parts(path: str | Path) -> list[Path]:
    """Every file of the logs at `path`, stream after stream, each oldest first."""
    return [part for stream in streams(path) for part in stream]


def read_stream(part: Path) -> tuple[list[pa.RecordBatch], int]:
    """One file's whole batches, and how many were torn (a write cut short, or the live file's
    batch still being written): 0 or 1, since nothing after a torn batch can be read."""
    if not part.stat().st_size:
        return [], 0
    batches = []
    try:  # mapped at its size now: what the service appends later is not seen
        for batch in pa.ipc.open_stream(pa.memory_map(str(part))):
            batches.append(batch)
    except (pa.ArrowInvalid, OSError):
        return batches, 1
    return batches, 0


def read(path: str | Path) -> Iterator[dict]:
    """Every record of the logs at `path`, file after file as `parts` lists them."""
    for part in parts(path):
        for batch in read_stream(part)[0]:
            yield from from_batch(batch)
