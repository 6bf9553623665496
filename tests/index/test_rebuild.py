"""The rebuild job end to end on the tiny model: publish, idempotence, fail-safe on a crash,
exit codes, incremental add of new creators through the content path, retention."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from common import errors
from data.contract import UNK
from data.tables import CREATOR_TEXT as TEXT_FILE
from data.text import write_text_features
from index import build, checkpoint, rebuild, store
from index.__main__ import main
from tests.conftest import REPO
from tests.index.conftest import index_config


def write_yaml(path: Path, cfg) -> Path:
    from common.config import to_dict

    path.write_text(yaml.safe_dump(to_dict(cfg)))
    return path


@pytest.fixture
def fresh(published, tmp_path):
    """A private copy of the published store and a config pointing at it."""
    shutil.copytree(published.store, tmp_path / "store")
    cfg = index_config(tmp_path / "store", published.checkpoint, published.data)
    return cfg, tmp_path / "store"


def test_published_manifest_records_inputs_curve_and_choice(published):
    m = store.read_manifest(Path(published.store))
    trained = checkpoint.load(published.checkpoint)
    assert m["model"]["version"] == m["inputs"]["model_version"] == trained.version
    # when the model was trained travels with it, and came before this build
    assert trained.trained_at is not None and m["model"]["trained_at"] == trained.trained_at
    when = datetime.fromisoformat
    assert when(trained.trained_at) <= when(m["created_at"])
    assert m["index"]["mode"] == "full" and m["index"]["factory"] == "IVF4,PQ8x4fsr,RFlat"
    t = m["tuning"]
    assert t["chosen"] in t["curve"] and t["chosen"]["recall"] >= published.recall_target
    assert all({"params", "recall", "qps"} <= set(p) for p in t["curve"])
    assert m["config"]["recall_target"] == published.recall_target
    assert m["fingerprint"]["probe_creators"] == list(range(2, 10))


def test_rebuild_is_idempotent(fresh, capsys):
    cfg, root = fresh
    before = (store.current_version(root), store.list_versions(root))
    path = write_yaml(root.parent / "tiny.yaml", cfg)
    assert main(["rebuild", "--config", str(path)]) == errors.OK
    assert "up to date" in capsys.readouterr().out.splitlines()[-1]
    assert (store.current_version(root), store.list_versions(root)) == before


def test_a_crash_mid_build_leaves_current_untouched(fresh, monkeypatch):
    cfg, root = fresh
    before = (store.current_version(root), store.list_versions(root))

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while training the index")

    monkeypatch.setattr(build, "build", crash)
    cfg.k = 5  # new build settings: a rebuild is due
    result = rebuild.run(cfg)
    assert result.code == errors.FAILED, result.summary
    assert "simulated crash" in result.summary and f"current stays {before[0]}" in result.summary
    assert (store.current_version(root), store.list_versions(root)) == before
    assert not list(store.versions_dir(root).glob(".staging-*"))
    assert store.load(root, use_gpu=False).version == before[0]


def test_a_killed_rebuild_leaves_current_untouched(fresh):
    """SIGKILL while the new version is being built: the old one stays current and loads, the
    staging folder is ignored by readers and removed by the next run."""
    cfg, root = fresh
    before = store.current_version(root)
    cfg.k, cfg.repeats = 5, 400  # a different version, slow to tune: time to catch it
    path = write_yaml(root.parent / "slow.yaml", cfg)
    proc = subprocess.Popen(
        [sys.executable, "-m", "index", "rebuild", "--config", str(path)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    deadline = time.time() + 60
    while not list(store.versions_dir(root).glob(".staging-*/embeddings.npy")):
        assert proc.poll() is None and time.time() < deadline, "rebuild ended before the kill"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert store.current_version(root) == before
    assert store.load(root, use_gpu=False).version == before
    assert store.list_versions(root) == [before]
    assert store.clean_staging(root) and not list(store.versions_dir(root).glob(".staging-*"))


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"metric": "l2"}, errors.BAD_INPUT, r"metric='l2' does not match"),
        ({"bogus": 1}, errors.BAD_INPUT, r"does not accept option 'bogus'"),
        ({"factory": "IVF{cells},Flat"}, errors.BAD_INPUT, r"only \{nlist\} and \{m\}"),
        ({"recall_floor": 0.99}, errors.BAD_INPUT, r"--recall_floor=0\.99, --recall_target=0\.95"),
        ({"checkpoint": "/nonexistent/run"}, errors.MISSING_INPUT, r"checkpoint .* not found"),
        ({"data": "/nonexistent/data"}, errors.MISSING_INPUT, r"no creator catalog"),
        (
            {"factory": "IVF{nlist},PQ2x4fs", "recall_target": 0.99, "recall_floor": 0.99},
            errors.VALIDATION_FAILED,
            r"recall@10 0\.\d+ at the best setting .* below recall_floor=0\.99; not published",
        ),
    ],
    ids=[
        "metric",
        "unknown-key",
        "factory",
        "floor-above-target",
        "checkpoint",
        "catalog",
        "recall-floor",
    ],
)
def test_exit_codes_and_current_kept(fresh, capsys, change, code, message):
    cfg, root = fresh
    before = (store.current_version(root), store.list_versions(root))
    path = root.parent / "bad.yaml"
    raw = {**yaml.safe_load(write_yaml(path, cfg).read_text()), **change}
    path.write_text(yaml.safe_dump(raw))
    assert main(["rebuild", "--config", str(path)]) == code
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"FAILED (exit {code})" in line
    assert re.search(message, line), line
    assert (store.current_version(root), store.list_versions(root)) == before


def test_a_busy_store_exits_6(fresh):
    cfg, root = fresh
    cfg.k = 5
    with store.lock(root):
        result = rebuild.run(cfg)
    assert result.code == errors.BUSY and "another rebuild" in result.summary


def append_creators(data: Path, out: Path, num_categories: int, num_tags: int) -> Path:
    """A copy of a prepared dataset whose catalog gains 3 creators, as a later prepare with
    vocab_from would add them: new indices at the end, one in a new category, one with a new
    tag; every existing row unchanged; text vectors for the new three (the rest reused)."""
    shutil.copytree(data, out)
    path = out / "tables" / "creators.parquet"
    table = pq.read_table(path)
    start = max(table["creator_idx"].to_pylist()) + 1
    rows = [
        {"creator_idx": start, "creator_id": "new-a", "category_idx": 2, "tag_idx": [2, 3],
         "train_count": 0, "description": "Sourdough and pastry classes."},
        {"creator_idx": start + 1, "creator_id": "new-b", "category_idx": num_categories,
         "tag_idx": [4], "train_count": 3, "description": "Bouldering tips for beginners."},
        {"creator_idx": start + 2, "creator_id": "new-c", "category_idx": 3,
         "tag_idx": [5, num_tags], "train_count": 1, "name": "Nova Synth"},
    ]  # fmt: skip
    new = pa.Table.from_pylist(rows, schema=table.schema)
    pq.write_table(pa.concat_tables([table, new]), path)
    info = write_text_features(out, "all-MiniLM-L6-v2", previous=data)
    assert info["encoded"] == 3
    return out


def test_new_creators_are_added_through_the_content_path(fresh, tmp_path):
    cfg, root = fresh
    base = store.load(root, use_gpu=False)
    trained = checkpoint.load(cfg.checkpoint)
    tc = trained.config
    cfg.data = str(append_creators(Path(cfg.data), tmp_path / "catalog2", tc.num_categories,
                                   tc.num_tags))  # fmt: skip
    result = rebuild.run(cfg)
    assert result.code == errors.OK and "incremental +3" in result.summary, result.summary
    loaded = store.load(root, expected_model_version=trained.version, use_gpu=False)
    m = loaded.manifest
    assert m["index"]["mode"] == "incremental" and m["index"]["base_version"] == base.version
    assert m["count"] == loaded.index.ntotal == 303 and m["catalog"]["content_path_only"] == 3
    # no retraining: the IVF cells are the base version's
    ivf, ivf0 = build.ivf_of(loaded.index), build.ivf_of(base.index)
    np.testing.assert_array_equal(
        ivf.quantizer.reconstruct_n(0, ivf.nlist), ivf0.quantizer.reconstruct_n(0, ivf0.nlist)
    )
    # the new vectors are the creator tower's content path: id, new category and new tag → UNK
    xb = np.load(loaded.folder / "embeddings.npy", allow_pickle=False)
    text = np.load(Path(cfg.data) / TEXT_FILE, allow_pickle=False)[-3:].astype(np.float32)
    assert np.abs(text).sum(1).min() > 0  # each new creator has text (a description or name)
    with torch.no_grad():
        want = trained.model.encode_creators(
            creator=torch.tensor([UNK, UNK, UNK]),
            category=torch.tensor([2, UNK, 3]),
            tags=torch.tensor([[2, 3], [4, 0], [5, UNK]]),
            popularity=torch.log1p(torch.tensor([0.0, 3.0, 1.0])),
            text=torch.as_tensor(text),
        ).numpy()
    np.testing.assert_allclose(xb[300:], want, atol=1e-6)
    np.testing.assert_array_equal(xb[:300], np.load(base.folder / "embeddings.npy"))
    assert loaded.creator_id[300:].tolist() == ["new-a", "new-b", "new-c"]
    # and they are searchable: each new creator is in the approximate top 5 of its own vector
    # (top 1 for exact search; the tuned index reaches recall@10 >= 0.95, not 1)
    _, found = loaded.search(want, 5)
    for row, creator in zip(found, loaded.creator_idx[300:], strict=True):
        assert creator in row
    # once more is a no-op
    assert rebuild.run(cfg).status == "up to date"


def test_a_new_model_rebuilds_in_full_and_old_versions_are_pruned(fresh, tmp_path):
    cfg, root = fresh
    first = store.current_version(root)
    ckpt = torch.load(cfg.checkpoint, map_location="cpu", weights_only=True)
    for step in range(2):  # two "retrained" models: perturbed weights, new model versions
        ckpt["state_dict"]["model.creator_tower.out.bias"] += 0.01
        path = tmp_path / f"retrained{step}.ckpt"
        torch.save(ckpt, path)
        cfg.checkpoint, cfg.keep = str(path), 2
        result = rebuild.run(cfg)
        assert result.code == errors.OK and "(full," in result.summary, result.summary
        assert (
            json.loads((store.versions_dir(root) / result.version / "manifest.json").read_text())[
                "model"
            ]["version"]
            == checkpoint.load(path).version
        )
    versions = store.list_versions(root)
    assert len(versions) == 2 and first not in versions
    assert store.current_version(root) == versions[-1] == result.version


def test_growth_beyond_the_limit_rebuilds_in_full(fresh, tmp_path):
    """3 new creators on an IVF trained on 300 is 1 %: over a 0.5 % limit the cells are
    retrained with them (a full build) instead of extended."""
    cfg, root = fresh
    tc = checkpoint.load(cfg.checkpoint).config
    cfg.data = str(append_creators(Path(cfg.data), tmp_path / "catalog2", tc.num_categories,
                                   tc.num_tags))  # fmt: skip
    cfg.incremental_max_fraction = 0.005
    result = rebuild.run(cfg)
    assert result.code == errors.OK and "(full," in result.summary, result.summary
    assert store.read_manifest(root)["index"]["trained_on"] == 303
