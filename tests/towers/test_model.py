"""The towers: shapes, unit norms, masking, unknown users, cold creators, shared id space."""

import pytest
import torch

from towers.model import TowerConfig, TwoTower, masked_mean


def _model(**kw) -> TwoTower:
    torch.manual_seed(0)
    return TwoTower(
        TowerConfig(
            num_users=50,
            num_creators=40,
            num_categories=6,
            num_tags=12,
            dim=16,
            hidden=32,
            unknown_user_buckets=8,
            **kw,
        )
    )


def _creators(n=5, text_dim=0):
    g = torch.Generator().manual_seed(1)
    return dict(
        creator=torch.arange(2, 2 + n),
        category=torch.randint(2, 6, (n,), generator=g),
        tags=torch.tensor([[2, 3, 0], [4, 0, 0], [0, 0, 0], [5, 6, 7], [8, 2, 0]])[:n],
        popularity=torch.rand(n, generator=g),
        text=torch.randn(n, text_dim, generator=g) if text_dim else None,
    )


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_outputs_are_unit_vectors_of_the_configured_size(pooling):
    model = _model(pooling=pooling)
    users = model.encode_users(
        torch.tensor([2, 3, 4]), torch.tensor([[0, 2, 3], [0, 0, 0], [5, 6, 7]])
    )
    creators = model.encode_creators(**_creators())
    assert users.shape == (3, 16) and creators.shape == (5, 16)
    torch.testing.assert_close(users.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(creators.norm(dim=-1), torch.ones(5))
    assert torch.isfinite(users).all()  # an empty history (row 2) must not give NaN


def test_padding_in_a_history_changes_nothing():
    model = _model()
    a = model.encode_users(torch.tensor([2]), torch.tensor([[5, 6]]))
    b = model.encode_users(torch.tensor([2]), torch.tensor([[0, 0, 0, 5, 6]]))
    torch.testing.assert_close(a, b)


def test_masked_mean_against_a_loop():
    x = torch.randn(3, 4, 2)
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    got = masked_mean(x, mask)
    torch.testing.assert_close(got[0], (x[0, 0] + x[0, 2]) / 2)
    torch.testing.assert_close(got[1], torch.zeros(2))
    torch.testing.assert_close(got[2], x[2].mean(0))


def test_users_beyond_the_vocabulary_hash_into_shared_buckets_never_crash():
    model = _model()
    rows = model.user_tower.user_rows(torch.tensor([2, 49, 50, 10_000_000, 1]))
    assert rows[:2].tolist() == [2, 49]
    assert ((rows[2:] >= 50) & (rows[2:] < 58)).all()
    out = model.encode_users(torch.tensor([10_000_000, 1]), torch.tensor([[2, 3], [0, 0]]))
    assert torch.isfinite(out).all()


def _trained_content(model: TwoTower) -> TwoTower:
    """The content branch starts at zero (see CreatorTower); give it weights as training would."""
    torch.nn.init.normal_(model.creator_tower.content[-1].weight, std=0.5)
    return model


def test_a_fresh_creator_vector_is_its_id_embedding():
    """At initialisation the content branch is zero and the output map the identity, so both
    towers start in the id space (what made Gowalla train: see CreatorTower)."""
    model = TwoTower(
        TowerConfig(num_users=10, num_creators=30, num_categories=6, num_tags=12, dim=8, hidden=8)
    )
    feats = _creators()
    want = torch.nn.functional.normalize(model.creator_tower.id_embedding(feats["creator"]), dim=-1)
    torch.testing.assert_close(model.encode_creators(**feats), want)


def test_a_cold_creator_gets_a_content_embedding_close_to_its_twin():
    """Two creators with identical content, one with an untrained (unknown) id: their vectors
    come from the content path, so they are close; a creator with other content is farther."""
    model = _trained_content(_model())
    feats = dict(
        category=torch.tensor([3, 3, 5]),
        tags=torch.tensor([[4, 5], [4, 5], [9, 10]]),
        popularity=torch.tensor([1.0, 1.0, 1.0]),
    )
    out = model.encode_creators(creator=torch.tensor([7, 1, 8]), **feats)
    assert out[0] @ out[1] > out[0] @ out[2]


def test_text_path_is_used_when_configured():
    model = _trained_content(_model(text_dim=8))
    feats = _creators(text_dim=8)
    a = model.encode_creators(**feats)
    feats["text"] = feats["text"] + 1.0
    assert not torch.allclose(a, model.encode_creators(**feats))
    feats["text"] = None  # a caller that forgot the text input is told, not given zeros
    with pytest.raises(ValueError, match=r"text_dim=8.*pass text="):
        model.encode_creators(**feats)


def test_history_shares_the_creator_id_space_and_gradients_reach_everything():
    model = _model(pooling="attention", init_temperature=0.07, learn_temperature=True)
    assert model.user_tower.creator_ids is model.creator_tower.id_embedding
    users = model.encode_users(torch.tensor([2, 3]), torch.tensor([[2, 3], [4, 0]]))
    creators = model.encode_creators(**_creators())
    loss = -(model.scale() * users @ creators.T).log_softmax(-1)[:, 0].mean()
    loss.backward()
    assert model.logit_scale.grad is not None
    assert model.creator_tower.id_embedding.weight.grad[2].abs().sum() > 0
    assert model.user_tower.query.weight.grad.abs().sum() > 0
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-4)


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="pooling='max'"):
        TowerConfig(num_users=10, num_creators=10, pooling="max")


def test_linear_combiner_starts_as_half_id_plus_half_history():
    """combiner=linear (SimpleX-style): with hidden == dim the user vector starts as
    normalize(½·id + ½·mean(history)), and attributes start near zero."""
    model = TwoTower(TowerConfig(num_users=20, num_creators=30, dim=8, hidden=8, combiner="linear"))
    tower = model.user_tower
    user, history = torch.tensor([3, 4]), torch.tensor([[0, 5, 6], [7, 0, 0]])
    own = tower.id_embedding(user)
    pooled = masked_mean(tower.creator_ids(history), history != 0)
    want = torch.nn.functional.normalize(0.5 * own + 0.5 * pooled, dim=-1)
    torch.testing.assert_close(model.encode_users(user, history), want)
    with_attrs = TwoTower(
        TowerConfig(20, 30, dim=8, hidden=8, combiner="linear", attribute_buckets=16)
    )
    out = with_attrs.encode_users(user, history, torch.tensor([[2, 3], [0, 0]]))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    with pytest.raises(ValueError, match="combiner='deep'"):
        TowerConfig(num_users=10, num_creators=10, combiner="deep")
