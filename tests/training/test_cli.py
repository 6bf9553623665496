"""`python -m training fit` end to end on a tiny prepared dataset: metrics, the config beside
the checkpoints, resuming after a kill, every shipped YAML, and 2 processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import REPO
from training.cli import main
from training.data import TowerDataModule

CONFIGS = sorted((REPO / "configs" / "train").glob("*.yaml"))


def fit_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config", str(REPO / "configs" / "train" / "synthetic_demo.yaml"),
        "--data.data_dir", str(data),
        "--data.records_per_batch", "2",
        "--trainer.default_root_dir", str(out),
        "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.enable_progress_bar", "false",
        "--model.tower.dim", "16",
        "--model.tower.hidden", "32",
        "--model.uniform_negatives", "64",
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_train_config_parses_and_builds(path, tiny_data, tmp_path):
    cli = main(
        ["--config", str(path), "--data.data_dir", str(tiny_data), "--trainer.logger", "false",
         "--trainer.default_root_dir", str(tmp_path)],
        run=False,
    )  # fmt: skip
    assert cli.model.hparams.tower["num_creators"] == cli.datamodule.num_creators
    assert cli.model.model.cfg.num_creators == cli.datamodule.num_creators
    assert cli.datamodule.batch_size % cli.datamodule.record_size == 0


def test_fit_logs_full_corpus_metrics_and_saves_config_beside_checkpoints(tiny_data, tmp_path):
    """tiny_data has no validation split: each epoch evaluates test, and the monitor is
    switched off (with a warning) so that no checkpoint is chosen on it."""
    with pytest.warns(UserWarning, match="no validation split"):
        cli = main(["fit", *fit_args(tiny_data, tmp_path, "--trainer.max_epochs", "2")])
    assert cli.trainer.checkpoint_callback.monitor is None
    metrics = cli.trainer.callback_metrics
    for name in ("val/recall@20", "val/ndcg@20", "val/coverage@20", "val/cold_recall@20"):
        assert name in metrics, sorted(metrics)
    assert 0.0 < float(metrics["val/recall@20"]) <= 1.0
    assert float(metrics["train/contrastive_loss"]) > 0
    ckpt_dir = Path(cli.trainer.checkpoint_callback.dirpath)
    assert (ckpt_dir / "last.ckpt").exists()
    saved = yaml.safe_load((ckpt_dir / "config.yaml").read_text())
    assert saved["model"]["tower"]["dim"] == 16 and saved["data"]["data_dir"] == str(tiny_data)
    # W&B ran offline, wrote its run files, and got the evaluation table
    tables = list(tmp_path.glob("wandb/offline-run-*/files/media/table/eval/metrics_*.json"))
    assert tables, list(tmp_path.rglob("*"))[:20]
    table = json.loads(max(tables, key=lambda p: p.stat().st_mtime).read_text())
    assert len(table["data"]) == 2 * 3  # 2 evaluations × K in (10, 20, 50)
    assert "recall" in table["columns"] and "cold_recall" in table["columns"]
    assert cli.trainer.global_step == 2 * cli.datamodule.train_batches_per_rank(1)
    # one line per evaluation in evaluation.jsonl, with the fit's wall time so far
    lines = next(tmp_path.rglob("evaluation.jsonl")).read_text().splitlines()
    seconds = [json.loads(line)["fit_seconds"] for line in lines]
    assert len(seconds) == 2 and 0 < seconds[0] < seconds[1]
    assert [json.loads(line)["split"] for line in lines] == ["test", "test"]  # and no more


USER_SAMPLING = ["--data.sampling", "users", "--data.users_per_batch", "64"]


@pytest.mark.parametrize(
    "extra",
    [
        [],
        [*USER_SAMPLING, "--model.full_corpus_softmax", "true", "--model.tower.combiner", "linear"],
        # 18 user batches an epoch: sampled negatives need a higher rate to pass popularity
        # within 4 epochs (5e-3 gets there by epoch 5-6, 2e-2 by epoch 1-2)
        [*USER_SAMPLING, "--model.full_corpus_softmax", "false", "--model.lr", "2e-2"],
    ],
    ids=["examples", "users-full-corpus-linear", "users-sampled"],
)
def test_training_beats_popularity_on_the_tiny_dataset(tiny_data, tmp_path, extra):
    """The model learns something beyond popularity (the synthetic data has communities), from
    shard examples and from user batches (every positive of a user at once)."""
    cli = main(["fit", *fit_args(tiny_data, tmp_path, "--trainer.max_epochs", "4", *extra)])
    assert cli.trainer.global_step == 4 * cli.datamodule.train_batches_per_rank(1)
    assert cli.model.last_metrics["recall@20"] > popularity_recall(cli.datamodule)


def popularity_recall(dm: TowerDataModule) -> float:
    """recall@20 of the popularity peer on the data module's split, the bar to clear."""
    from training.evaluate import evaluate
    from training.peers import fit_popularity, interaction_matrix

    x = interaction_matrix(dm.train, dm.num_creators)
    scorer = fit_popularity(x, torch.device("cpu"))
    return evaluate(scorer, dm.train, dm.test, dm.popularity)["recall@20"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "training", *args]


