"""A tritonclient wrapper for the user tower: numpy in, [B, dim] unit vectors out.

The model's inputs come from the server (its metadata, read once), not from assumptions: a tower
trained without attributes has no `attributes` input, and any such input a caller passes is
ignored. Failures that a caller should degrade on (the server down, slow, or without the model
or version) raise `TritonUnavailable`; any other server error raises `TritonError`.

Threads: tritonclient's clients are not thread-safe (the HTTP one runs on gevent and must stay
on the thread that made it), so `UserTowerClient` keeps one tritonclient per calling thread,
made on first use. One `UserTowerClient` can therefore be shared by a FastAPI thread pool;
`close()` should be called once, when no request is in flight.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
from tritonclient.utils import InferenceServerException

from index.onnx import OUTPUT

PROTOCOLS = ("grpc", "http")
# gRPC status codes and error texts that mean "not now" rather than "wrong request"
_UNAVAILABLE = (
    "DEADLINE_EXCEEDED",
    "UNAVAILABLE",
    "RESOURCE_EXHAUSTED",
    "CANCELLED",
    "timed out",
    "Deadline Exceeded",
    "unknown model",
    "is not found",
    "is not ready",
    "not available",
)

_NUMPY = {"INT64": np.int64, "FP32": np.float32, "INT32": np.int32}
"""Triton datatypes of the models' inputs as numpy dtypes."""

_ERRORS = (InferenceServerException, OSError, TimeoutError)
"""What a request raises that is the server's or the network's doing rather than a bug."""


class TritonError(RuntimeError):
    """The server answered the request with an error (a bad input, a failed run)."""


class TritonUnavailable(TritonError):
    """No answer in time: the server is down or overloaded, or the model or version is not
    loaded. Callers catch it to degrade (e.g. fall back to the in-process OnnxEncoder)."""


def _classify(error: Exception, what: str) -> TritonError:
    """tritonclient's exception (or a socket's) as TritonUnavailable or TritonError."""
    status = error.status() if callable(getattr(error, "status", None)) else None
    text = f"{type(error).__name__}: {error}"
    text += f" ({status})" if status and str(status) not in text else ""
    unavailable = isinstance(error, (OSError, TimeoutError)) or any(s in text for s in _UNAVAILABLE)
    return (TritonUnavailable if unavailable else TritonError)(f"{what}: {text}")


