"""Every shipped data config loads through the real entry point; the real-data ones prepare."""

from pathlib import Path

import pytest

from common import config
from common.errors import ConfigError
from data import manifest
from data.__main__ import main
from data.config import PrepareConfig
from tests.conftest import REPO, datasets_root

CONFIGS = sorted((REPO / "configs" / "data").glob("*.yaml"))
REAL = {"gowalla": "gowalla", "lastfm": "lastfm-hetrec2011-2k", "movielens": "movielens-100k"}


def test_configs_are_shipped():
    assert {p.stem for p in CONFIGS} >= {"synthetic_demo", "gowalla", "lastfm", "movielens"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_loads_and_builds_its_source(path):
    cfg = config.load(PrepareConfig, path)
    assert cfg.name == path.stem
    assert cfg.split.validation_fraction > 0  # model selection reads validation, never test
    if cfg.source["kind"] in REAL:
        folder = datasets_root() / REAL[cfg.source["kind"]]  # lastfm_search reads lastfm's
        if not folder.exists():
            pytest.skip(f"dataset {cfg.name} not found at {folder}")
        cfg.source["path"] = str(folder)
    from data.sources import build

    assert build(cfg.source).estimated_rows


def prepare_real(name: str, out, *extra: str) -> dict:
    """`python -m data prepare` of a shipped real-data config on the shared dataset."""
    folder = datasets_root() / REAL[name]
    if not folder.exists():
        pytest.skip(f"dataset {name} not found at {folder}")
    config = str(REPO / "configs" / "data" / f"{name}.yaml")
    argv = ["prepare", "--config", config, "--output", str(out), "--source.path", str(folder)]
    assert main([*argv, "--no-progress", *extra]) == 0
    m = manifest.load(out, verify=True)
    i = m["counts"]["interactions"]
    assert i["in"] == i["accepted"] + i["quarantined"]
    assert m["counts"]["test_pairs"] > 0
    return m


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_dataset_prepares_end_to_end(name, tmp_path, capsys):
    """Without creator text: embedding Last.fm's 17,632 artists is the slow test below."""
    out = tmp_path / name
    m = prepare_real(name, out, "--features.text_encoder", "null")
    assert f"wrote {out}" in capsys.readouterr().out
    assert m["text_features"] is None
    if name == "gowalla":  # the published LightGCN split, exactly; validation from its train
        c = m["counts"]
        assert (c["train_pairs"] + c["validation_pairs"], c["test_pairs"]) == (810_128, 217_242)
        assert abs(c["validation_pairs"] / c["test_pairs"] - 1) < 0.02  # as many as test
        assert m["counts"]["test_users"] == 29_858


@pytest.mark.slow
def test_lastfm_prepares_with_creator_text(tmp_path):
    """The shipped Last.fm config as it is: every artist's name and tags through the bundled
    MiniLM (about 80 s on 2 cores)."""
    m = prepare_real("lastfm", tmp_path / "lastfm")
    assert m["text_features"]["encoded"] > 17_000 and m["text_features"]["dim"] == 384


def test_unknown_keys_and_bad_values_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsource: {kind: synthetic}\nshards: {num_shards: 12}\n")
    with pytest.raises(
        ConfigError, match=r"--shards.num_shards=12 must be a positive multiple of 8"
    ):
        config.load(PrepareConfig, bad)
    with pytest.raises(ConfigError, match=r"unrecognized arguments: --shards.recordsize"):
        config.load(PrepareConfig, bad, ["--shards.recordsize", "3"])
    ok = ["--shards.num_shards", "8"]
    with pytest.raises(ConfigError, match=r"--events\.positive names unknown event types"):
        config.load(PrepareConfig, bad, [*ok, "--events.positive", "{subscribe: 1}"])
    with pytest.raises(ConfigError, match=r"--features.user_history_length=0 must be >= 1"):
        config.load(PrepareConfig, bad, [*ok, "--features.user_history_length", "0"])
    with pytest.raises(ConfigError, match=r'key "buckets".*Expected a <class .int.>'):
        config.load(PrepareConfig, bad, [*ok, "--buckets", "many"])
    in_file = tmp_path / "in_file.yaml"
    in_file.write_text("name: x\nsource: {kind: synthetic}\nshards: {num_shardz: 8}\n")
    with pytest.raises(ConfigError, match=r"num_shardz"):
        config.load(PrepareConfig, in_file)
    assert Path(bad).exists()


def test_the_command_line_takes_every_field_as_a_flag(tmp_path, capsys):
    """`--section.field VALUE` on the real entry point, as training's flags; a bad value is
    exit 2 with the flag named."""
    cfg = REPO / "configs" / "data" / "synthetic_demo.yaml"
    assert main(["prepare", "--config", str(cfg), "--shards.num_shards", "12"]) == 2
    assert "--shards.num_shards=12" in capsys.readouterr().out
