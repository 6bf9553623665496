import pytest

from data.prepare import prepare
from tests.data.helpers import synthetic_config


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A prepared synthetic dataset small enough to train on in seconds (8 shards)."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    cfg = synthetic_config(out, **{"shards.record_size": 64, "source.num_events": 30_000})
    return prepare(cfg, progress=False)
