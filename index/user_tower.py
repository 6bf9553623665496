"""The user tower as ONNX: exported from a checkpoint and checked against torch before anything
is written. The rebuild job puts it into every index version (`user_tower.onnx`), so a model
and the index built from it travel together; serving only reads it (index.onnx).

The graph is total: an id out of range follows data.contract's out-of-vocabulary rule inside
the graph (history items and attributes become padding, negative users the unknown user)
instead of failing the dynamic batch it was queued in. Only the batch dimension is dynamic.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.artifacts import sha256_file
from common.io import atomic_path
from data import contract
from index.checkpoint import TrainedModel
from index.onnx import KIND, OUTPUT, OnnxEncoder, signature

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5
PARITY_BATCHES = (1, 7, 1000)
OPSET = 17


class ParityError(ValueError):
    """The exported graph does not compute what the torch tower computes."""


class _UserTower(nn.Module):
    """encode_users with positional inputs, the form torch.onnx.export traces, made total by
    data.contract's rules (valid inputs are untouched)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        cfg = model.cfg
        self.creators, self.buckets = cfg.num_creators, max(cfg.attribute_buckets, 1)

    def forward(self, user, history, attributes=None):
        user = contract.user_ids(user)
        history = contract.row_or_padding(history, self.creators)
        if attributes is not None:
            attributes = contract.row_or_padding(attributes, self.buckets)
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
    attribute_width: int = contract.ATTRIBUTE_WIDTH,
    opset: int = OPSET,
) -> dict:
    """Write the user tower to `output` (atomically) as ONNX with a dynamic batch dimension,
    after checking it against torch (`parity`); returns its description."""
    _check_widths(history_len, attribute_width)
    output = Path(output)
    names = input_names(trained)
    module = _UserTower(trained.model).eval()
    with atomic_path(output) as tmp, torch.no_grad(), _exporter_warnings_ignored():
        example = _example(trained, history_len, attribute_width)
        _trace(module, example, tmp, names, opset)
        _pin_output_dim(tmp, trained.config.dim)
        diffs, worst = _checked_parity(trained, tmp, opset)
        description = describe(tmp, trained, opset)
    description["parity"] = {"max_abs_diff": diffs, "tolerance": PARITY_TOLERANCE}
    log.info("exported user tower %s to %s (parity %.2g)", trained.version[:12], output, worst)
    return description


def _check_widths(history_len: int, attribute_width: int) -> None:
    """Fail before tracing: a zero width would export a graph no real input fits."""
    if history_len < 1 or attribute_width < 1:
        raise ValueError(
            f"history_len={history_len}, attribute_width={attribute_width}: both must be >= 1 "
            f"(the users table's history list size and the data module's max_user_attributes)"
        )


@contextlib.contextmanager
def _exporter_warnings_ignored() -> Iterator[None]:
    """Silence, for the whole export and its checks, the warnings that are known and harmless."""
    with warnings.catch_warnings():
        # The legacy (TorchScript) exporter, on purpose: the dynamo one fails on this module
        # (duplicate node names), so its deprecation notices are not news. UserTower takes its
        # ONNX-friendly pooling under either. Attention pooling scales by sqrt(hidden) read off
        # a shape, which the tracer warns becomes a constant: it is one.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _trace(module: nn.Module, example: tuple, path: Path, names: list[str], opset: int) -> None:
    """Trace `module` to `path` with the legacy exporter (see _exporter_warnings_ignored),
    every input and the output dynamic in the batch dimension only."""
    torch.onnx.export(
        module,
        example,
        str(path),
        input_names=names,
        output_names=[OUTPUT],
        dynamic_axes={name: {0: "batch"} for name in [*names, OUTPUT]},
        opset_version=opset,
        dynamo=False,
    )


def _checked_parity(
    trained: TrainedModel, path: Path, opset: int
) -> tuple[dict[int, float], float]:
    """`parity` and its worst difference; raises ParityError above PARITY_TOLERANCE, inside the
    atomic write, so a graph that computes something else is never written."""
    diffs = parity(trained, path)
    worst = max(diffs.values())
    if not worst <= PARITY_TOLERANCE:
        raise ParityError(
            f"ONNX export of {trained.path} differs from torch by {worst:.3g} (max abs, "
            f"per batch size {diffs}), above {PARITY_TOLERANCE}; nothing was written. Check "
            f"the tower's ONNX path (towers/model.py, torch.onnx.is_in_onnx_export) or "
            f"opset={opset}"
        )
    return diffs, worst


def _pin_output_dim(path: Path, dim: int) -> None:
    """The exporter leaves the embedding width symbolic (a name from the normalize node);
    a fixed width lets Triton configs and clients read it from the graph."""
    import onnx

    model = onnx.load(str(path))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = dim
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


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


def export_from_checkpoint(
    checkpoint: str | Path, output: str | Path, data: str | Path | None = None, opset: int = OPSET
) -> dict:
    """`output` (a .onnx file) for a checkpoint, shaped as its dataset's users; returns its
    description. `python -m index export-onnx` runs it; the rebuild job does the same into every
    version."""
    from common.errors import MissingInputError
    from data.tables import history_length
    from index import checkpoint as ckpt

    trained = ckpt.load(checkpoint)
    data = data or trained.data_hparams.get("data_dir")
    if not data:
        raise MissingInputError(
            f"checkpoint {trained.path} records no data_dir; name the dataset with --data DIR"
        )
    _, width = trained.attribute_hashing
    return export_user_tower(trained, output, history_length(data), width, opset)
