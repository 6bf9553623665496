"""The loss terms on small known cases, and 2 real processes against one."""

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO
from tests.training.ddp_loss_check import batch, users_batch, users_loss
from training.loss import (
    PositiveIndex,
    RetrievalLoss,
    StreamingFrequency,
    is_known_positive,
    multi_positive_softmax,
)


def _unit(x):
    return F.normalize(x, dim=-1)


def test_in_batch_softmax_equals_cross_entropy_on_the_diagonal():
    u, c, users, creators, _ = batch()
    creators = torch.arange(2, 10)  # distinct: no accidental hits
    got = RetrievalLoss()(_unit(u), _unit(c), torch.tensor(5.0), users=users, creators=creators)[
        "contrastive_loss"
    ]
    want = F.cross_entropy(5.0 * _unit(u) @ _unit(c).T, torch.arange(8))
    torch.testing.assert_close(got, want)


def test_logq_subtracts_log_probability_per_column():
    u, c, users, _, log_q = batch()
    creators = torch.arange(2, 10)
    got = RetrievalLoss()(
        _unit(u), _unit(c), torch.tensor(5.0), users=users, creators=creators, log_q=log_q
    )["contrastive_loss"]
    want = F.cross_entropy(5.0 * _unit(u) @ _unit(c).T - log_q[None, :], torch.arange(8))
    torch.testing.assert_close(got, want)
    off = RetrievalLoss(logq_correction=False)(
        _unit(u), _unit(c), torch.tensor(5.0), users=users, creators=creators, log_q=log_q
    )
    assert not torch.allclose(off["contrastive_loss"], got)


def test_accidental_hits_never_count_as_negatives():
    u, c, users, _, _ = batch()
    creators = torch.tensor([2, 3, 2, 4, 5, 6, 7, 8])  # rows 0 and 2 share a creator
    keys = torch.tensor([int(users[1]) * 20 + 5])  # user of row 1 also follows creator 5
    loss = RetrievalLoss()
    logits = 5.0 * _unit(u) @ _unit(c).T
    logits[0, 2] = logits[2, 0] = -1e9
    same_user = (users == users[1]).nonzero().flatten()
    logits[same_user[same_user != 4], 4] = -1e9  # every row of that user, never row 4's own
    want = F.cross_entropy(logits, torch.arange(8))
    got = loss(
        _unit(u),
        _unit(c),
        torch.tensor(5.0),
        users=users,
        creators=creators,
        positives=PositiveIndex.from_keys(keys, 10, 20),
    )["contrastive_loss"]
    torch.testing.assert_close(got, want)
    mask = is_known_positive(users, creators, keys, 20)
    assert mask[1, 4] and mask.sum() == (users == users[1]).sum()


def test_mixed_negatives_add_columns_with_their_own_log_q():
    u, c, users, _, log_q = batch()
    creators = torch.arange(2, 10)
    extra = _unit(torch.randn(3, 6))
    extra_lq = torch.full((3,), -4.0)
    got = RetrievalLoss()(
        _unit(u),
        _unit(c),
        torch.tensor(5.0),
        users=users,
        creators=creators,
        log_q=log_q,
        extra_emb=extra,
        extra_ids=torch.tensor([20, 21, 22]),
        extra_log_q=extra_lq,
    )["contrastive_loss"]
    cand = torch.cat([_unit(c), extra])
    want = F.cross_entropy(
        5.0 * _unit(u) @ cand.T - torch.cat([log_q, extra_lq])[None, :], torch.arange(8)
    )
    torch.testing.assert_close(got, want)


