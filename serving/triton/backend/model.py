"""Triton Python-backend model: an ONNX model of an index version (the user tower, or creator
search's query encoder) through onnxruntime.

serving/triton/repository.py copies this file into `<repository>/<model>/<version>/model.py`,
beside that version's ONNX file (named by the config's `onnx_file` parameter). It runs inside
Triton's Python stub, in the Triton environment (numpy<2, onnxruntime;
serving/triton-requirements.txt), so it imports nothing from this project.

Dynamic batching hands `execute` every request Triton queued together; they run as one
onnxruntime call and the rows are split back per request, which is what makes batching pay.
`execute` stays thin: the batching is in plain functions, tested without a server.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton: only the functions below are usable
    pb_utils = None

THREADS = "intra_op_thread_count"
"""config.pbtxt parameter: onnxruntime's intra-op threads per instance (the same key the
onnxruntime backend reads)."""
ONNX_FILE = "onnx_file"
"""config.pbtxt parameter: the version's ONNX file (the repository writer names it)."""


def parameter(config: dict, key: str, default: str | None = None) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", default)
    if value is None:
        raise ValueError(f"config.pbtxt has no parameter {key!r}; write it with the repository")
    return value


_DTYPES = {"tensor(int64)": np.int64, "tensor(float)": np.float32, "tensor(int32)": np.int32}


def to_graph_shape(name: str, x: np.ndarray, shape: list, dtype=np.int64) -> np.ndarray:
    """One request's tensor in the rank the graph takes: `user` arrives as [B, 1] or [B]
    (config dims [1], reshaped), the graph takes [B]. Fixed dims must match exactly; a free one
    (a query's tokens: onnxruntime names it rather than sizing it) takes any length."""
    fixed = [d if isinstance(d, int) and d > 0 else None for d in shape[1:]]
    if x.ndim == len(shape) + 1 and x.shape[-1] == 1:
        x = x.reshape(x.shape[:-1])
    if x.ndim != len(shape) or any(
        f not in (None, n) for f, n in zip(fixed, x.shape[1:], strict=True)
    ):
        want = ", ".join(["batch", *(str(f or "any") for f in fixed)])
        raise ValueError(f"input {name!r} has shape {list(x.shape)}; the model takes [{want}]")
    return np.ascontiguousarray(x, dtype=dtype)


def concat_requests(batches: list[dict[str, np.ndarray]]) -> tuple[dict, list[int]]:
    """Requests' inputs (name → [b_i, ...]) joined into one batch, with each request's size.
    Texts of different lengths are padded with 0 (the pad token, masked out) to the longest."""
    sizes = [len(next(iter(b.values()))) for b in batches]
    joined = {}
    for name in batches[0]:
        parts = [b[name] for b in batches]
        longest = tuple(int(n) for n in np.max([p.shape[1:] for p in parts], axis=0))
        parts = [_pad(p, longest) for p in parts]
        joined[name] = np.concatenate(parts)
    return joined, sizes


def _pad(x: np.ndarray, shape: tuple) -> np.ndarray:
    if x.shape[1:] == shape:
        return x
    out = np.zeros((len(x), *shape), x.dtype)
    out[(slice(None), *(slice(0, n) for n in x.shape[1:]))] = x
    return out


def split_rows(output: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """The joined output cut back into one array per request, in order."""
    return np.split(output, np.cumsum(sizes)[:-1])


def make_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _error(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        version = Path(args["model_repository"]) / args["model_version"]
        path = version / parameter(config, ONNX_FILE)
        threads = int(parameter(config, THREADS, "1"))
        self.session = make_session(path, threads)
        self.shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self.dtypes = {i.name: _DTYPES.get(i.type, np.int64) for i in self.session.get_inputs()}
        self.output = self.session.get_outputs()[0].name

    def _inputs(self, request) -> dict[str, np.ndarray]:
        out = {}
        for name, shape in self.shapes.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input {name!r}; the model takes {list(self.shapes)}")
            out[name] = to_graph_shape(name, tensor.as_numpy(), shape, self.dtypes[name])
        sizes = {len(x) for x in out.values()}
        if len(sizes) != 1:
            raise ValueError(f"inputs have different batch sizes {sorted(sizes)}")
        return out

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        good, batches = [], []
        for i, request in enumerate(requests):
            try:
                batches.append(self._inputs(request))
                good.append(i)
            except ValueError as e:  # this request alone fails; the others still run
                responses[i] = _error(str(e))
        if batches:
            for i, response in zip(good, self._run(batches), strict=True):
                responses[i] = response
        return responses

    def _run(self, batches: list[dict[str, np.ndarray]]) -> list:
        """One onnxruntime call for every request of the batch, a response per request."""
        joined, sizes = concat_requests(batches)
        try:
            rows = split_rows(self.session.run([self.output], joined)[0], sizes)
        except Exception as e:  # onnxruntime failed: every request of the run is told why
            return [_error(f"onnxruntime failed on a batch of {sum(sizes)}: {e}")] * len(sizes)
        return [pb_utils.InferenceResponse([pb_utils.Tensor(self.output, r)]) for r in rows]

    def finalize(self) -> None:
        self.session = None
