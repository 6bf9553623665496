"""Triton model repositories for the ONNX models of each index version: the user tower, and
creator search's query encoder where the version has one (index.store.QUERY_ENCODER).

One published model becomes two repositories with the same inputs, outputs and batching:

    <root>/production/user_tower/config.pbtxt, <version>/model.onnx
        for Triton's onnxruntime backend, as an NGC tritonserver container loads it
    <root>/local/user_tower/config.pbtxt, <version>/{model.onnx, model.py}
        for the Python backend (serving/triton/backend/model.py runs the same ONNX through
        onnxruntime): the tritonserver that nvidia-pytriton bundles has no onnxruntime backend

Each index version's tower is one numbered version of the model, so Triton loads a new one
beside the one serving (the hot swap) and answers for exactly the version asked.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from common.io import write_bytes
from index.onnx import signature

BACKEND_MODEL = Path(__file__).resolve().parent / "backend" / "model.py"
MODEL_NAME = "user_tower"
QUERY_MODEL_NAME = "query_encoder"
"""Creator search's query encoder (index.query_encoder): the second model, its versions
numbered as the user tower's, added and retired with them."""
RANKER_MODEL_NAME = "ranker"
"""The rank stage's model (ranking.ranker): the ranker trained for an index version, numbered
as that version's user tower; features [B, N, F] → scores [B, N]."""
WARMUP_LENGTH = 16
"""The length a free dimension warms at: a typed query's tokens (a few words), a ranker's
candidates."""
MODEL_FILE = "model.onnx"
"""The ONNX file of a repository version (Triton's default name for the onnxruntime backend);
the Python backend is told it through the `onnx_file` parameter of config.pbtxt."""
CONFIG = "config.pbtxt"
PRODUCTION, LOCAL = "production", "local"

# A /recommend request carries one user, so batches only form across requests. At a few
# thousand requests a second a 0.5 ms window gathers tens of them, and 0.5 ms is small beside
# the index search and the network; a queue reaching 64 or 256 users (a full kernel's worth on
# a GPU) goes at once instead of waiting out the window.
PREFERRED_BATCH_SIZES = (64, 256)
MAX_QUEUE_DELAY_US = 500
MAX_BATCH_SIZE = 1024

_TRITON_TYPES = {"int64": "TYPE_INT64", "int32": "TYPE_INT32", "float32": "TYPE_FP32"}


def _tensor(name: str, spec: dict) -> str:
    """A config input/output: dims without the batch dimension. A per-item scalar (`user`,
    [B] in the graph) is [1] on the wire, reshaped to [] for the model: Triton's batching needs
    at least one dim per item."""
    dims = spec["shape"][1:]
    text = f'    name: "{name}"\n    data_type: {_TRITON_TYPES[spec["dtype"]]}\n'
    if dims:
        return f"  {{\n{text}    dims: [ {', '.join(map(str, dims))} ]\n  }}"
    return f"  {{\n{text}    dims: [ 1 ]\n    reshape: {{ shape: [ ] }}\n  }}"


def _warmup(inputs: dict, batch: int) -> str:
    def dims(shape: list[int]) -> str:  # a free length (the query's tokens) warms at a typical one
        return ", ".join(str(d if d > 0 else WARMUP_LENGTH) for d in shape[1:] or [1])

    tensors = "\n".join(
        f'      inputs {{ key: "{name}" value: {{ data_type: {_TRITON_TYPES[s["dtype"]]} '
        f"dims: [ {dims(s['shape'])} ] zero_data: true }} }}"
        for name, s in inputs.items()
    )
    return f'    {{\n      name: "batch_{batch}"\n      batch_size: {batch}\n{tensors}\n    }}'


