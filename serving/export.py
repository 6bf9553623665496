"""The user tower as ONNX: exported from a checkpoint, checked against torch, run in-process.

One ONNX file is what every serving path runs: Triton's onnxruntime backend in production, the
local Python backend (serving/backend/model.py) in tests and on a laptop, and `OnnxEncoder` when
the service runs the tower in its own process. Its signature:

    user        int64 [B]        vocabulary indices; unknown users hash into shared rows
    history     int64 [B, N]     creator indices, 0 = padding, N fixed by the users table
    attributes  int64 [B, A]     hashed attribute buckets, 0 = none (only if the tower uses them)
    embedding   float32 [B, dim] unit vectors

Only the batch dimension is dynamic. The graph is total: an id out of range is treated as
unknown (history items and attributes as padding) instead of failing the batch. Everything
downstream reads the inputs from the graph (`signature`), since a tower trained without
attributes has no `attributes` input.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from data.io import atomic_path, sha256_file, write_json
from index.catalog import history_length, user_hashing
from index.checkpoint import TrainedModel
from towers.model import PAD, UNK

log = logging.getLogger(__name__)

KIND = "towerline.user_tower_onnx"
ONNX_FILE = "user_tower.onnx"
MANIFEST = "manifest.json"
OUTPUT = "embedding"
PARITY_TOLERANCE = 1e-5
PARITY_BATCHES = (1, 7, 1000)
DEFAULT_ATTRIBUTE_WIDTH = 8  # training.data's max_user_attributes default

_ONNX_DTYPES = {1: "float32", 6: "int32", 7: "int64", 10: "float16", 11: "float64"}


class ParityError(ValueError):
    """The exported graph does not compute what the torch tower computes."""


class _UserTower(nn.Module):
    """encode_users with positional inputs, the form torch.onnx.export traces, made total:
    an index the tables have no row for would fail the whole dynamic batch it was queued in,
    so history items and attributes out of range become padding (as index.catalog drops
    creators newer than the model) and negative user ids the unknown user. Valid inputs are
    untouched."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        cfg = model.cfg
        self.creators, self.buckets = cfg.num_creators, max(cfg.attribute_buckets, 1)

    def forward(self, user, history, attributes=None):
        user = torch.where(user < 0, torch.full_like(user, UNK), user)
        history = torch.where((history < 0) | (history >= self.creators), PAD, history)
        if attributes is not None:
            attributes = torch.where(
                (attributes < 0) | (attributes >= self.buckets), PAD, attributes
            )
        return self.model.encode_users(user, history, attributes)


def uses_attributes(trained: TrainedModel) -> bool:
    return bool(trained.config.attribute_buckets)


def input_names(trained: TrainedModel) -> list[str]:
    return ["user", "history"] + (["attributes"] if uses_attributes(trained) else [])


