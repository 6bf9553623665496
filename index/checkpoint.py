"""The towers of a trained checkpoint, without Lightning or pickle, and the model version.

A Lightning checkpoint holds the module's weights under `model.` and its constructor arguments
in `hyper_parameters`, the tower config whole under `tower`: enough to rebuild
`towers.model.TwoTower` exactly as `training.module.TwoTowerModule` built it. The model
version is a hash of the weights alone, so two checkpoints with the same weights (a copy, a
re-save) are the same model, and serving can compare the index's with the tower it runs.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.errors import MissingInputError
from data import contract
from towers.model import TowerConfig, TwoTower
from training.evaluate import EVALUATIONS, TRAINED_AT

log = logging.getLogger(__name__)

PREFIX = "model."
LAST = "last.ckpt"


@dataclass
class TrainedModel:
    """A checkpoint's towers (in eval mode) and what was recorded about how they were trained."""

    model: TwoTower
    config: TowerConfig
    path: Path
    version: str
    """sha256 of the tower weights (see model_version)."""
    data_hparams: dict
    """The data module's arguments: data_dir, user_attribute_buckets, max_user_attributes, ..."""
    epoch: int | None = None
    global_step: int | None = None
    evaluations: list[dict] = field(default_factory=list)
    """The run's evaluations up to this checkpoint, epoch by epoch (training.evaluate); empty
    for a checkpoint saved before training kept them."""
    selected_by: dict | None = None
    """{"monitor": "val/recall@20", "score": ...} for a checkpoint its run chose on validation;
    None for one no monitor chose."""
    trained_at: str | None = None
    """When its run saved these weights (ISO 8601, UTC; training.evaluate.TRAINED_AT); None
    for a checkpoint saved before training recorded it."""

    @property
    def attribute_hashing(self) -> tuple[int, int]:
        """(buckets, width): how the training data module hashed user attributes, which the
        ONNX export and the feature store repeat (data.contract.hash_attributes)."""
        h = self.data_hparams
        # at least one real bucket: the feature store hashes attributes even for a tower
        # trained without them
        buckets = h.get("user_attribute_buckets", contract.ATTRIBUTE_BUCKETS)
        buckets = max(int(buckets), contract.FIRST_ID + 1)
        return buckets, int(h.get("max_user_attributes", contract.ATTRIBUTE_WIDTH))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or for a folder the checkpoint its newest run kept: the one
    its monitor chose on validation (see kept_checkpoint), else that run's `last.ckpt` (a
    training run's checkpoints land in `<save_dir>/<project>/<run id>/checkpoints/`, the run id
    random)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted(path.rglob(LAST), key=lambda p: p.stat().st_mtime)
        if found:
            return kept_checkpoint(found[-1])
        raise MissingInputError(
            f"no {LAST} under checkpoint folder {path}; train first (`python -m training fit "
            f"--config configs/train/<name>.yaml`) or set checkpoint to a .ckpt file"
        )
    raise MissingInputError(
        f"checkpoint {path} not found; train first (`python -m training fit ...`) or set "
        f"`--checkpoint PATH` to a .ckpt file or a run folder"
    )


def monitor_state(ckpt: dict) -> dict:
    """The ModelCheckpoint state a checkpoint carries (monitor, best_model_path, ...), {} for
    a run that monitored nothing (no validation split)."""
    for key, value in ckpt.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and value.get("monitor"):
            return value
    return {}


def kept_checkpoint(last: Path) -> Path:
    """The checkpoint a run's monitor kept as its best (training.cli: the epoch with the best
    validation metric), as named in `last.ckpt`; `last.ckpt` itself when the run chose none or
    the file is gone (moved folders are followed: the name is looked up beside `last.ckpt`)."""
    state = monitor_state(torch.load(last, map_location="cpu", weights_only=True, mmap=True))
    if not state.get("best_model_path"):
        return last
    best = last.parent / Path(state["best_model_path"]).name
    if best.is_file():
        return best
    log.warning("%s names %s as its best checkpoint, but it is gone: using last", last, best)
    return last


def model_version(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the tower weights in sorted key order: name, dtype, shape and bytes of each.
    Anything outside the towers (the loss's streaming frequency) is not part of the model."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        if not key.startswith(PREFIX):
            continue
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tower_config(hparams: dict) -> TowerConfig:
    """The TowerConfig a checkpoint's hyper_parameters hold whole under `tower`."""
    if not isinstance(hparams.get("tower"), dict):
        raise ValueError(
            f"checkpoint hyper_parameters have no `tower` config; is it a TwoTowerModule "
            f"checkpoint from `python -m training fit`? keys: {sorted(hparams)}"
        )
    return TowerConfig(**hparams["tower"])


def load(path: str | Path) -> TrainedModel:
    """The towers of a checkpoint file or run folder, weights checked key by key."""
    path = resolve_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "hyper_parameters"):
        if key not in ckpt:
            raise ValueError(f"{path} has no {key!r}: not a Lightning checkpoint of the towers")
    cfg = tower_config(ckpt["hyper_parameters"])
    model = TwoTower(cfg)
    weights = {
        k.removeprefix(PREFIX): v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)
    }
    model.load_state_dict(weights, strict=True)  # a missing or extra tensor is a wrong model
    model.eval()
    data_hparams = {
        k: v for k, v in ckpt.get("datamodule_hyper_parameters", {}).items() if k[:1] != "_"
    }
    log.info("loaded %s (epoch %s, step %s)", path, ckpt.get("epoch"), ckpt.get("global_step"))
    return TrainedModel(
        model=model,
        config=cfg,
        path=path,
        version=model_version(ckpt["state_dict"]),
        data_hparams=data_hparams,
        epoch=ckpt.get("epoch"),
        global_step=ckpt.get("global_step"),
        evaluations=list(ckpt.get(EVALUATIONS, [])),
        selected_by=selection(ckpt, path),
        trained_at=ckpt.get(TRAINED_AT),
    )


def selection(ckpt: dict, path: Path) -> dict | None:
    """How the run chose this checkpoint, if it did: its monitor and score (a checkpoint the
    monitor keeps is saved after it becomes the best, so the best it names is itself)."""
    state = monitor_state(ckpt)
    if Path(state.get("best_model_path") or "").name != path.name:
        return None  # last.ckpt, or a checkpoint of a run that monitored nothing
    score = state.get("best_model_score")
    return {"monitor": state["monitor"], "score": None if score is None else float(score)}
