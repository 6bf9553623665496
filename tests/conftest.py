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
