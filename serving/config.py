"""Typed configuration of `python -m serving up`, loaded from `configs/serving/*.yaml` by the
common loader (common.config): every field is a flag, `--encoder onnx`,
`--triton.dynamic_batching false`, and errors name the flag to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.errors import ConfigError
from search.engine import SearchSettings

ENCODERS = ("triton", "onnx")


@dataclass
class TritonSettings:
    """Where the user tower runs when `encoder` is triton."""

    url: str | None = None
    """An already-running Triton (gRPC `host:port`, HTTP `http://host:port`) whose model
    repository is `repository`/local; None = start a local server (the bundled tritonserver),
    supervised by the service."""
    control_key: str | None = None
    """The secret an external Triton's restricted model-repository API expects in the
    `towerline-control-key` header; a local server gets a new one at each start."""
    repository: str = "artifacts/serving/triton"
    """Where the model repositories are written: `production/` (onnxruntime backend, what an NGC
    Triton container loads) and `local/` (Python backend, what the local server runs)."""
    protocol: str = "grpc"
    dynamic_batching: bool = True
    max_batch_size: int = 1024
    max_queue_delay_us: int = 500
    instances: int = 1
    grpc_port: int = 0
    """0 = a free port."""
    http_port: int = 0
    metrics_port: int = 0
    timeout_s: float = 1.0
    """Per inference request; a slower Triton makes the answer a flagged fallback."""


@dataclass
class RankSettings:
    """The rank stage (serving.pipeline.stages.Rank): the ranker trained for the served index
    version (`python -m ranking train`) re-orders the towers' top `candidates`."""

    store: str | None = None
    """The ranking store (ranking.store); None = no rank stage, the towers' order is served."""
    candidates: int = 200
    """N retrieved per request for the ranker (its manifest says the N it was trained on)."""
    mmr: float = 0.0
    """MMR's trade-off λ in [0, 1] (ranking.diversity.mmr): 0 = the ranked order; higher
    gives up score for creators unlike those already in the list."""
    calibration: float = 0.0
    """Calibration's trade-off λ in [0, 1] (Steck's, ranking.diversity.calibrate): 0 = the
    ranked order; higher brings the list's category mix closer to the fan's history."""

    def __post_init__(self):
        if self.candidates < 1:
            raise ConfigError(f"--rank.candidates={self.candidates} must be >= 1")
        for name in ("mmr", "calibration"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"--rank.{name}={getattr(self, name)} must be in [0, 1]")
        if self.mmr > 0 and self.calibration > 0:
            raise ConfigError(
                f"--rank.mmr={self.mmr} and --rank.calibration={self.calibration}: each picks "
                f"the list by its own objective; set one of them to 0"
            )


@dataclass
class AnswerLogSettings:
    """The answer log (serving.answer_log): sampled, rotated Arrow IPC files of served answers."""

    path: str | None = None
    """The log file (`.arrows`); None = no answer log. With `workers` > 1 each worker keeps its
    own beside it (`answers.w0.arrows`, …), read together by the monitor."""
    sample: float = 1.0
    """Share of fans whose answers are logged (all of a sampled fan's answers)."""
    max_bytes: int = 64 << 20
    """The file rotates at this size."""
    backups: int = 5
    """Rotated files kept: the log holds at most (backups + 1) × max_bytes."""

    def __post_init__(self):
        if not 0.0 < self.sample <= 1.0:
            raise ConfigError(f"--answer_log.sample={self.sample} must be in (0, 1]")
        if self.max_bytes < 1024 or self.backups < 1:
            raise ConfigError(
                f"--answer_log.max_bytes={self.max_bytes}, --answer_log.backups={self.backups}: "
                f"need max_bytes >= 1024 and backups >= 1"
            )


@dataclass
class ServingConfig:
    """The service: which index store and feature store, where the user tower runs, how
    requests are batched and what is logged."""

    name: str
    index: str
    """Root of the index store (`python -m index rebuild`'s `store`): the service serves its
    `current` version and swaps when a new one is published."""
    features: str
    """The online feature store: a materialised folder (embedded, memory-mapped) or
    `redis://host:port/db` (loaded by `python -m serving materialise --redis ...`)."""
    data: str | None = None
    """The prepared dataset to materialise features from (`python -m serving up` does it when
    `features` is a folder that does not exist yet); None = the one the index was built from."""
    encoder: str = "triton"
    """triton: the user tower on a Triton server; onnx: in-process onnxruntime."""
    triton: TritonSettings = field(default_factory=TritonSettings)
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    """Service processes sharing the port (serving.workers): one process answers about one
    core's worth of HTTP (the GIL), so a machine with more cores answers more with more. Each
    holds its own copy of the index; Triton, when it runs, stays one server."""
    poll_seconds: float = 2.0
    """How often the index store's `current` pointer is checked for a new version (0 = never)."""
    max_batch: int = 64
    """Requests answered together at most (those that arrive while a batch is answered form the
    next one); 1 = one request at a time."""
    batch_workers: int = 2
    """Batches answered at once: with 2, one batch looks up features and searches while the
    other waits on Triton."""
    search_threads: int = 1
    """faiss OpenMP threads for the service's searches (batches are small: 1 avoids threads
    spinning against Triton and the HTTP loop on a small machine)."""
    run_dir: str | None = None
    """Where `up --detach` keeps its pid file and log; None = artifacts/serving/<name>."""
    lock_memory: bool = False
    """Keep each service process's pages in memory once touched (serving.memory: mlockall),
    so an index page or code idle for a while is not read back from disk by the next
    search. Needs CAP_IPC_LOCK or a memlock limit above the process's size; /readyz says
    whether it took."""
    verify: bool = True
    """Check every file of an index version against its manifest's checksums when loading."""
    max_body_bytes: int = 1 << 20
    """A request body over this is a 413, refused before it is parsed."""
    opentelemetry: bool = False
    """FastAPI's native OpenTelemetry (a span, metrics and logs per request) when the process
    has a tracer or meter provider. Off by default: the service's metrics are Prometheus
    (/metrics), and asking for the providers on every request cost ~40 µs of ~440 (issue 14)."""
    rooms: list[str] = field(default_factory=lambda: ["explorer"])
    """Rooms above the service mounted on it by name (entry points `towerline.rooms`):
    `explorer`, the relevance explorer at /explorer; `monitoring`, the latest monitor report
    at /monitor/report (read by the explorer's health view); [] = the JSON API alone."""
    answer_log: AnswerLogSettings = field(default_factory=AnswerLogSettings)
    rank: RankSettings = field(default_factory=RankSettings)
    """The rank stage after retrieval: which ranking store, how many candidates it orders."""
    search: SearchSettings = field(default_factory=SearchSettings)
    """How /search fuses its retrievers: method (rrf | weighted), c, weights, candidates."""

    def __post_init__(self):
        empty = [name for name in ("name", "index", "features") if not getattr(self, name)]
        if empty:
            raise ConfigError(f"a serving config needs {empty} (--{empty[0]} ...)")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"--encoder={self.encoder!r}: use one of {ENCODERS}")
        if self.triton.protocol not in ("grpc", "http"):
            raise ConfigError(f"--triton.protocol={self.triton.protocol!r}: use grpc or http")
        for name in ("workers", "max_batch", "batch_workers", "search_threads", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name}={getattr(self, name)} must be >= 1")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--port={self.port} is not a TCP port")
