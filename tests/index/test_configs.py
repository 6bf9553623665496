"""Every shipped index config loads and plans a rebuild through the real entry point."""

import pytest

from index import config, errors
from index.__main__ import main
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs" / "index").glob("*.yaml"))


def test_configs_are_shipped():
    assert {p.stem for p in CONFIGS} >= {"synthetic_demo", "gowalla"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_loads_and_plans(path, tiny_checkpoint, tiny_data, tmp_path, capsys):
    cfg = config.load(path)
    assert cfg.name == path.stem and cfg.metric == "inner_product"
    assert cfg.recall_floor <= cfg.recall_target
    inputs = [f"checkpoint={tiny_checkpoint}", f"data={tiny_data}", f"store={tmp_path}"]
    argv = ["rebuild", "--config", str(path), "--dry-run"]
    assert main([*argv, *(a for i in inputs for a in ("--set", i))]) == errors.OK
    assert "would rebuild: no current version" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_bad_values_name_the_field(tmp_path):
    path = REPO / "configs" / "index" / "synthetic_demo.yaml"
    with pytest.raises(config.ConfigError, match=r"unknown config keys \['nprobes'\]"):
        config.load(path, ["nprobes=[1]"])
    with pytest.raises(config.ConfigError, match=r"k=0 must be >= 1"):
        config.load(path, ["k=0"])
    with pytest.raises(config.ConfigError, match=r"nprobe=\[\] must be a non-empty list"):
        config.load(path, ["nprobe=[]"])
    with pytest.raises(config.ConfigError, match=r"needs \['store'\]"):
        config.load(path, ["store="])
    with pytest.raises(config.ConfigError, match=r"config .*missing.yaml not found"):
        config.load(tmp_path / "missing.yaml")
