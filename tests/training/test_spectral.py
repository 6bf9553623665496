"""The spectral initialisation: the towers score exactly as the low-pass filter they start
from, refuse settings that cannot hold it, and train on from it through `training fit`."""

import json

import numpy as np
import pytest
import torch

from tests.training.test_cli import USER_SAMPLING, fit_args, popularity_recall
from towers.model import TowerConfig, TwoTower
from training.cli import main
from training.evaluate import Interactions
from training.spectral import spectral_init


def random_pairs(num_users: int, num_creators: int, seed: int = 0) -> Interactions:
    """Users in 4 communities that each prefer a quarter of the creators, plus noise; every
    user has at least one pair and the reserved rows/columns (0, 1) none."""
    g = np.random.default_rng(seed)
    users, creators = [], []
    for u in range(2, num_users):
        community = u % 4
        liked = 2 + community * (num_creators - 2) // 4 + g.integers(0, (num_creators - 2) // 4, 6)
        noise = g.integers(2, num_creators, 2)
        row = np.unique(np.concatenate([liked, noise]))
        users.append(np.full(len(row), u))
        creators.append(row)
    return Interactions.from_pairs(np.concatenate(users), np.concatenate(creators), num_users)


def filter_scores(
    train: Interactions, num_creators: int, rank: int, a: float, p: float, smoothing: float
):
    """The filter computed directly from a dense SVD: r_u D^-a V diag(s^p) V^T D^1/2, every
    degree plus `smoothing`."""
    num_users = len(train.lengths())
    r = np.zeros((num_users, num_creators))
    for u in range(num_users):
        r[u, train.row(u)] = 1.0
    du, dc = np.maximum(r.sum(1) + smoothing, 1), np.maximum(r.sum(0) + smoothing, 1)
    _, s, vt = np.linalg.svd(r / np.sqrt(du[:, None] * dc[None, :]), full_matrices=False)
    v, s = vt[:rank].T, s[:rank]
    return (r * dc**-a) @ v @ np.diag(s**p) @ v.T * np.sqrt(dc)


def tower_scores(model: TwoTower, train: Interactions, num_creators: int) -> np.ndarray:
    num_users = len(train.lengths())
    width = int(train.lengths().max())
    history = np.zeros((num_users, width), dtype=np.int64)
    for u in range(num_users):
        row = train.row(u)
        history[u, : len(row)] = row
    with torch.no_grad():
        users = model.encode_users(torch.arange(num_users), torch.as_tensor(history))
        ids = torch.arange(num_creators)
        zeros = torch.zeros(num_creators, dtype=torch.long)
        creators = model.encode_creators(ids, zeros, zeros[:, None], torch.zeros(num_creators))
    return (users @ creators.T).numpy()


@pytest.mark.parametrize("a, p, smoothing", [(0.5, 1.0, 0.0), (0.3, 0.5, 0.0), (0.5, 1.0, 3.0)])
def test_the_towers_start_as_the_filter(a, p, smoothing):
    num_users, num_creators, dim = 90, 50, 13
    train = random_pairs(num_users, num_creators)
    cfg = TowerConfig(num_users=num_users, num_creators=num_creators, dim=dim, hidden=dim,
                      combiner="linear", history_weights=True)  # fmt: skip
    model = TwoTower(cfg).eval()
    info = spectral_init(model, train, exponent=a, power=p, smoothing=smoothing)
    assert info["rank"] == dim - 1
    got = tower_scores(model, train, num_creators)[2:, 2:]
    want = filter_scores(train, num_creators, dim - 1, a, p, smoothing)[2:, 2:]
    # the towers' scores are the filter's times a positive constant per user (unit vectors)
    ratio = got / np.where(np.abs(want) > 1e-9, want, np.nan)
    per_user = np.nanmedian(ratio, axis=1, keepdims=True)
    assert (per_user > 0).all()
    np.testing.assert_allclose(got, want * per_user, atol=1e-5)
    # so the rankings agree: each user's top 5
    np.testing.assert_array_equal(np.argsort(-got, axis=1)[:, :5], np.argsort(-want, axis=1)[:, :5])
    # vectors stay unit vectors, and a creator nobody trained on scores 0 for everyone
    norms = torch.linalg.vector_norm(model.creator_tower.id_embedding.weight[1:], dim=1)
    np.testing.assert_allclose(norms.detach().numpy(), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"combiner": "mlp"}, "combiner='mlp'"),
        ({"history_weights": False}, "history_weights"),
        ({"hidden": 32}, "hidden=32 != dim=13"),
    ],
)
def test_settings_that_cannot_hold_the_filter_are_refused(change, message):
    base = dict(num_users=10, num_creators=10, dim=13, hidden=13, combiner="linear",
                history_weights=True)  # fmt: skip
    model = TwoTower(TowerConfig(**{**base, **change}))
    with pytest.raises(ValueError, match=message):
        spectral_init(model, random_pairs(10, 10))


SPECTRAL = [*USER_SAMPLING, "--model.full_corpus_softmax", "true",
            "--model.tower.combiner", "linear", "--model.tower.history_weights", "true",
            "--model.tower.hidden", "16", "--model.init", "spectral",
            "--model.lr", "1e-3"]  # fmt: skip


def test_fit_from_the_filter_beats_popularity(tiny_data, tmp_path):
    cli = main(["fit", *fit_args(tiny_data, tmp_path, "--trainer.max_epochs", "2", *SPECTRAL,
                                 "--trainer.num_sanity_val_steps", "-1")])  # fmt: skip
    bar = popularity_recall(cli.datamodule)
    assert cli.model.last_metrics["recall@20"] > bar
    # the whole evaluation ran before the first step too: the filter alone, as epoch -1
    assert cli.model.start_metrics["recall@20"] > bar
    lines = next(tmp_path.rglob("evaluation.jsonl")).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [-1, 0, 1]
    weights = cli.model.model.user_tower.history_log_weight.weight[2:]
    assert weights.std() > 0  # popularity-dependent, from the filter


def test_bad_init_is_refused():
    from training.module import TwoTowerModule

    tower = TowerConfig(num_users=10, num_creators=10)
    with pytest.raises(ValueError, match=r"--model\.init='svd'"):
        TwoTowerModule(tower, init="svd")
    with pytest.raises(ValueError, match="init=spectral needs"):
        TwoTowerModule(tower, init="spectral")


def test_a_fit_of_no_epochs_keeps_the_filter_as_a_checkpoint(tiny_data, tmp_path):
    """--trainer.max_epochs 0: the starting point is evaluated and saved, ready to export."""
    from index.checkpoint import load

    cli = main(["fit", *fit_args(tiny_data, tmp_path, "--trainer.max_epochs", "0", *SPECTRAL,
                                 "--trainer.num_sanity_val_steps", "-1")])  # fmt: skip
    assert cli.trainer.global_step == 0 and cli.model.start_metrics["recall@20"] > 0
    trained = load(tmp_path)  # the newest last.ckpt under the run folder
    assert trained.config.history_weights and trained.config.dim == 16
    before = cli.model.model.creator_tower.id_embedding.weight.detach()
    torch.testing.assert_close(trained.model.creator_tower.id_embedding.weight, before)