def test_streaming_frequency_ranks_frequent_creators_higher():
    freq = StreamingFrequency(buckets=1024, alpha=0.1)
    for step in range(400):
        ids = torch.tensor([7] + ([9] if step % 4 == 0 else []) + ([11] if step % 20 == 0 else []))
        freq.update(ids)
    lq = freq.log_q(torch.tensor([7, 9, 11]))
    assert lq[0] > lq[1] > lq[2]
    torch.testing.assert_close(lq.exp(), torch.tensor([1.0, 0.25, 0.05]), atol=0.03, rtol=0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(tmp_path, mode: str) -> dict:
    """ddp_loss_check.py on 2 real gloo processes: their losses and DDP-averaged gradients."""
    out = tmp_path / f"ddp-{mode}.pt"
    env = dict(os.environ, PYTHONPATH=str(REPO), PORT=str(_free_port()))
    script = str(REPO / "tests" / "training" / "ddp_loss_check.py")
    procs = [
        subprocess.Popen([sys.executable, script, str(r), "2", str(out), mode], env=env)
        for r in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    return torch.load(out, weights_only=True)


def test_two_processes_equal_one_over_the_global_batch(tmp_path):
    ddp = _two_processes(tmp_path, "examples")
    u, c, users, creators, log_q = batch()
    u, c = u.clone().requires_grad_(True), c.clone().requires_grad_(True)
    loss = RetrievalLoss()(
        _unit(u), _unit(c), torch.tensor(5.0), users=users, creators=creators, log_q=log_q
    )["contrastive_loss"]
    loss.backward()
    torch.testing.assert_close(ddp["losses"].mean(), loss.detach())
    g_u = torch.cat([part[:4] for part in ddp["grads"]])
    g_c = torch.cat([part[4:] for part in ddp["grads"]])
    torch.testing.assert_close(g_u, u.grad)
    torch.testing.assert_close(g_c, c.grad)


@pytest.mark.parametrize("mode", ["users", "corpus"])
def test_users_batches_on_two_processes_equal_one_over_the_global_batch(tmp_path, mode):
    """The users-batch objective: each rank's users against every rank's positives (gathered,
    different counts per rank) or the whole corpus; the mean loss and the gradients DDP ends up
    with equal one process over all 8 users, user vectors and creator table alike."""
    ddp = _two_processes(tmp_path, mode)
    data = users_batch()
    u = data["user_emb"].clone().requires_grad_(True)
    table = data["table"].clone().requires_grad_(True)
    loss = users_loss(data, torch.arange(8), u, table, mode)["contrastive_loss"]
    loss.backward()
    counts = data["positives"].indptr.diff()
    assert counts[:4].sum() != counts[4:].sum(), "the ranks should hold different counts"
    torch.testing.assert_close(ddp["losses"].mean(), loss.detach())
    g_u = torch.cat([part[:4] for part in ddp["grads"]])
    g_table = sum(part[4:] for part in ddp["grads"])  # DDP: the replicas' mean, /world already
    torch.testing.assert_close(g_u, u.grad)
    torch.testing.assert_close(g_table, table.grad)


def test_one_process_users_loss_is_the_mean_over_users_with_positives():
    """MultiPositiveLoss in one process is multi_positive_softmax over its candidate logits."""
    data = users_batch()
    users = torch.arange(8)
    got = users_loss(data, users, data["user_emb"], data["table"], "corpus")["contrastive_loss"]
    rows, targets = data["positives"].pairs(users)
    logits = 5.0 * _unit(data["user_emb"]) @ _unit(data["table"]).T
    negatives = ~data["positives"].mask(users, torch.arange(12))
    negatives[:, :2] = False  # the reserved slots
    torch.testing.assert_close(got, multi_positive_softmax(logits, rows, targets, negatives))


def test_positive_index_mask_equals_the_sorted_key_reference():
    g = torch.Generator().manual_seed(3)
    num_users, num_creators = 50, 40
    keys = torch.unique(
        torch.randint(0, num_users, (600,), generator=g) * num_creators
        + torch.randint(0, num_creators, (600,), generator=g)
    )
    index = PositiveIndex.from_keys(keys, num_users, num_creators)
    users = torch.randint(0, num_users, (64,), generator=g)
    cands = torch.randint(0, num_creators, (90,), generator=g)  # with repeats
    want = is_known_positive(users, cands, keys, num_creators)
    assert want.any() and torch.equal(index.mask(users, cands), want)


def test_positive_index_pairs_lists_every_training_creator_of_each_row():
    keys = torch.tensor([2 * 10 + 3, 2 * 10 + 7, 4 * 10 + 5])  # user 2: {3, 7}, user 4: {5}
    index = PositiveIndex.from_keys(keys, num_users=6, num_creators=10)
    rows, creators = index.pairs(torch.tensor([4, 3, 2, 99]))  # 3 has none, 99 is unknown
    assert sorted(zip(rows.tolist(), creators.tolist(), strict=True)) == [(0, 5), (2, 3), (2, 7)]


def _listwise_reference(logits, rows, cols, negatives):
    """One positive at a time, per-user mean, then mean over users with positives."""
    per_user: dict[int, list[torch.Tensor]] = {}
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        if negatives is None:
            nll = torch.logsumexp(logits[r], 0) - logits[r, c]
        else:
            row = torch.cat([logits[r, c : c + 1], logits[r][negatives[r]]])
            nll = torch.logsumexp(row, 0) - logits[r, c]
        per_user.setdefault(r, []).append(nll)
    return torch.stack([torch.stack(v).mean() for v in per_user.values()]).mean()


def test_multi_positive_softmax_against_one_positive_at_a_time():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 9, generator=g)
    rows = torch.tensor([0, 0, 0, 2, 3, 3])  # row 1 has no positive: it must not count
    cols = torch.tensor([1, 4, 5, 0, 8, 2])
    negatives = torch.ones(4, 9, dtype=torch.bool)
    negatives[rows, cols] = False  # a user's own positives are never its negatives
    negatives[:, 7] = False  # e.g. a reserved slot
    for mask in (None, negatives):
        got = multi_positive_softmax(logits, rows, cols, mask)
        torch.testing.assert_close(got, _listwise_reference(logits, rows, cols, mask))
    # masking the other positives lowers the loss: they no longer compete
    assert multi_positive_softmax(logits, rows, cols, negatives) < multi_positive_softmax(
        logits, rows, cols
    )