def test_resume_after_a_kill_continues_from_the_last_checkpoint(tiny_data, tmp_path):
    args = fit_args(tiny_data, tmp_path, "--trainer.max_epochs", "6",
                    "--checkpoint.every_n_train_steps", "5",
                    "--checkpoint.dirpath", str(tmp_path / "ckpt"))  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen(_cli("fit", *args), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    last = tmp_path / "ckpt" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert last.exists(), proc.stderr.read().decode()[-2000:]
    killed_at = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    result = subprocess.run(_cli("fit", *args, "--ckpt_path", "last"), cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    final = torch.load(last, map_location="cpu", weights_only=False)
    assert 0 < killed_at < final["global_step"]
    assert final["epoch"] == 5  # 0-based: all 6 epochs done after the resume


def _last_eval(folder: Path) -> dict:
    lines = (folder / "evaluation.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def test_two_processes_train_and_evaluate_exactly_like_one(tiny_data, tmp_path):
    """`--trainer.devices 2` (DDP, gloo on CPU) trains; evaluating its checkpoint on 2 ranks
    gives the same metrics as on 1, because ranks merge exact sums."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    ddp = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    fit = subprocess.run(
        _cli("fit", *fit_args(tiny_data, tmp_path / "fit", "--trainer.max_epochs", "1",
                              "--checkpoint.dirpath", str(tmp_path / "ckpt"), *ddp)),
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    expected = TowerDataModule(str(tiny_data), records_per_batch=2).train_batches_per_rank(2)
    assert state["global_step"] == expected  # each rank read half the shards

    results = {}
    for devices in ("1", "2"):
        folder = tmp_path / f"val{devices}"
        run = subprocess.run(
            _cli("validate", *fit_args(tiny_data, folder, "--ckpt_path", str(ckpt),
                                       "--trainer.accelerator", "cpu",
                                       "--trainer.devices", devices,
                                       "--trainer.logger", "false")),
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        results[devices] = _last_eval(folder)
    assert results["1"]["evaluated_users"] == results["2"]["evaluated_users"] > 0
    for key in ("recall@20", "ndcg@20", "coverage@20", "mrr@20"):
        assert results["2"][key] == pytest.approx(results["1"][key], abs=1e-9), key


def test_user_batches_deal_equal_disjoint_shares_to_the_ranks(tiny_data):
    """sampling=users: every rank gets the same number of batches of distinct users, reshuffled
    per epoch; together they cover all training users but the remainder of the division."""
    dm = TowerDataModule(str(tiny_data), sampling="users", users_per_batch=50)
    dm.setup()
    shares = {}
    for epoch in (0, 1):
        ranks = [
            torch.cat([b["user"] for b in dm._user_batches(r, 2, epoch)]).tolist() for r in (0, 1)
        ]
        assert len(ranks[0]) == len(ranks[1]) and not set(ranks[0]) & set(ranks[1])
        assert len(list(dm._user_batches(0, 2, epoch))) == dm.train_batches_per_rank(2)
        every = set(ranks[0]) | set(ranks[1])
        assert every <= set(dm.train_users.tolist())
        assert len(dm.train_users) - len(every) < 2 * 50
        shares[epoch] = ranks[0]
    assert shares[0] != shares[1]


def test_users_without_training_pairs_are_scored_as_the_unknown_user(tiny_data, tmp_path):
    """A test-period-only user's id row was never trained: evaluation (and serving) encodes it
    as UNK (the row cold_user_rate trains) plus its attributes."""
    from data.contract import UNK
    from training.module import TowerScorer, encode_all_creators

    cli = main(["fit", *fit_args(tiny_data, tmp_path, "--trainer.max_epochs", "2", *USER_SAMPLING,
                                 "--model.cold_user_rate", "0.2")])  # fmt: skip
    dm, model = cli.datamodule, cli.model.model.eval()
    cold = np.flatnonzero(~dm.users.trained)
    cold = cold[cold >= 2][:3]
    assert len(cold) >= 2, "the tiny time split should have test-only users"
    assert dm.users.inputs(cold, dm.num_creators)["user"].tolist() == [UNK] * len(cold)
    creators = encode_all_creators(model, dm.creators)
    scores = TowerScorer(model, dm.users.to("cpu"), creators)(cold)
    users = dm.users.to("cpu")
    with torch.no_grad():  # the UNK row plus what the user does carry: its attributes
        unk = torch.full((len(cold),), UNK)
        want = model.encode_users(unk, users.history[cold], users.attributes[cold])
    assert not dm.users.history[cold].any()
    torch.testing.assert_close(scores, want @ creators.T)
    from towers.model import TowerConfig
    from training.module import TwoTowerModule

    with pytest.raises(ValueError, match=r"cold_user_rate=1\.5"):
        TwoTowerModule(TowerConfig(num_users=10, num_creators=10), cold_user_rate=1.5)


def test_creator_text_reaches_the_creator_tower(tiny_text_data, tmp_path):
    """A dataset prepared with text vectors links text_dim into the model; a creator training
    never saw (id = UNK) is then placed by its text, so two such creators differ."""
    from data.contract import UNK

    cli = main(["fit", *fit_args(tiny_text_data, tmp_path, "--trainer.max_epochs", "1")])
    dm, model = cli.datamodule, cli.model.model.eval()
    assert cli.model.hparams.tower["text_dim"] == 384 == dm.creators.text.shape[1]
    assert model.creator_tower.text is not None
    rows = torch.arange(2, 6)
    inputs = dm.creators.to("cpu").select(rows)
    with torch.no_grad():
        unseen = model.encode_creators(**{**inputs, "creator": torch.full_like(rows, UNK)})
        no_text = model.encode_creators(
            **{
                **inputs,
                "creator": torch.full_like(rows, UNK),
                "text": torch.zeros_like(inputs["text"]),
            }
        )
    assert not torch.allclose(unseen, no_text, atol=1e-4)
    assert torch.cdist(unseen, unseen).triu(1).max() > 1e-3


def test_validation_chooses_the_checkpoint_and_test_is_read_once_after_the_fit(tmp_path):
    """Model selection never reads test: with split.validation_fraction, each epoch's figures
    are the validation split's and say so, the checkpoint kept is the epoch with the best
    val/recall@20, and test is evaluated once, on that checkpoint, with train and validation
    creators masked."""
    from data.prepare import prepare
    from index import checkpoint
    from tests.data.helpers import synthetic_config
    from training.evaluate import evaluate
    from training.module import TowerScorer, encode_all_creators

    carved = {"shards.record_size": 64, "source.num_events": 30_000,
              "split.validation_fraction": 0.2}  # fmt: skip
    data = prepare(synthetic_config(tmp_path / "data", **carved), progress=False)
    # a constant, high learning rate so that the epochs' figures differ
    extra = ("--trainer.max_epochs", "3", "--model.schedule", "constant", "--model.lr", "0.05")
    cli = main(["fit", *fit_args(data, tmp_path / "run", *extra)])
    dm, module = cli.datamodule, cli.model
    assert dm.eval_split == "validation" and dm.held_out is dm.validation
    assert set(dm.eval_users) == set(np.flatnonzero(dm.validation.lengths() > 0))
    lines = next(tmp_path.rglob("evaluation.jsonl")).read_text().splitlines()
    *epochs, test = [json.loads(x) for x in lines]
    assert [e["split"] for e in epochs] == ["validation"] * 3 and test["split"] == "test"
    best = max(epochs, key=lambda e: e["recall@20"])
    assert cli.trainer.checkpoint_callback.monitor == "val/recall@20"
    kept = Path(cli.trainer.checkpoint_callback.best_model_path)
    assert kept.name == f"epoch{best['epoch']:03d}-step{best['step']}.ckpt" == test["checkpoint"]
    assert (test["epoch"], test["step"]) == (best["epoch"], best["step"])
    assert sorted(p.name for p in kept.parent.glob("*.ckpt")) == sorted([kept.name, "last.ckpt"])
    # the index stage takes the kept checkpoint from the run folder, and says how it was chosen
    trained = checkpoint.load(tmp_path / "run")
    assert trained.path == kept and trained.evaluations[-1]["epoch"] == best["epoch"]
    assert trained.selected_by["monitor"] == "val/recall@20"
    assert trained.selected_by["score"] == pytest.approx(best["recall@20"], rel=1e-6)  # float32
    assert checkpoint.load(kept.parent / "last.ckpt").selected_by is None
    # the module holds the kept checkpoint's weights now; the figures again, the slow way
    with torch.no_grad():
        emb = encode_all_creators(module.model, module.creators)
        scorer = TowerScorer(module.model, module.users, emb)
        again = evaluate(scorer, dm.train, dm.validation, dm.popularity)["recall@20"]
        tested = evaluate(scorer, dm.known, dm.test, dm.popularity)["recall@20"]
    assert again == pytest.approx(best["recall@20"], abs=1e-6)
    assert tested == pytest.approx(test["recall@20"], abs=1e-6)
    # a sweep fits without the test and tests its choice alone: the same line again
    main(["test", *fit_args(data, tmp_path / "run"), "--ckpt_path", str(kept)])
    again = [
        json.loads(x) for x in next(tmp_path.rglob("evaluation.jsonl")).read_text().split("\n") if x
    ]
    assert {k: again[-1][k] for k in ("epoch", "checkpoint", "recall@20", "ndcg@20")} == {
        k: test[k] for k in ("epoch", "checkpoint", "recall@20", "ndcg@20")
    }
    # known = train ∪ validation: a validation creator is never counted as a test miss
    u = int(np.flatnonzero(dm.validation.lengths() > 0)[0])
    assert set(dm.known.row(u)) == set(dm.train.row(u)) | set(dm.validation.row(u))
