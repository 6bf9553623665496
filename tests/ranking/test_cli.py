"""`python -m ranking`: every shipped config loads, and bad input exits with the code and a
message naming the value (the ranker itself is trained in tests/serving/conftest.py)."""

import pytest
import yaml

from common import config, errors
from ranking.__main__ import main
from ranking.config import RankingConfig
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs" / "ranking").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_loads(path):
    cfg = config.load(RankingConfig, path)
    assert cfg.name == path.stem and cfg.candidates >= 20
    serving = yaml.safe_load((REPO / "configs" / "serving" / path.name).read_text())
    assert serving["rank"]["store"] == cfg.store  # the service looks where training saves
    assert serving["rank"]["candidates"] == cfg.candidates


def test_bad_input_exits_with_a_clear_code(tmp_path, capsys):
    path = str(REPO / "configs" / "ranking" / "synthetic_demo.yaml")
    assert main(["train", "--config", path, "--candidates", "5"]) == errors.BAD_INPUT
    assert "--candidates=5" in capsys.readouterr().out
    index = tmp_path / "no-index"
    assert main(["train", "--config", path, "--index", str(index)]) == errors.MISSING_INPUT
    assert str(index) in capsys.readouterr().out
    assert main(["show", str(tmp_path), "--version", "v00001-x"]) == errors.MISSING_INPUT
