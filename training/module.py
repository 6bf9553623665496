"""The LightningModule: trains the two towers with the retrieval loss and evaluates them over
the full creator corpus.

Evaluation is exact and distributed: each rank scores its share of the held-out users against
every creator (the creators a fan is known to like excluded), keeps additive metric sums, and
the sums are all-reduced, so 1 or N processes give the same figures. Each epoch reads the
validation split where the dataset has one; test is read once, at the end of a fit. The tables
go to the logger (W&B: an evaluation table per epoch and a table of example recommendations).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist

from data.contract import FIRST_ID, UNK
from data.tables import CreatorFeatures, UserFeatures
from towers.model import TowerConfig, TwoTower
from training.data import positive_index
from training.evaluate import (
    EVALUATIONS,
    TRAINED_AT,
    finalize,
    merge_sums,
    metric_sums,
    top_k,
)
from training.loss import (
    MultiPositiveLoss,
    RetrievalLoss,
    StreamingFrequency,
    gather_plain,
    gather_rows,
)
from training.spectral import check_spectral_config, spectral_init

EVAL_COLUMNS = ("recall", "ndcg", "mrr", "hit_rate", "coverage", "avg_popularity", "cold_recall")


@torch.no_grad()
def encode_all_creators(model: TwoTower, creators: CreatorFeatures, chunk: int = 65536):
    """[C, dim] unit vectors of every creator (rows 0 and 1 are the reserved slots)."""
    creators = creators.to(next(model.parameters()).device)
    out = [
        model.encode_creators(**creators.select(torch.arange(s, min(s + chunk, len(creators)))))
        for s in range(0, len(creators), chunk)
    ]
    return torch.cat(out).float()


class TowerScorer:
    """Scores of users against precomputed creator vectors, in the shape top_k expects."""

    def __init__(self, model: TwoTower, users: UserFeatures, creator_emb: torch.Tensor):
        self.model, self.users, self.creator_emb = model, users, creator_emb
        self.num_creators = creator_emb.shape[0]

    @torch.no_grad()
    def __call__(self, users: np.ndarray) -> torch.Tensor:
        device = self.creator_emb.device
        idx = torch.as_tensor(users, device=self.users.history.device)
        inputs = self.users.inputs(idx, self.model.cfg.num_creators)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        emb = self.model.encode_users(**inputs)
        return emb.float() @ self.creator_emb.T  # [b, C]


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class TwoTowerModule(pl.LightningModule):
    """Two towers trained with in-batch sampled softmax and optional logQ correction, uniform
    negatives, cross-device negatives and accidental-hit masking.

    Args:
        tower: the towers' shape, whole (towers.model.TowerConfig: `--model.tower.dim 64`); its
            vocabulary sizes, text_dim and attribute_buckets are linked from the data module by
            the CLI. A checkpoint keeps it as `hyper_parameters["tower"]`, read back whole.
        init: random | spectral. spectral starts the towers at the low-pass graph filter of the
            training pairs (training/spectral.py; needs combiner linear, history_weights and
            hidden = dim), with spectral_exponent (history weights popularity^-(1/2 + it)),
            spectral_power (singular values to this power) and spectral_smoothing (added to
            every degree before normalising). A resumed fit skips it.
        logq_correction: subtract log q of each in-batch candidate (streaming frequency).
        cross_device: gather candidates from every rank, with gradients.
        mask_accidental_hits: a candidate that is one of the row's positives is not a negative;
            mask_train_positives extends that to every training pair of the user.
        uniform_negatives: extra creators drawn uniformly from the corpus per step (0 = off).
        full_corpus_softmax: with user batches (`--data.sampling users`), score every creator
            as a candidate (exact softmax, no sampling bias) instead of the batch's positives
            plus uniform negatives; for catalogs whose users × creators logits fit a step.
        history_dropout: probability of dropping each history item in training.
        cold_user_rate: probability of showing a training row as an unknown user (UNK id, empty
            history); evaluation and serving encode users without training pairs that way.
        lr, weight_decay, warmup_fraction, schedule: AdamW, linear warmup, cosine | constant.
        eval_k: cut-offs of the evaluation (one ranking at the largest).
        cold_threshold: creators with at most this many training interactions form the cold slice.
    """

    def __init__(
        self,
        tower: TowerConfig,
        init: str = "random",
        spectral_exponent: float = 0.5,
        spectral_power: float = 1.0,
        spectral_smoothing: float = 0.0,
        logq_correction: bool = True,
        cross_device: bool = True,
        mask_accidental_hits: bool = True,
        mask_train_positives: bool = True,
        uniform_negatives: int = 1024,
        full_corpus_softmax: bool = False,
        history_dropout: float = 0.0,
        cold_user_rate: float = 0.0,
        lr: float = 5e-3,
        weight_decay: float = 0.0,
        warmup_fraction: float = 0.02,
        schedule: str = "cosine",
        eval_k: list[int] | None = None,
        cold_threshold: int = 5,
    ):
        super().__init__()
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"--model.schedule={schedule!r}: use cosine or constant")
        if init not in ("random", "spectral"):
            raise ValueError(f"--model.init={init!r}: use random or spectral")
        if spectral_smoothing < 0:
            raise ValueError(f"--model.spectral_smoothing={spectral_smoothing}: use a value >= 0")
        if not 0.0 <= history_dropout < 1.0:
            raise ValueError(f"--model.history_dropout={history_dropout}: use a value in [0, 1)")
        if not 0.0 <= cold_user_rate < 1.0:
            raise ValueError(f"--model.cold_user_rate={cold_user_rate}: use a value in [0, 1)")
        if isinstance(tower, dict):  # hyper_parameters of a checkpoint (load_from_checkpoint)
            tower = TowerConfig(**tower)
        # the tower config as a plain dict: checkpoints load with weights_only=True (no pickle)
        self.save_hyperparameters(ignore=["tower"])
        self.hparams["tower"] = dataclasses.asdict(tower)
        self.eval_k = tuple(sorted(eval_k or [20]))
        self.model = TwoTower(tower)
        if init == "spectral":
            check_spectral_config(self.model)  # before data is read, not after
        self.frequency = StreamingFrequency()
        self.loss = RetrievalLoss(logq_correction, cross_device, mask_accidental_hits)
        self.user_loss = MultiPositiveLoss(logq_correction, cross_device, mask_accidental_hits)
        self._eval_rows: list[list] = []
        self.evaluations: list[dict] = []
        """Every evaluation of the run so far, as evaluation.jsonl has it; kept in the checkpoint
        so the index built from it can show the model's curve (the explorer's health view)."""

    # -- data the steps need, moved to the module's device once --------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        dm.setup(stage)
        self.creators = dm.creators
        self.users = dm.users
        self.positives = positive_index(dm.train, self.model.cfg.num_creators)
        for loss in (self.loss, self.user_loss):
            loss.rank, loss.world_size = self.trainer.global_rank, self.trainer.world_size
        if stage == "fit" and self.hparams.init == "spectral" and not self.trainer.ckpt_path:
            # every rank computes the same (seeded) filter; DDP then broadcasts rank 0's weights
            h = self.hparams
            spectral_init(
                self.model, dm.train, h.spectral_exponent, h.spectral_power, h.spectral_smoothing
            )

    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter()
        self._to_device()

    def on_fit_end(self) -> None:
        """A fit that took no step (`--trainer.max_epochs 0`: the spectral init as it stands)
        still leaves a last.ckpt, to export, index and serve like any other."""
        callback = self.trainer.checkpoint_callback
        if self.global_step == 0 and callback is not None and callback.dirpath:
            self.trainer.save_checkpoint(Path(callback.dirpath) / "last.ckpt")  # a collective

    def on_validation_start(self) -> None:
        self._to_device()

    def _to_device(self) -> None:
        self.creators = self.creators.to(self.device)
        self.users = self.users.to(self.device)
        self.positives = self.positives.to(self.device)

    # -- training -------------------------------------------------------------------------------
    def _drop_history(self, history: torch.Tensor) -> torch.Tensor:
        if not self.hparams.history_dropout:
            return history
        drop = torch.rand(history.shape, device=history.device) < self.hparams.history_dropout
        return history.masked_fill(drop, 0)

    def _cold_users(self, users: torch.Tensor, history: torch.Tensor):
        """With probability cold_user_rate a row is shown as a user we know nothing about (UNK,
        empty history), so the UNK row learns what to recommend to one (popular creators)."""
        rate = self.hparams.cold_user_rate
        if not rate:
            return users, history
        cold = torch.rand(len(users), device=users.device) < rate
        return torch.where(cold, UNK, users), history.masked_fill(cold[:, None], 0)

    def _uniform_ids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform negatives from the corpus (reserved slots excluded) and their log q."""
        n, count = self.model.cfg.num_creators, self.hparams.uniform_negatives
        ids = torch.randint(FIRST_ID, n, (count,), device=self.device)
        return ids, torch.full((count,), math.log(count / (n - FIRST_ID)), device=self.device)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if "creator" not in batch:
            return self._user_step(batch["user"])
        h = self.hparams
        users, creators = batch["user"], batch["creator"]
        user_ids, history = self._cold_users(users, self._drop_history(batch["history"]))
        user_emb = self.model.encode_users(user_ids, history, self.users.attributes[users])
        creator_emb = self.model.encode_creators(**self.creators.select(creators))  # [B, D]
        self.frequency.update(gather_plain(creators, self.trainer.world_size))
        extra = self._uniform_negatives() if h.uniform_negatives else {}
        terms = self.loss(
            user_emb,
            creator_emb,
            self.model.scale(),
            users=users,
            creators=creators,
            log_q=self.frequency.log_q(creators),
            weight=batch["weight"].float(),
            positives=self.positives if h.mask_train_positives else None,
            **extra,
        )
        loss = sum(terms.values())
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=True)
        self.log("train/temperature", 1.0 / self.model.scale().detach())
        return loss

    def _user_step(self, users: torch.Tensor) -> torch.Tensor:
        """A batch of users, each with its serving history as input and all of its training
        creators as positives (training.loss.MultiPositiveLoss). The candidates are every
        creator (`full_corpus_softmax`) or every rank's positives (logQ from the streaming
        frequency) plus uniform negatives; each user's own training creators are never its
        negatives when accidental hits are masked. Example weights do not apply here: a pair
        is a positive."""
        h = self.hparams
        user_ids, history = self._cold_users(users, self._drop_history(self.users.history[users]))
        user_emb = self.model.encode_users(user_ids, history, self.users.attributes[users])
        rows, targets = self.positives.pairs(users)  # [T], [T]
        common = {"users": users, "rows": rows, "targets": targets, "positives": self.positives}
        if h.full_corpus_softmax:
            corpus = self.model.encode_creators(**self.creators.select(self.creators.creator))
            terms = self.user_loss(user_emb, self.model.scale(), corpus_emb=corpus, **common)
        else:
            world = self.trainer.world_size
            self.frequency.update(gather_rows(targets, self.global_rank, world, False)[0])
            extra = self._uniform_negatives() if h.uniform_negatives else {}
            terms = self.user_loss(
                user_emb,
                self.model.scale(),
                target_emb=self.model.encode_creators(**self.creators.select(targets)),
                target_log_q=self.frequency.log_q(targets),
                **extra,
                **common,
            )
        loss = terms["contrastive_loss"]
        self.log("train/contrastive_loss", loss, prog_bar=True, sync_dist=True)
        self.log("train/temperature", 1.0 / self.model.scale().detach())
        return loss

    def _uniform_negatives(self) -> dict[str, torch.Tensor]:
        """The loss's extra_* arguments: uniform negatives, their vectors and log q."""
        ids, log_q = self._uniform_ids()
        return {
            "extra_emb": self.model.encode_creators(**self.creators.select(ids)),
            "extra_ids": ids,
            "extra_log_q": log_q,
        }

    def configure_optimizers(self):
        h = self.hparams
        fused = torch.cuda.is_available() or self.device.type == "cpu"
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=h.lr, weight_decay=h.weight_decay, fused=fused
        )
        if h.schedule == "constant":
            return optimizer
        total = self._total_steps()
        warmup = max(1, int(h.warmup_fraction * total))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, warmup, total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _total_steps(self) -> int:
        """Optimizer steps of the whole fit, from the balanced shard layout (Lightning's
        estimated_stepping_batches would start the loader's workers inside the DDP setup)."""
        t = self.trainer
        per_epoch = t.datamodule.train_batches_per_rank(t.world_size)
        limit = t.limit_train_batches
        if isinstance(limit, int):
            per_epoch = min(per_epoch, limit)
        elif limit is not None:
            per_epoch = int(per_epoch * limit)
        per_epoch = max(1, per_epoch // t.accumulate_grad_batches)
        total = per_epoch * t.max_epochs if t.max_epochs is not None and t.max_epochs >= 0 else None
        if t.max_steps and t.max_steps > 0:
            total = min(total or t.max_steps, t.max_steps)
        if total is None:
            raise ValueError("cosine schedule needs --trainer.max_epochs or --trainer.max_steps")
        return max(1, total)  # max_epochs 0 takes no step, but the schedule needs a length

    # -- full-corpus evaluation -----------------------------------------------------------------
    # Each epoch scores the held-out split (validation where the dataset has one) against the
    # training creators; the one test evaluation at the end of a fit (training.cli) scores test
    # against all a fan is known to like (train and validation).
    def on_validation_epoch_start(self) -> None:
        self._start_evaluation(self.trainer.datamodule.held_out)

    def on_test_epoch_start(self) -> None:
        self._to_device()
        self._start_evaluation(self.trainer.datamodule.test)

    def validation_step(self, users: torch.Tensor, batch_idx: int) -> None:
        dm = self.trainer.datamodule
        self._evaluation_step(users, batch_idx, dm.train, dm.held_out)

    def test_step(self, users: torch.Tensor, batch_idx: int) -> None:
        dm = self.trainer.datamodule
        self._evaluation_step(users, batch_idx, dm.known, dm.test)

    def _start_evaluation(self, truth) -> None:
        self._creator_emb = encode_all_creators(self.model, self.creators)
        dm = self.trainer.datamodule
        empty = np.zeros((0, max(self.eval_k)), dtype=np.int64)
        self._sums = metric_sums(
            empty, truth, empty[:, 0], dm.popularity, self.eval_k, self.hparams.cold_threshold
        )
        self._started = time.perf_counter()

    def _evaluation_step(self, users: torch.Tensor, batch_idx: int, exclude, truth) -> None:
        dm = self.trainer.datamodule
        users = users.cpu().numpy()
        scorer = TowerScorer(self.model, self.users, self._creator_emb)
        recommended = top_k(scorer, exclude, max(self.eval_k), users)
        block = metric_sums(
            recommended, truth, users, dm.popularity, self.eval_k, self.hparams.cold_threshold
        )
        self._sums = merge_sums(self._sums, block)
        if batch_idx == 0 and self.trainer.is_global_zero:
            self._examples = (users[:8], recommended[:8])

    def _finish_evaluation(self) -> dict:
        sums = self._sums
        if self.trainer.world_size > 1:
            sums = {k: self._all_reduce(v) for k, v in sums.items()}
        result = finalize(sums, self.eval_k)
        result["eval_seconds"] = time.perf_counter() - self._started
        if hasattr(self, "_fit_started"):  # wall time of this fit so far, evaluations included
            result["fit_seconds"] = time.perf_counter() - self._fit_started
        return result

    def on_validation_epoch_end(self) -> None:
        result = self._finish_evaluation()
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective
        if self.trainer.sanity_checking:
            # --trainer.num_sanity_val_steps -1 runs the whole evaluation before the first step:
            # the starting point's figures (a spectral init's filter), recorded as epoch -1
            if self.trainer.num_sanity_val_steps == float("inf"):
                self.start_metrics = result
                if self.trainer.is_global_zero:
                    self._append_json(result, folder, epoch=-1)
                    for logger in self.loggers:  # self.log is off while sanity checking
                        logger.log_metrics({f"start/{k}": float(v) for k, v in result.items()}, 0)
            return
        self.log_dict({f"val/{k}": float(v) for k, v in result.items()}, sync_dist=False)
        self.last_metrics = result
        if self.trainer.is_global_zero:
            self._log_tables(result)
            self._append_json(result, folder)

    def on_test_epoch_end(self) -> None:
        """The test figures of the checkpoint the fit kept, recorded under the epoch it was
        saved at (its own evaluations end there) and its file name."""
        result = self._finish_evaluation()
        result.pop("fit_seconds", None)
        self.log_dict({f"test/{k}": float(v) for k, v in result.items()}, sync_dist=False)
        self.test_metrics = result
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective
        if self.trainer.is_global_zero:
            kept = [e for e in self.evaluations if e.get("split") != "test"]
            at = kept[-1] if kept else {"epoch": -1, "step": 0}
            checkpoint = Path(self.trainer.ckpt_path).name if self.trainer.ckpt_path else None
            line = {**result, "checkpoint": checkpoint}
            self._append_json(line, folder, epoch=at["epoch"], step=at["step"], split="test")

    def _append_json(
        self,
        result: dict,
        folder: Path,
        epoch: int | None = None,
        step: int | None = None,
        split: str | None = None,
    ) -> None:
        """One line per evaluation in <log_dir>/evaluation.jsonl, for scripts and benchmarks."""
        folder.mkdir(parents=True, exist_ok=True)
        epoch = self.current_epoch if epoch is None else epoch
        step = self.global_step if step is None else step
        split = split or self.trainer.datamodule.eval_split  # validation where there is one
        line = {"epoch": epoch, "step": step, "split": split, **result}
        # plain Python values (a checkpoint loads weights_only): numpy scalars become floats
        self.evaluations.append(
            {k: v if isinstance(v, (str, int)) or v is None else float(v) for k, v in line.items()}
        )
        with open(folder / "evaluation.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[EVALUATIONS] = list(self.evaluations)  # plain floats: loads weights_only
        checkpoint[TRAINED_AT] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.evaluations = list(checkpoint.get(EVALUATIONS, []))  # a resumed run goes on

    def _all_reduce(self, value) -> np.ndarray:
        t = torch.as_tensor(np.asarray(value, dtype=np.float64))
        dist.all_reduce(t)  # float64 sums on CPU: gloo, and NCCL via the default group
        return t.numpy()

    def _log_tables(self, result: dict) -> None:
        from pytorch_lightning.loggers import WandbLogger

        for k in self.eval_k:
            self._eval_rows.append(
                [self.current_epoch, self.global_step, k]
                + [result[f"{c}@{k}"] for c in EVAL_COLUMNS]
            )
        for logger in self.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            logger.log_table(
                "eval/metrics", columns=["epoch", "step", "k", *EVAL_COLUMNS], data=self._eval_rows
            )
            if getattr(self, "_examples", None) is not None:
                logger.log_table("eval/examples", **self._example_table())

    def _example_table(self) -> dict:
        dm = self.trainer.datamodule
        names = dm.creator_names()
        users, recommended = self._examples
        rows = []
        for u, recs in zip(users, recommended, strict=True):
            truth = set(dm.held_out.row(u).tolist())
            history = [names[c] for c in dm.train.row(u)[:10]]
            shown = [("✓ " if c in truth else "") + names[c] for c in recs[:10]]
            rows.append([dm.user_ids[u], " · ".join(history), " · ".join(shown)])
        return {
            "columns": ["user", "history (first 10)", "top 10 (✓ = held-out hit)"],
            "data": rows,
        }
