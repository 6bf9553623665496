"""The 1 M-creator serving set of benchmarks/serving_load.py: built when missing or stale, and
what its answers look like (how much fans' lists differ, what the index search was tuned to).

    python benchmarks/serving_set.py          # build what is missing or stale, print its figures

Each step (`python -m data prepare`, `training fit`, `index rebuild` with
`configs/{data,train,index}/synthetic_1m_creators.yaml`) leaves a stamp in its output folder:
the sha256 of the config it ran with. A folder without a stamp, or with one of another config,
is stale: it is removed and made again, and so is everything after it. (The one-epoch model of
issue 5 stayed in place after its config asked for four epochs.)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
NAME = "synthetic_1m_creators"
STAMP = ".made-from.json"
STEPS = (  # (module, subcommand, config folder, output folder)
    ("data", "prepare", "data", "artifacts/data"),
    ("training", "fit", "train", "artifacts/runs"),
    ("index", "rebuild", "index", "artifacts/index"),
)


NO_TEXT = {"data": ["--features.text_encoder", "null"]}
"""Overrides of a set without creator text vectors (MiniLM over a million descriptions is an
hour on 2 cores): what benchmarks/rank_latency.py builds when told `--no-text`."""


def stamp_of(config: Path, overrides: list[str] = ()) -> dict:
    stamp = {"config": str(config.relative_to(REPO)),
             "sha256": hashlib.sha256(config.read_bytes()).hexdigest()}  # fmt: skip
    return {**stamp, "overrides": list(overrides)} if overrides else stamp


def is_current(folder: Path, config: Path, overrides: list[str] = ()) -> bool:
    try:
        return json.loads((folder / STAMP).read_text()) == stamp_of(config, overrides)
    except (OSError, ValueError):
        return False


def ensure_built(run=subprocess.run, overrides: dict | None = None) -> None:
    """Prepare, train and index the set: each step whose output is missing or stale, and every
    step after one that ran (a new model needs a new index). `overrides`: flags per config
    folder (NO_TEXT), part of the stamp."""
    rebuilt = False
    for module, command, configs, outputs in STEPS:
        config = REPO / "configs" / configs / f"{NAME}.yaml"
        folder = REPO / outputs / NAME
        extra = (overrides or {}).get(configs, [])
        if not rebuilt and is_current(folder, config, extra):
            continue
        if folder.exists():
            print(f"{folder.relative_to(REPO)} is stale (not made from {config.name} as it reads "
                  f"now): rebuilding it", flush=True)  # fmt: skip
            shutil.rmtree(folder)
        cmd = [sys.executable, "-m", module, command, "--config", str(config.relative_to(REPO))]
        cmd += extra
        print("$", " ".join(cmd), flush=True)
        run(cmd, check=True, cwd=REPO)
        (folder / STAMP).write_text(json.dumps(stamp_of(config, extra)))
        rebuilt = True


def index_figures() -> dict:
    """What the published index was tuned to, from its manifest."""
    from index import store

    manifest = store.read_manifest(REPO / "artifacts" / "index" / NAME)
    tuning = manifest["tuning"]
    return {
        "creators": manifest["count"],
        "index_version": manifest["version"],
        "factory": manifest["index"]["factory"],
        "tuned": tuning["chosen"]["params"],
        "recall": tuning["chosen"]["recall"],
        "index_qps": tuning["chosen"]["qps"],
        "exact_qps": tuning["exact_qps"],
        "distinct_exact": tuning.get("distinct_exact"),
        "tuning_queries": tuning["queries"],
        "k": tuning["k"],
    }


def distinct_served(url: str, fans: list[str], k: int = 10) -> dict:
    """How much the served lists differ: distinct creators in `fans`' top-k from the running
    service, and the share of answers that came from the model (not a fallback)."""
    seen, personal = set(), 0
    for fan in fans:
        body = json.dumps({"user_id": fan, "k": k}).encode()
        req = urllib.request.Request(f"{url}/recommend", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            answer = json.loads(r.read())
        seen.update(item["creator_id"] for item in answer["items"])
        personal += answer.get("source") == "model"
    return {"fans": len(fans), "k": k, "distinct": len(seen), "model_answers": personal}


if __name__ == "__main__":
    ensure_built()
    print(json.dumps(index_figures(), indent=2))
