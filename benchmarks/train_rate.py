"""Training speed on this machine: the towers' training samples/s through the real training
step (Lightning, TwoTowerModule, the machine's precision: bf16 autocast on a GPU with bf16
units, fp32 elsewhere), beside the shard loader's samples/s on the same data.

    python benchmarks/train_rate.py                                   # the demo dataset
    python benchmarks/train_rate.py --data artifacts/data/<name> --workers 8 --records-per-batch 32

The two figures answer one question a relevance team asks of a new machine: does the
accelerator wait for the loader? The loader is timed alone, over its own epochs (its workers
decoding shards into batches, pinned where there is a GPU); the training step is timed after
`--warmup` steps (the first steps compile kernels and fill caches), through the same loader, so
`train samples/s` is what a fit gets and `loader / train` above 1 means the loader keeps up.

Writes artifacts/bench/train_rate/train_rate_gpu.json (or _cpu; --out another folder).
benchmarks/gpu_check.sh runs it on a lent GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pytorch_lightning as pl  # noqa: E402

from common.io import write_json  # noqa: E402
from towers.model import TowerConfig  # noqa: E402
from training.cli import default_precision  # noqa: E402
from training.data import TowerDataModule  # noqa: E402
from training.module import TwoTowerModule  # noqa: E402


def sync() -> None:
    """Wait for the GPU's queued work, so a clock read after it counts that work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepRate(pl.Callback):
    """Samples and seconds of the training steps after the first `warmup` of the fit."""

    def __init__(self, warmup: int):
        self.warmup, self.steps, self.samples = warmup, 0, 0
        self.started = self.seconds = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.steps == self.warmup:
            sync()
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.steps >= self.warmup:
            self.samples += len(batch["user"])
        self.steps += 1

    def on_train_end(self, trainer, module) -> None:
        sync()
        if self.started is not None:
            self.seconds = time.perf_counter() - self.started


def data_module(a) -> TowerDataModule:
    dm = TowerDataModule(
        str(a.data), records_per_batch=a.records_per_batch, num_workers=a.workers, seed=0
    )
    dm.setup()
    return dm


def loader_rate(dm: TowerDataModule, batches: int) -> dict:
    """The shard loader alone: samples/s over `batches` batches (as many epochs as that takes;
    each epoch's loader starts its workers afresh, as a fit's does)."""
    seen = samples = 0
    started = time.perf_counter()
    while seen < batches:
        for batch in dm.train_dataloader():
            samples += len(batch["user"])
            seen += 1
            if seen == batches:
                break
    seconds = time.perf_counter() - started
    return {"batches": seen, "samples": samples, "seconds": round(seconds, 3),
            "samples_per_s": round(samples / seconds)}  # fmt: skip


def train_rate(dm: TowerDataModule, a) -> dict:
    """The real training step (the demo config's towers) for warmup + steps steps."""
    tower = TowerConfig(
        num_users=dm.num_users, num_creators=dm.num_creators, num_categories=dm.num_categories,
        num_tags=dm.num_tags, text_dim=dm.text_dim,
        attribute_buckets=dm.hparams.user_attribute_buckets, dim=a.dim, hidden=a.hidden,
    )  # fmt: skip
    module = TwoTowerModule(tower, uniform_negatives=a.uniform_negatives, eval_k=[20])
    rate = StepRate(a.warmup)
    trainer = pl.Trainer(
        accelerator="auto", devices=1, precision=default_precision(), max_epochs=-1,
        max_steps=a.warmup + a.steps, logger=False, enable_checkpointing=False,
        limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False,
        enable_model_summary=False, reload_dataloaders_every_n_epochs=1, callbacks=[rate],
        default_root_dir=str(a.lightning_dir or a.out / "lightning"),
    )  # fmt: skip
    trainer.fit(module, dm)
    return {"precision": trainer.precision, "steps_timed": rate.steps - a.warmup,
            "samples": rate.samples, "seconds": round(rate.seconds, 3),
            "samples_per_s": round(rate.samples / rate.seconds)}  # fmt: skip


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO / "artifacts/data/synthetic_demo")
    ap.add_argument("--records-per-batch", type=int, default=8, help="× the record size")
    ap.add_argument("--workers", type=int, default=2, help="loader workers")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--uniform-negatives", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=10, help="steps before the clock starts")
    ap.add_argument("--steps", type=int, default=100, help="steps timed")
    ap.add_argument("--out", type=Path, default=REPO / "artifacts/bench/train_rate")
    ap.add_argument("--lightning-dir", type=Path, help="Lightning's own folder (default: in --out)")
    a = ap.parse_args()
    dm = data_module(a)
    result = {"device": device_name(), "torch": torch.__version__, "data": str(a.data),
              "batch_size": dm.batch_size, "workers": a.workers,
              "loader": loader_rate(dm, a.warmup + a.steps),
              "train": train_rate(dm, a)}  # fmt: skip
    result["loader_over_train"] = round(
        result["loader"]["samples_per_s"] / result["train"]["samples_per_s"], 2
    )
    path = a.out / f"train_rate_{'gpu' if torch.cuda.is_available() else 'cpu'}.json"
    write_json(path, result)  # atomic; the folder made if missing
    print(json.dumps(result, indent=1), f"\nwrote {path}")


if __name__ == "__main__":
    main()
