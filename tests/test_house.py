"""The online path loads no Lightning (nor torch). The rest of the house rules are import-linter
contracts in pyproject.toml, which `make test` checks before the tests run."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

ONLINE_PATH = """
import importlib, json, pkgutil, sys, time
started = time.perf_counter()
import serving
for m in pkgutil.walk_packages(serving.__path__, "serving."):
    importlib.import_module(m.name)
print(json.dumps({"seconds": time.perf_counter() - started, "modules": sorted(sys.modules)}))
"""


def test_importing_the_online_path_loads_no_lightning_and_no_torch():
    """Every module of serving/ (the service, its pipeline, the feature store, Triton's client)
    imported in a fresh interpreter: none of them pulls in Lightning, and none pulls in torch,
    which serving never needs (the user tower runs as ONNX)."""
    out = subprocess.run(
        [sys.executable, "-c", ONLINE_PATH], cwd=REPO, capture_output=True, text=True, check=True
    )
    loaded = json.loads(out.stdout.splitlines()[-1])["modules"]
    assert "serving.pipeline.stages" in loaded and "index.store" in loaded
    lightning = [m for m in loaded if m.split(".")[0] in ("pytorch_lightning", "lightning")]
    assert lightning == [], lightning[:5]
    assert "torch" not in loaded and "training" not in {m.split(".")[0] for m in loaded}
