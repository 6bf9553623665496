"""Typed configuration of `python -m serving up`, loaded from `configs/serving/*.yaml`.

Every field is overridable on the command line with `--set field=value` (value parsed as YAML;
nested fields with dots: `--set triton.dynamic_batching=false`), as in `python -m index rebuild`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data.config import ConfigError, apply_overrides

ENCODERS = ("triton", "onnx")


@dataclass
class TritonSettings:
    url: str | None = None
    """An already-running Triton (gRPC `host:port`, HTTP `http://host:port`) whose model
    repository is `repository`/local; None = start a local server (the bundled tritonserver)."""
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
class ServingConfig:
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
    verify: bool = True
    """Check every file of an index version against its manifest's checksums when loading."""

    def __post_init__(self):
        if isinstance(self.triton, dict):
            self.triton = TritonSettings(**self.triton)
        if self.encoder not in ENCODERS:
            raise ConfigError(f"encoder={self.encoder!r}: use one of {ENCODERS}")
        if self.triton.protocol not in ("grpc", "http"):
            raise ConfigError(f"triton.protocol={self.triton.protocol!r}: use grpc or http")
        for name in ("max_batch", "batch_workers", "search_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port={self.port} is not a TCP port")


def from_dict(raw: dict[str, Any]) -> ServingConfig:
    known = {f.name for f in dataclasses.fields(ServingConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; known: {sorted(known)}")
    triton_known = {f.name for f in dataclasses.fields(TritonSettings)}
    bad = sorted(set(raw.get("triton") or {}) - triton_known)
    if bad:
        raise ConfigError(f"unknown triton keys {bad}; known: {sorted(triton_known)}")
    missing = [k for k in ("name", "index", "features") if raw.get(k) in (None, "")]
    if missing:
        raise ConfigError(f"a serving config needs {missing} (--set {missing[0]}=...)")
    raw = {**raw, "triton": TritonSettings(**(raw.get("triton") or {}))}
    return ServingConfig(**raw)


def load(path: str | Path, overrides: list[str] | None = None) -> ServingConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config {path} not found; shipped configs are in configs/serving/")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a YAML mapping, got {type(raw).__name__}")
    return from_dict(apply_overrides(raw, overrides or []))


def to_dict(cfg: ServingConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
