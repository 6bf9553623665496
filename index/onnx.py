"""Reading a published user tower: its ONNX signature, and running it in this process.

The ONNX file the index stage writes into every version (index.user_tower) is what every
serving path runs: Triton's onnxruntime backend in production, the local Python backend in
tests and on a laptop, and `OnnxEncoder` when the service runs the tower in its own process.
Its signature:

    user        int64 [B]        vocabulary indices; unknown users hash into shared rows
    history     int64 [B, N]     creator indices, 0 = padding, N fixed by the users table
    attributes  int64 [B, A]     hashed attribute buckets, 0 = none (only if the tower uses them)
    embedding   float32 [B, dim] unit vectors

Only the batch dimension is dynamic. Everything downstream reads the inputs from the graph
(`signature`), since a tower trained without attributes has no `attributes` input. This module
imports neither torch nor anything of training: serving loads it on its request path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

KIND = "towerline.user_tower_onnx"
OUTPUT = "embedding"

_ONNX_DTYPES = {1: "float32", 6: "int32", 7: "int64", 10: "float16", 11: "float64"}


def signature(onnx_path: str | Path) -> dict:
    """Inputs and outputs of an ONNX graph: name → {dtype, shape}; the batch dimension (a
    named, dynamic one) is shown as -1."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def spec(value) -> dict:
        t = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return {"dtype": _ONNX_DTYPES.get(t.elem_type, str(t.elem_type)), "shape": shape}

    initializers = {i.name for i in graph.initializer}
    return {
        "inputs": {v.name: spec(v) for v in graph.input if v.name not in initializers},
        "outputs": {v.name: spec(v) for v in graph.output},
    }


def session(path: str | Path, threads: int = 1):
    """An onnxruntime CPU session of `path` with `threads` intra-op threads and no inter-op
    pool (the service runs sessions from its own threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxEncoder:
    """The user tower in this process through onnxruntime: the service's alternative to
    Triton, and what the benchmark compares Triton with.

    onnxruntime sessions are safe to run from several threads at once, so one encoder can be
    shared by a thread pool; `threads` is onnxruntime's intra-op pool per call.
    """

    def __init__(self, path: str | Path, threads: int = 1):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"ONNX user tower {self.path} not found; every index version carries one "
                f"(`python -m index rebuild`), or export one with `python -m index export-onnx`"
            )
        self.session = session(self.path, threads)
        self.shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self.inputs = list(self.shapes)
        self.dim = int(self.session.get_outputs()[0].shape[1])
        self.history_len = int(self.shapes["history"][1])
        self.attribute_width = int(self.shapes["attributes"][1]) if "attributes" in self else 0

    def __contains__(self, name: str) -> bool:
        return name in self.shapes

    def encode(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """[B, dim] float32 unit vectors. Inputs the graph does not take (attributes, for a
        tower trained without them) are ignored, as the torch tower ignores them."""
        feed = check_inputs(inputs, self.shapes)
        return self.session.run([OUTPUT], feed)[0]


class QueryEncoder:
    """Creator search's query encoder in this process (index.query_encoder exported it): the
    tokenizer (`tokenizers`, Rust) and the ONNX sentence encoder, text → [B, dim] unit
    vectors. Like OnnxEncoder, safe to share between threads."""

    def __init__(self, onnx_path: str | Path, tokenizer_path: str | Path, threads: int = 1):
        from tokenizers import Tokenizer

        for path in (onnx_path, tokenizer_path):
            if not Path(path).is_file():
                raise FileNotFoundError(
                    f"query encoder file {path} not found; a version built from a catalog with "
                    f"text vectors carries it (`python -m index rebuild`)"
                )
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.session = session(onnx_path, threads)
        self.dim = int(self.session.get_outputs()[0].shape[1])

    def encode(self, texts: list[str]) -> np.ndarray:
        """[B, dim] float32 unit vectors, one per text (an empty text: its special tokens)."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return self.run(self.tokenize(texts))

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The graph's inputs for texts: token ids and attention mask, [B, longest] int64.
        Serving tokenizes here and sends these to Triton, where the graph runs."""
        batch = self.tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in batch], np.int64)
        mask = np.asarray([e.attention_mask for e in batch], np.int64)
        return {"input_ids": ids, "attention_mask": mask}

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """The graph on tokenized texts (`tokenize`), in this process."""
        return self.session.run([OUTPUT], feed)[0]


def check_inputs(inputs: dict[str, np.ndarray], shapes: dict[str, list]) -> dict[str, np.ndarray]:
    """The graph's inputs from `inputs` as int64 arrays of one batch size, or a ValueError
    naming the input and the shape it needs; `shapes` maps name → shape with the batch first."""
    missing = [name for name in shapes if name not in inputs]
    if missing:
        raise ValueError(f"missing user tower inputs {missing}; it takes {list(shapes)}")
    feed = {name: np.ascontiguousarray(inputs[name], dtype=np.int64) for name in shapes}
    batch = len(feed["user"]) if feed["user"].ndim else -1
    for name, x in feed.items():
        want = [batch, *(int(d) for d in shapes[name][1:])]
        if list(x.shape) != want:
            raise ValueError(
                f"user tower input {name!r} has shape {list(x.shape)}; it needs {want} "
                f"(batch {batch} from `user`; pad histories with 0 to the exported length)"
            )
    return feed