def random_inputs(
    trained: TrainedModel, batch: int, history_len: int, attribute_width: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Valid user-tower inputs that cover the edge cases serving sees: users past the
    vocabulary and the unknown slot, padded and empty histories, rows without attributes."""
    cfg, rng = trained.config, np.random.default_rng(seed)
    user = rng.integers(0, cfg.num_users + 2 * cfg.unknown_user_buckets, batch)
    user[::5] = 1  # UNK: users without training pairs
    history = rng.integers(2, cfg.num_creators, (batch, history_len))
    history[rng.random((batch, history_len)) < 0.3] = 0
    history[::4] = 0  # empty histories (cold users)
    out = {"user": user.astype(np.int64), "history": history.astype(np.int64)}
    if uses_attributes(trained):
        attributes = rng.integers(1, cfg.attribute_buckets, (batch, attribute_width))
        attributes[rng.random((batch, attribute_width)) < 0.4] = 0
        attributes[::3] = 0
        out["attributes"] = attributes.astype(np.int64)
    return out


def _example(trained: TrainedModel, history_len: int, attribute_width: int) -> tuple:
    x = random_inputs(trained, 3, history_len, attribute_width)
    return tuple(torch.from_numpy(x[name]) for name in input_names(trained))


def export_user_tower(
    trained: TrainedModel,
    output: str | Path,
    history_len: int,
    attribute_width: int = DEFAULT_ATTRIBUTE_WIDTH,
    opset: int = 17,
) -> dict:
    """Write the user tower to `output` (atomically) as ONNX with a dynamic batch dimension,
    after checking it against torch (`parity`); returns its description."""
    if history_len < 1 or attribute_width < 1:
        raise ValueError(
            f"history_len={history_len}, attribute_width={attribute_width}: both must be >= 1 "
            f"(the users table's history list size and the data module's max_user_attributes)"
        )
    output = Path(output)
    names = input_names(trained)
    module = _UserTower(trained.model).eval()
    with atomic_path(output) as tmp, torch.no_grad(), warnings.catch_warnings():
        # The legacy (TorchScript) exporter, on purpose: the dynamo one fails on this module
        # (duplicate node names), so its deprecation notices are not news. UserTower takes its
        # ONNX-friendly pooling under either. Attention pooling scales by sqrt(hidden) read off
        # a shape, which the tracer warns becomes a constant: it is one.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            _example(trained, history_len, attribute_width),
            str(tmp),
            input_names=names,
            output_names=[OUTPUT],
            dynamic_axes={name: {0: "batch"} for name in [*names, OUTPUT]},
            opset_version=opset,
            dynamo=False,
        )
        _pin_output_dim(tmp, trained.config.dim)
        diffs = parity(trained, tmp)
        worst = max(diffs.values())
        if not worst <= PARITY_TOLERANCE:
            raise ParityError(
                f"ONNX export of {trained.path} differs from torch by {worst:.3g} (max abs, "
                f"per batch size {diffs}), above {PARITY_TOLERANCE}; nothing was written. Check "
                f"the tower's ONNX path (towers/model.py, torch.onnx.is_in_onnx_export) or "
                f"opset={opset}"
            )
        description = describe(tmp, trained, opset)
    description["parity"] = {"max_abs_diff": diffs, "tolerance": PARITY_TOLERANCE}
    log.info("exported user tower %s to %s (parity %.2g)", trained.version[:12], output, worst)
    return description


def _pin_output_dim(path: Path, dim: int) -> None:
    """The exporter leaves the embedding width symbolic (a name from the normalize node);
    a fixed width lets Triton configs and clients read it from the graph."""
    import onnx

    model = onnx.load(str(path))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = dim
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


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


def describe(onnx_path: Path, trained: TrainedModel, opset: int) -> dict:
    sig = signature(onnx_path)
    history = sig["inputs"]["history"]["shape"][1]
    attrs = sig["inputs"].get("attributes", {}).get("shape", [0, 0])[1]
    return {
        "kind": KIND,
        "inputs": sig["inputs"],
        "outputs": sig["outputs"],
        "dim": trained.config.dim,
        "history_len": history,
        "attribute_width": attrs,
        "opset": opset,
        "sha256": sha256_file(onnx_path),
        "model": {"version": trained.version, "checkpoint": str(trained.path)},
    }


@torch.no_grad()
def parity(
    trained: TrainedModel,
    onnx_path: str | Path,
    batches: tuple[int, ...] = PARITY_BATCHES,
    seed: int = 0,
) -> dict[int, float]:
    """Max abs difference between torch's and onnxruntime's embeddings, per batch size, on
    random valid inputs (`random_inputs`)."""
    encoder = OnnxEncoder(onnx_path)
    diffs = {}
    for i, batch in enumerate(batches):
        x = random_inputs(
            trained, batch, encoder.history_len, encoder.attribute_width or 1, seed + i
        )
        want = trained.model.encode_users(**{k: torch.from_numpy(v) for k, v in x.items()})
        diffs[batch] = float(np.abs(encoder.encode(x) - want.numpy()).max())
    return diffs


class OnnxEncoder:
    """The user tower in this process through onnxruntime: the service's alternative to
    Triton, and what the benchmark compares Triton with.

    onnxruntime sessions are safe to run from several threads at once, so one encoder can be
    shared by a thread pool; `threads` is onnxruntime's intra-op pool per call.
    """

    def __init__(self, path: str | Path, threads: int = 1):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"ONNX user tower {self.path} not found; export one with `python -m serving "
                f"export-onnx --checkpoint CKPT --output DIR`"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
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


# -- command line (`python -m serving export-onnx`) -----------------------------------------


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a .ckpt file or a training run folder")
    parser.add_argument(
        "--data", help="prepared dataset (default: the one the checkpoint trained on)"
    )
    parser.add_argument("--output", required=True, help=f"folder for {ONNX_FILE} + {MANIFEST}")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument(
        "--repository", help="also write the Triton model repositories under this folder"
    )


def export_from_checkpoint(
    checkpoint: str | Path, output_dir: str | Path, data: str | Path | None = None, opset: int = 17
) -> dict:
    """ONNX + manifest in `output_dir` for a checkpoint, shaped as its dataset's users."""
    from index import checkpoint as ckpt
    from index.errors import MissingInputError

    trained = ckpt.load(checkpoint)
    data = data or trained.data_hparams.get("data_dir")
    if not data:
        raise MissingInputError(
            f"checkpoint {trained.path} records no data_dir; name the dataset with --data DIR"
        )
    _, width = user_hashing(trained.data_hparams, trained.config)
    output_dir = Path(output_dir)
    m = export_user_tower(trained, output_dir / ONNX_FILE, history_length(data), width, opset)
    m["data_dir"] = str(data)
    write_json(output_dir / MANIFEST, m)
    return m


def cli_export(args: argparse.Namespace) -> int:
    m = export_from_checkpoint(args.checkpoint, args.output, args.data, args.opset)
    inputs = ", ".join(f"{k} {v['shape']}" for k, v in m["inputs"].items())
    print(
        f"exported the user tower of model {m['model']['version'][:12]} to "
        f"{Path(args.output) / ONNX_FILE}: {inputs} → embedding [-1, {m['dim']}], "
        f"parity {max(m['parity']['max_abs_diff'].values()):.2g}"
    )
    if args.repository:
        from serving.triton import write_repositories

        written = write_repositories(Path(args.output) / ONNX_FILE, args.repository)
        print(json.dumps(written, indent=2))
    return 0