def model_config(
    onnx_path: str | Path,
    kind: str,
    model_name: str = MODEL_NAME,
    max_batch_size: int = MAX_BATCH_SIZE,
    dynamic_batching: bool = True,
    preferred_batch_sizes: tuple[int, ...] = PREFERRED_BATCH_SIZES,
    max_queue_delay_us: int = MAX_QUEUE_DELAY_US,
    instances: int = 1,
    intra_op_threads: int = 1,
) -> str:
    """config.pbtxt text for `kind` production (onnxruntime backend) or local (Python backend),
    inputs and outputs read from the ONNX graph."""
    _check_settings(kind, max_batch_size, preferred_batch_sizes)
    sig = signature(onnx_path)
    parts = [
        *_header(kind, model_name, max_batch_size),
        *_inputs_outputs(sig),
        *_execution(kind, instances, intra_op_threads),
    ]
    if dynamic_batching:
        parts.append(_dynamic_batching(preferred_batch_sizes, max_queue_delay_us))
    parts.append(_model_warmup(sig["inputs"], preferred_batch_sizes))
    return "\n".join(parts) + "\n"


def _check_settings(kind: str, max_batch_size: int, preferred_batch_sizes: tuple[int, ...]) -> None:
    """Refuse a kind or batch sizes Triton would not load, before the ONNX file is read."""
    if kind not in (PRODUCTION, LOCAL):
        raise ValueError(f"kind={kind!r}: use {PRODUCTION!r} or {LOCAL!r}")
    too_big = [b for b in preferred_batch_sizes if not 0 < b <= max_batch_size]
    if max_batch_size < 1 or too_big:
        raise ValueError(
            f"max_batch_size={max_batch_size}, preferred_batch_sizes={preferred_batch_sizes}: "
            f"max_batch_size must be >= 1 and every preferred size in [1, max_batch_size]"
        )


def _header(kind: str, model_name: str, max_batch_size: int) -> list[str]:
    """The config's first lines: the model's name, its backend for `kind`, batching cap and
    version policy."""
    runtime = (
        'platform: "onnxruntime_onnx"\nbackend: "onnxruntime"'
        if kind == PRODUCTION
        else 'backend: "python"'
    )
    return [
        f"# written by serving/triton/repository.py for {kind}; inputs and outputs from the ONNX",
        f'name: "{model_name}"',
        runtime,
        f"max_batch_size: {max_batch_size}",
        "# every version present is served, so a new one loads beside the one serving (hot swap)",
        "version_policy: { all { } }",
    ]


def _inputs_outputs(sig: dict) -> list[str]:
    """The input and output blocks, from the ONNX graph's signature so they cannot drift."""
    inputs = ",\n".join(_tensor(n, s) for n, s in sig["inputs"].items())
    outputs = ",\n".join(_tensor(n, s) for n, s in sig["outputs"].items())
    return [f"input [\n{inputs}\n]", f"output [\n{outputs}\n]"]


def _execution(kind: str, instances: int, intra_op_threads: int) -> list[str]:
    """Where the model runs and with how many threads; local also names its ONNX file."""
    # KIND_AUTO: one group per GPU when the container has GPUs, CPU threads otherwise, so the
    # same file loads on a GPU node and on a laptop. With dynamic batching one instance is kept
    # busy; add instances only when a profile shows it idle between batches.
    device = "KIND_AUTO" if kind == PRODUCTION else "KIND_CPU"
    parts = [
        f"instance_group [ {{ count: {instances} kind: {device} }} ]",
        f'parameters {{ key: "intra_op_thread_count" value: {{ string_value: '
        f'"{intra_op_threads}" }} }}',
    ]
    if kind == LOCAL:  # the Python backend reads its ONNX file's name from here
        parts.append(f'parameters {{ key: "onnx_file" value: {{ string_value: "{MODEL_FILE}" }} }}')
    return parts


def _dynamic_batching(preferred_batch_sizes: tuple[int, ...], max_queue_delay_us: int) -> str:
    """The dynamic_batching block: Triton joins requests up to these sizes or this delay."""
    sizes = ", ".join(map(str, preferred_batch_sizes))
    return (
        f"dynamic_batching {{\n  preferred_batch_size: [ {sizes} ]\n"
        f"  max_queue_delay_microseconds: {max_queue_delay_us}\n}}"
    )


def _model_warmup(inputs: dict, preferred_batch_sizes: tuple[int, ...]) -> str:
    """The model_warmup block: zero-filled batches of 1 and of the largest preferred size."""
    # A version is marked ready only after a run at the sizes it will see, so the first real
    # requests after a (re)load do not pay onnxruntime's first-run allocations.
    warm = sorted({1, max(preferred_batch_sizes, default=1)})
    return "model_warmup [\n" + ",\n".join(_warmup(inputs, b) for b in warm) + "\n]"


