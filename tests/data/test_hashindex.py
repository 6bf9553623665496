"""The fingerprint hash index against a plain dict."""

import numpy as np
import pyarrow as pa
import pytest

from data.hashindex import HashIndex, fingerprint
from data.vocab import Vocab


def test_lookup_matches_a_dict_through_growth_and_probe_chains():
    rng = np.random.default_rng(0)
    index = HashIndex(capacity=16)
    truth = {}
    for _ in range(6):  # several inserts, each forcing growth
        h1 = rng.integers(0, 2**63, 3000, dtype=np.int64).astype(np.uint64)
        h1[:500] &= np.uint64(0xFF)  # many keys share low bits: long linear-probe chains
        h1 = np.unique(h1)
        h1 = h1[[int(k) not in truth for k in h1]]
        h2 = rng.integers(0, 2**63, len(h1), dtype=np.int64).astype(np.uint64)
        values = np.arange(len(truth), len(truth) + len(h1), dtype=np.int32)
        index.insert(h1, h2, values)
        truth.update({(int(a), int(b)): int(v) for a, b, v in zip(h1, h2, values, strict=True)})
        assert len(index) == len(truth)
    keys = np.array(list(truth), dtype=np.uint64)
    got = index.lookup(keys[:, 0].copy(), keys[:, 1].copy())
    assert got.tolist() == list(truth.values())
    # Same first hash, different second hash: absent, never a false match.
    assert (index.lookup(keys[:, 0].copy(), keys[:, 1] ^ np.uint64(1)) == -1).all()
    assert (index.lookup(np.array([12345], np.uint64), np.array([6789], np.uint64)) == -1).all()


def test_fingerprints_are_deterministic_and_distinguish_ids():
    ids = pa.array([f"fan_{i:08d}" for i in range(50_000)])
    a1, a2 = fingerprint(ids)
    b1, b2 = fingerprint(ids)
    assert np.array_equal(a1, b1) and np.array_equal(a2, b2)
    assert len(np.unique(a1)) == len(ids) and not np.array_equal(a1, a2)


@pytest.mark.parametrize("arrow_up_to", [100_000, 0], ids=["arrow-lookup", "fingerprint-index"])
def test_vocab_index_of_follows_appends(arrow_up_to, monkeypatch):
    monkeypatch.setattr("data.vocab._ARROW_LOOKUP_UP_TO", arrow_up_to)
    vocab = Vocab("users")
    assert vocab.index_of(pa.array(["a1", "<unk>"])).tolist() == [-1, 1]
    index = vocab.assign(pa.array(["a1", "b2", "a1"]), np.array([-1, -1, -1]))
    assert index.tolist() == [2, 3, 2]
    assert vocab.index_of(pa.array(["b2", "a1", "zz"])).tolist() == [3, 2, -1]
    vocab.extend(pa.array(["c3"]))
    assert vocab.index_of(pa.array(["c3"])).tolist() == [4]