class UserTowerClient:
    """The user tower on a Triton server over gRPC (default) or HTTP.

    Args:
        url: host:port of the server's gRPC or HTTP endpoint (TritonServer.grpc_url/http_url).
        timeout_s: per request; past it the call raises TritonUnavailable.
        max_batch_size: rows per request; larger batches are split. Default: the model's
            max_batch_size from its config on the server.
    """

    def __init__(
        self,
        url: str,
        protocol: str = "grpc",
        model_name: str = "user_tower",
        timeout_s: float = 1.0,
        max_batch_size: int | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol={protocol!r}: use one of {PROTOCOLS}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size}: use >= 1, or None for the model's")
        self.url = url.removeprefix("http://").removeprefix("grpc://")
        self.protocol = protocol
        self.model_name = model_name
        self.timeout_s = timeout_s
        self._max_batch_size = max_batch_size
        self._local = threading.local()
        self._clients: list = []
        self._lock = threading.Lock()
        self._inputs: dict[str, list[int]] | None = None  # name → shape, batch first (-1)
        self._dtypes: dict[str, str] = {}  # name → Triton datatype (INT64, FP32)
        self._output = OUTPUT

    # -- tritonclient, one per thread
    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            tc = self._module()
            if self.protocol == "grpc":
                client = tc.InferenceServerClient(self.url)
            else:  # HTTP has no per-call deadline: its socket timeouts are the limit
                client = tc.InferenceServerClient(
                    self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _module(self):
        if self.protocol == "grpc":
            import tritonclient.grpc as tc
        else:
            import tritonclient.http as tc
        return tc

    def _metadata(self) -> dict[str, list[int]]:
        """The model's inputs and max_batch_size, from the server, once."""
        if self._inputs is None:
            client, kw = self._client(), self._call_kwargs()
            if self.protocol == "grpc":
                kw["as_json"] = True  # the HTTP client returns JSON anyway
            try:
                meta = client.get_model_metadata(self.model_name, **kw)
                config = client.get_model_config(self.model_name, **kw)
            except _ERRORS as e:
                raise _classify(e, f"metadata of {self.model_name!r} from {self.url}") from e
            config = config.get("config", config)  # gRPC wraps it, HTTP does not
            if self._max_batch_size is None:
                self._max_batch_size = int(config.get("max_batch_size", 0)) or 1024
            self._inputs = {i["name"]: [int(d) for d in i["shape"]] for i in meta["inputs"]}
            self._dtypes = {i["name"]: i["datatype"] for i in meta["inputs"]}
            self._output = meta["outputs"][0]["name"]  # `embedding`; a ranker's `score`
        return self._inputs

    def _call_kwargs(self) -> dict:
        return {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}

    @property
    def inputs(self) -> list[str]:
        return list(self._metadata())

    @property
    def max_batch_size(self) -> int:
        self._metadata()
        return self._max_batch_size

    # -- requests
    def _wire(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's inputs from `inputs` in the dtypes and shapes the server takes; `user` [B]
        becomes [B, 1] (its config dims are [1], reshaped for the model)."""
        spec = self._metadata()
        missing = [name for name in spec if name not in inputs]
        if missing:
            raise ValueError(f"missing user tower inputs {missing}; the model takes {list(spec)}")
        out = {}
        for name, shape in spec.items():
            x = np.ascontiguousarray(inputs[name], dtype=_NUMPY.get(self._dtypes[name], np.int64))
            if x.ndim == len(shape) - 1 and shape[-1] == 1:
                x = x.reshape(*x.shape, 1)
            fixed = shape[1:]
            if x.ndim != len(shape) or any(
                w not in (-1, d) for w, d in zip(fixed, x.shape[1:], strict=True)
            ):
                raise ValueError(
                    f"user tower input {name!r} has shape {list(x.shape)}; the server takes "
                    f"{shape} (-1 = batch; pad histories with 0 to the exported length)"
                )
            out[name] = x
        sizes = {len(x) for x in out.values()}
        if len(sizes) != 1:
            raise ValueError(f"user tower inputs have different batch sizes: {sorted(sizes)}")
        return out

    def encode(self, inputs: dict[str, np.ndarray], model_version: str = "") -> np.ndarray:
        """[B, dim] float32 unit vectors for user tower inputs (user [B], history [B, N],
        attributes [B, A]); `model_version` "" lets the server choose (its version policy)."""
        wire = self._wire(inputs)
        batch, step = len(next(iter(wire.values()))), self.max_batch_size
        if batch == 0:
            raise ValueError("encode() got a batch of 0 users; pass at least one row")
        parts = [
            self._infer({k: v[s : s + step] for k, v in wire.items()}, str(model_version))
            for s in range(0, batch, step)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _infer(self, wire: dict[str, np.ndarray], version: str) -> np.ndarray:
        tc, client = self._module(), self._client()
        tensors = []
        for name, x in wire.items():
            t = tc.InferInput(name, list(x.shape), self._dtypes.get(name, "INT64"))
            t.set_data_from_numpy(x)
            tensors.append(t)
        try:
            result = client.infer(
                self.model_name,
                tensors,
                model_version=version,
                outputs=[tc.InferRequestedOutput(self._output)],
                **self._call_kwargs(),
            )
        except _ERRORS as e:
            where = f"{self.model_name!r} version {version or '(default)'} at {self.url}"
            batch = len(next(iter(wire.values())))
            raise _classify(e, f"inference of {batch} users on {where}") from e
        return result.as_numpy(self._output)

    def ready(self, model_version: str = "") -> bool:
        """The server is up and the model (version) is loaded; never raises. The server's
        own readiness is not asked: it is false while any version unloads (a hot swap
        retiring the old one) though the model serves throughout."""
        try:
            client, kw = self._client(), self._call_kwargs()
            return bool(
                client.is_server_live(**kw)
                and client.is_model_ready(self.model_name, str(model_version), **kw)
            )
        except Exception:
            return False

    def close(self) -> None:
        """Close every thread's connection (call when no request is in flight)."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            # an HTTP client closed off its own (gevent) thread may raise; it is gone anyway
            with contextlib.suppress(Exception):
                client.close()
        self._local = threading.local()

    def __enter__(self) -> UserTowerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