def versions(model_dir: str | Path) -> list[int]:
    """The numbered version folders of a repository's model, ascending."""
    return sorted(int(p.name) for p in Path(model_dir).iterdir() if p.is_dir() and p.name.isdigit())


def _is_python_backend(model_dir: Path) -> bool:
    return 'backend: "python"' in (model_dir / CONFIG).read_text()


def add_version(model_dir: str | Path, onnx_path: str | Path, version: int) -> Path:
    """Put `onnx_path` in as `version` beside the versions already there (staged under another
    name and renamed, so a load never sees half a version). Its graph must take the inputs the
    other versions take, since they share one config.pbtxt."""
    model_dir, onnx_path = Path(model_dir), Path(onnx_path)
    if not (model_dir / CONFIG).is_file():
        raise FileNotFoundError(
            f"{model_dir} has no {CONFIG}: not a model of a repository; write one with "
            f"serving.triton.repository.write_repositories"
        )
    target = model_dir / str(int(version))
    if target.exists():
        raise FileExistsError(
            f"version {version} already exists in {model_dir}; use a new number (present: "
            f"{versions(model_dir)}) or remove_version it first"
        )
    present = versions(model_dir)
    if present:
        current = signature(model_dir / str(present[-1]) / MODEL_FILE)
        new = signature(onnx_path)
        if current != new:
            raise ValueError(
                f"{onnx_path} has inputs/outputs {new}, but version {present[-1]} of "
                f"{model_dir.name} has {current}; one config.pbtxt serves every version, so "
                f"write a new repository (write_repositories) for a tower of another shape"
            )
    staged = model_dir / f".{version}.staging"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    shutil.copyfile(onnx_path, staged / MODEL_FILE)
    if _is_python_backend(model_dir):
        shutil.copyfile(BACKEND_MODEL, staged / "model.py")
    os.replace(staged, target)
    return target


def remove_version(model_dir: str | Path, version: int) -> None:
    """Delete a version folder (a later load of the model unloads it). The last version is
    kept: Triton cannot load a model without one."""
    model_dir = Path(model_dir)
    present = versions(model_dir)
    if version not in present:
        raise FileNotFoundError(f"no version {version} in {model_dir}; present: {present}")
    if present == [version]:
        raise ValueError(
            f"version {version} is the only one in {model_dir}; add its successor first"
        )
    # renamed away first, so a concurrent load sees the version gone rather than half deleted
    doomed = model_dir / f".{version}.removing"
    os.replace(model_dir / str(version), doomed)
    shutil.rmtree(doomed)


def write_repositories(
    onnx_path: str | Path,
    root: str | Path,
    version: int = 1,
    max_batch_size: int = MAX_BATCH_SIZE,
    dynamic_batching: bool = True,
    preferred_batch_sizes: tuple[int, ...] = PREFERRED_BATCH_SIZES,
    max_queue_delay_us: int = MAX_QUEUE_DELAY_US,
    instances: int = 1,
    intra_op_threads: int = 1,
    model_name: str = MODEL_NAME,
) -> dict:
    """`root/production/<model_name>` and `root/local/<model_name>` from one ONNX export, each
    holding `version`; an existing model folder of that name is replaced. Returns the paths."""
    settings = {
        "model_name": model_name,
        "max_batch_size": max_batch_size,
        "dynamic_batching": dynamic_batching,
        "preferred_batch_sizes": tuple(preferred_batch_sizes),
        "max_queue_delay_us": max_queue_delay_us,
        "instances": instances,
        "intra_op_threads": intra_op_threads,
    }
    out = {"model_name": model_name, "version": version}
    for kind in (PRODUCTION, LOCAL):
        model_dir = Path(root) / kind / model_name
        text = model_config(onnx_path, kind, **settings)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        model_dir.mkdir(parents=True)
        write_bytes(model_dir / CONFIG, text.encode())
        add_version(model_dir, onnx_path, version)
        out[kind] = str(model_dir.parent)
    return out
