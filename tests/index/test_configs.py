"""Every shipped index config loads and plans a rebuild through the real entry point."""

import pytest

from common import config, errors
from index.__main__ import main
from index.config import IndexConfig
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs" / "index").glob("*.yaml"))


def test_configs_are_shipped():
    assert {p.stem for p in CONFIGS} >= {"synthetic_demo", "gowalla"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_loads_and_plans(path, tiny_checkpoint, tiny_data, tmp_path, capsys):
    cfg = config.load(IndexConfig, path)
    assert cfg.name == path.stem and cfg.metric == "inner_product"
    assert cfg.recall_floor <= cfg.recall_target
    inputs = ["--checkpoint", str(tiny_checkpoint), "--data", str(tiny_data)]
    argv = ["rebuild", "--config", str(path), "--dry-run", *inputs, "--store", str(tmp_path)]
    assert main(argv) == errors.OK
    assert "would rebuild: no current version" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_bad_values_name_the_field(tmp_path):
    path = REPO / "configs" / "index" / "synthetic_demo.yaml"
    with pytest.raises(errors.ConfigError, match=r"unrecognized arguments: --nprobes.*--nprobe"):
        config.load(IndexConfig, path, ["--nprobes", "[1]"])
    with pytest.raises(errors.ConfigError, match=r"--k=0 must be >= 1"):
        config.load(IndexConfig, path, ["--k", "0"])
    with pytest.raises(errors.ConfigError, match=r"--nprobe=\[\] must be a non-empty list"):
        config.load(IndexConfig, path, ["--nprobe", "[]"])
    with pytest.raises(errors.ConfigError, match=r"needs \['store'\]"):
        config.load(IndexConfig, path, ["--store", ""])
    with pytest.raises(errors.ConfigError, match=r"config .*missing.yaml not found"):
        config.load(IndexConfig, tmp_path / "missing.yaml")
