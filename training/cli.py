"""`python -m training fit --config configs/train/<name>.yaml`: LightningCLI over the module and
data module, every option overridable on the command line (`--model.lr 1e-3`,
`--model.tower.dim 128`, `--trainer.devices 2`, `--data.records_per_batch 4`).

Decided here, once: precision (bf16 mixed on a GPU that supports it, fp32 elsewhere), the W&B
logger (offline unless `--trainer.logger.offline false`), checkpointing (`last.ckpt` for resuming
with `--ckpt_path last`, and the best epoch by `checkpoint.monitor`, a validation metric) and
the resolved config written beside the checkpoints.

Model selection never reads test. Each epoch evaluates the validation split carved from train
(data `split.validation_fraction`); the checkpoint with the best `val/recall@20`
(training.evaluate.SELECTION_METRIC) is kept, and after the fit that checkpoint, and only it, is
evaluated on test: one `"split": "test"` line in evaluation.jsonl, `test/*` in the logger. A
dataset without a validation split evaluates test each epoch, as before, and then keeps only
the last checkpoint: choosing one by test would be choosing on test.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI, SaveConfigCallback
from pytorch_lightning.utilities import rank_zero_only

from training.data import TowerDataModule, has_validation
from training.evaluate import SELECTION_METRIC
from training.module import TwoTowerModule


def default_precision() -> str:
    """bf16 autocast where the GPU has bf16 units, full fp32 on CPU (bf16 matmuls on CPUs
    without AMX run several times slower than fp32)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


class SaveConfigBesideCheckpoints(SaveConfigCallback):
    """Also writes the resolved config into the checkpoint folder, so every checkpoint can be
    traced to the exact options that produced it."""

    def on_train_start(self, trainer, pl_module) -> None:
        self._write(trainer)  # the checkpoint folder is resolved by now

    @rank_zero_only
    def _write(self, trainer) -> None:
        folder = trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback else None
        if folder is None:
            return
        os.makedirs(folder, exist_ok=True)
        path = Path(folder) / self.config_filename
        tmp = path.with_suffix(".tmp")
        self.parser.save(self.config, tmp, overwrite=True, multifile=False)
        os.replace(tmp, path)


class TowerCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        _link_dataset_to_towers(parser)
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_argument(
            "--test_after_fit", type=bool, default=True,
            help="evaluate the kept checkpoint on test once the fit ends; a sweep turns it off "
                 "and tests only the setting validation chose (`python -m training test`)",
        )  # fmt: skip
        parser.set_defaults({**_checkpoint_defaults(), **_trainer_defaults()})

    def before_fit(self) -> None:
        callback = self.trainer.checkpoint_callback
        if callback is None or callback.monitor is None:
            return
        if not has_validation(self.datamodule.data_dir):
            warnings.warn(
                f"{self.datamodule.data_dir} has no validation split, so each epoch evaluates "
                f"test and no checkpoint is chosen by {callback.monitor}: the last is kept. "
                f"Prepare it with split.validation_fraction (configs/data/<name>.yaml) to choose "
                f"on validation.",
                stacklevel=1,
            )
            callback.monitor = None

    def after_fit(self) -> None:
        self.test_once()
        finish_wandb()

    def test_once(self) -> None:
        """Test, read once: the checkpoint the monitor kept (the weights as they are when no
        epoch was evaluated, e.g. `--trainer.max_epochs 0`)."""
        dm = self.datamodule
        if dm.validation is None or not self.config[self.subcommand].get("test_after_fit", True):
            return  # each epoch evaluated test already, or a sweep tests its choice alone
        callback = self.trainer.checkpoint_callback
        best = callback.best_model_path if callback is not None and callback.monitor else ""
        self.trainer.test(self.model, datamodule=dm, ckpt_path=best or None, verbose=False)


def _link_dataset_to_towers(parser) -> None:
    """Link the data module's sizes and attribute buckets into the towers' options, so a
    config never states them twice."""
    # the towers' vocabulary sizes and input widths are the prepared dataset's
    for name in ("num_users", "num_creators", "num_categories", "num_tags", "text_dim"):
        parser.link_arguments(f"data.{name}", f"model.tower.{name}", apply_on="instantiate")
    parser.link_arguments(
        "data.user_attribute_buckets", "model.tower.attribute_buckets", apply_on="parse"
    )


def _checkpoint_defaults() -> dict:
    """`last.ckpt` for resuming, and the one best epoch by the validation selection metric."""
    return {
        "checkpoint.save_last": True,
        "checkpoint.filename": "epoch{epoch:03d}-step{step}",
        "checkpoint.auto_insert_metric_name": False,
        "checkpoint.monitor": f"val/{SELECTION_METRIC}",
        "checkpoint.mode": "max",
        "checkpoint.save_top_k": 1,
    }


def _trainer_defaults() -> dict:
    """Precision for this machine (probed when the parser is built, not at import), fresh
    shard order each epoch, and an offline W&B logger under artifacts/runs."""
    return {
        "trainer.precision": default_precision(),
        "trainer.num_sanity_val_steps": 0,
        "trainer.reload_dataloaders_every_n_epochs": 1,  # reshuffle shards each epoch
        "trainer.default_root_dir": "artifacts/runs",
        "trainer.logger": {
            "class_path": "pytorch_lightning.loggers.WandbLogger",
            "init_args": {
                "project": "towerline",
                "save_dir": "artifacts/runs",
                "offline": True,
            },
        },
    }


def finish_wandb() -> None:
    """Close the W&B run so the next fit in this process starts its own (Lightning leaves it
    open)."""
    import wandb

    if wandb.run is not None:
        wandb.finish()


def main(args: list[str] | None = None, run: bool = True) -> TowerCLI:
    os.environ.setdefault("WANDB_SILENT", "true")
    # The record stream's length is exact (balanced shards), so webdataset's notice is noise.
    warnings.filterwarnings("ignore", message=r".*with_length\(\) only sets")
    warnings.filterwarnings("ignore", message=r".*IterableDataset. has .__len__. defined")
    return TowerCLI(
        TwoTowerModule,
        TowerDataModule,
        save_config_callback=SaveConfigBesideCheckpoints,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
