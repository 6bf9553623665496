"""Where trained rankers are kept: one folder per index version they were trained for.

    <store>/<index version>/ranker.onnx     the rank stage's graph (ranking.ranker)
    <store>/<index version>/trees.txt       the same trees in LightGBM's text format
    <store>/<index version>/als_items.npy   ALS's creator factors for the als_score feature
                                            (ranking.collab), where the ranker has them
    <store>/<index version>/manifest.json   what made it, from what, what validation chose,
                                            and the checksum of every file

A ranker reads the towers' retrieval scores, so it belongs to the index version whose towers
gave them: the service looks up the folder of the version it serves, and a version without one
is served in retrieval order (said in /readyz). A folder is written aside and renamed into place,
so a reader sees a whole ranker or none.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from common.artifacts import MANIFEST, checksums, verify
from common.errors import IntegrityError
from common.io import publish_dir, write_bytes, write_json
from ranking.collab import Als

KIND = "towerline.ranker"
FORMAT = 1
RANKER = "ranker.onnx"
TREES = "trees.txt"
"""LightGBM's own text dump of the same trees (no pickle): what explains a ranked list
(ranking.ranker.contributions); absent when validation kept the retrieval order."""


def folder_of(store: str | Path, index_version: str) -> Path:
    return Path(store) / index_version


def save(store: str | Path, index_version: str, model, manifest: dict, trees: str | None = None,
         als: Als | None = None):  # fmt: skip
    """Write `model` (an onnx ModelProto), the trees' text (`trees`, if any), ALS's factors
    (`als`, if any) and the manifest for `index_version`, replacing the ranker that version
    had; the folder."""
    final = folder_of(store, index_version)
    staging = final.with_name(f".{index_version}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_bytes(staging / RANKER, model.SerializeToString())
    if trees is not None:
        write_bytes(staging / TREES, trees.encode())
    if als is not None:
        manifest = {**manifest, "als": {**(manifest.get("als") or {}), **als.save(staging)}}
    write_json(staging / MANIFEST, {"kind": KIND, "format": FORMAT, **manifest,
                                    "files": checksums(staging)})  # fmt: skip
    publish_dir(staging, final)
    return final


def find(store: str | Path | None, index_version: str, check: bool = True) -> Path | None:
    """The ranker folder of `index_version`, checked against its manifest; None if it has none."""
    if store is None:
        return None
    folder = folder_of(store, index_version)
    if not (folder / MANIFEST).is_file():
        return None
    if check:
        manifest = read_manifest(folder)
        verify(folder, manifest["files"], fix=f"train it again: `python -m ranking train "
               f"--version {index_version} ...`")  # fmt: skip
    return folder


def load_als(folder: str | Path, manifest: dict) -> Als | None:
    """The ALS factors a ranker's features read (its manifest's `als`); None if it has none."""
    entry = manifest.get("als")
    return None if entry is None else Als.load(folder, entry)


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    manifest = json.loads(path.read_text())
    if manifest.get("kind") != KIND:
        raise IntegrityError(f"{path} is a {manifest.get('kind')!r} manifest, not {KIND!r}")
    return manifest
