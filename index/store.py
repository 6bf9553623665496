"""The versioned index store: one folder per build and a `current` pointer.

    <root>/current                      the current version's name, one line
    <root>/versions/<version>/          index.faiss, embeddings.npy, creators.parquet, queries.npy,
                                        query_users.npy, probes.npz, user_tower.onnx,
                                        config.yaml, manifest.json (the names below)
    <root>/versions/.staging-<pid>-*    a build in progress (never read; removed by the next run)
    <root>/.lock                        held by the rebuild job while it runs

A version is written whole in a staging folder, renamed into `versions/` and only then made
current by rewriting `current` under a temporary name and renaming it over the old one
(`os.replace`, atomic on POSIX): a reader sees the old version or the new one, never a mix, and a
crash at any point leaves the old version current. The pointer is a file rather than a symlink
so the store survives copies to object storage and filesystems without links.

Version names are `v<sequence>-<UTC time>-<inputs id>` (e.g. `v00012-20260101T120000Z-3f2a9c1b`):
they sort by build order and say when and from which inputs (model, catalog, settings) a version
was built.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq

from common import artifacts
from common.artifacts import MANIFEST, checksums
from common.errors import BusyError, IntegrityError, MissingInputError
from common.io import write_bytes, write_json
from index.build import HAS_GPU, METRICS, read_index, to_device
from index.tune import apply_params

log = logging.getLogger(__name__)

KIND = "towerline.creator_index"
POINTER = "current"
VERSIONS = "versions"
STAGING = ".staging-"
# A version folder's files; an export folder (`python -m index export`) holds the first five.
EMBEDDINGS = "embeddings.npy"
"""float32 [N, d] unit vectors; row i is CREATORS row i and faiss id i."""
CREATORS = "creators.parquet"
"""row → creator_idx (vocabulary index), creator_id."""
QUERIES, QUERY_USERS = "queries.npy", "query_users.npy"
"""Real user vectors (a seeded sample) recall is measured on, and their vocabulary indices."""
PROBES = "probes.npz"
"""Fixed probe users' tower inputs and vectors: a user tower is checked against them."""
INDEX_FILE = "index.faiss"
USER_TOWER = "user_tower.onnx"
"""The model's user tower as ONNX, parity with torch checked: what serving runs."""
MAP = "map.parquet"
"""The creator map (index.projection): a stratified sample's 2-D coordinates, names, categories."""
LEXICAL = "lexical"
"""The lexical retriever of creator search (index.lexical): a tantivy index, by faiss row."""
TEXT_INDEX = "text.faiss"
"""The semantic retriever's index of the creators' text vectors (index.semantic), by row."""
QUERY_ENCODER, QUERY_TOKENIZER = "query_encoder.onnx", "query_tokenizer.json"
"""The sentence encoder that made those vectors, as ONNX, and its tokenizer (index.onnx)."""
QUERY_PRECISIONS = ("fp32", "int8")
"""The query encoder's weights in a version (index config `query_precision`): as exported, or
quantized to int8 (index.query_encoder.quantize); the file name is the same either way."""
SUGGEST = "suggest"
"""Name completion keys (index.suggest): every name from each of its words on, sorted."""
CONFIG = "config.yaml"
"""The resolved rebuild config."""


def versions_dir(root: Path) -> Path:
    return Path(root) / VERSIONS


def _sequence(name: str) -> tuple[int, str]:
    number = name.removeprefix("v").split("-", 1)[0]
    return (int(number) if number.isdigit() else -1, name)


def list_versions(root: Path) -> list[str]:
    """Published versions, oldest first (by sequence number)."""
    folder = versions_dir(root)
    if not folder.exists():
        return []
    names = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(names, key=_sequence)


def current_version(root: Path) -> str | None:
    path = Path(root) / POINTER
    if not path.exists():
        return None
    return path.read_text().strip() or None


def set_current(root: Path, version: str) -> None:
    """Point `current` at a published version, atomically."""
    if not (versions_dir(root) / version / MANIFEST).exists():
        raise IntegrityError(
            f"cannot make {version} current: {versions_dir(root) / version} is not a "
            f"published version; published: {list_versions(root)}"
        )
    write_bytes(Path(root) / POINTER, f"{version}\n".encode())


def new_version_name(root: Path, inputs_id: str) -> str:
    """`v<sequence>-<UTC time>-<inputs id>`: the sequence orders builds even within a second."""
    last = max((_sequence(v)[0] for v in list_versions(root)), default=0)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"v{last + 1:05d}-{stamp}-{inputs_id[:8]}"


def staging_dir(root: Path) -> Path:
    folder = versions_dir(root) / f"{STAGING}{os.getpid()}-{os.urandom(3).hex()}"
    folder.mkdir(parents=True)
    return folder


def clean_staging(root: Path) -> list[str]:
    """Remove what crashed builds left behind (call with the lock held: none is running)."""
    folder = versions_dir(root)
    stale = sorted(p for p in folder.glob(f"{STAGING}*")) if folder.exists() else []
    for p in stale:
        log.warning("removing %s, left by an interrupted build", p)
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in stale]


@contextlib.contextmanager
def lock(root: Path) -> Iterator[None]:
    """One rebuild at a time per store; the OS drops the lock if the holder dies."""
    Path(root).mkdir(parents=True, exist_ok=True)
    with open(Path(root) / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise BusyError(
                f"another rebuild holds {Path(root) / '.lock'}; wait for it to finish"
            ) from e
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Write manifest.json with the checksum of every other file in the folder."""
    manifest = {**manifest, "files": checksums(folder)}
    write_json(Path(folder) / MANIFEST, manifest)
    return manifest


def publish(root: Path, staging: Path, version: str) -> Path:
    """Rename a complete staging folder to versions/<version> and make it current."""
    final = versions_dir(root) / version
    os.replace(staging, final)
    set_current(root, version)
    return final


def prune(root: Path, keep: int) -> list[str]:
    """Remove all but the `keep` newest versions, never the current one."""
    current = current_version(root)
    doomed = [v for v in list_versions(root)[::-1][keep:] if v != current]
    for v in doomed:
        shutil.rmtree(versions_dir(root) / v, ignore_errors=True)
    if doomed:
        log.info("removed old versions %s (keep=%d)", doomed, keep)
    return doomed


def read_manifest(root: Path, version: str | None = None) -> dict:
    """A version's manifest (default: the current one), kind checked."""
    version = version or current_version(root)
    if version is None:
        raise MissingInputError(
            f"no current index in {root}: build one (`python -m index rebuild --config ...`)"
        )
    path = versions_dir(root) / version / MANIFEST
    if not path.exists():
        raise IntegrityError(
            f"{root}/{POINTER} names {version!r} but {path} does not exist; published "
            f"versions: {list_versions(root)}; rebuild or point `current` at one of them"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("kind") != KIND:
        raise IntegrityError(f"{path} is a {manifest.get('kind')!r} manifest, not {KIND!r}")
    return manifest


@dataclass
class CreatorIndex:
    """A loaded, verified index version; `search` answers in creator vocabulary indices."""

    index: faiss.Index
    creator_idx: np.ndarray  # [N] int64, faiss id (row) → vocabulary index
    creator_id: np.ndarray  # [N] str
    manifest: dict
    version: str
    folder: Path

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores D [nq, k] and creator vocabulary indices [nq, k] (-1 where fewer than k)."""
        D, I = self.index.search(np.ascontiguousarray(xq, dtype=np.float32), k)  # noqa: E741
        return D, np.where(I >= 0, self.creator_idx[np.maximum(I, 0)], -1)


def load(
    root: str | Path,
    expected_model_version: str | None = None,
    version: str | None = None,
    verify: bool = True,
    use_gpu: bool = HAS_GPU,
) -> CreatorIndex:
    """The current (or named) version, refused with a clear error unless every file matches its
    checksum, the index matches the model version serving uses, and counts and dims agree."""
    root = Path(root)
    manifest = read_manifest(root, version)
    folder = versions_dir(root) / manifest["version"]
    if verify:
        verify_files(folder, manifest)
    built_for = manifest["model"]["version"]
    if expected_model_version is not None and expected_model_version != built_for:
        raise IntegrityError(
            f"index {manifest['version']} in {root} was built for model {built_for[:12]}…, "
            f"not {expected_model_version[:12]}…; rebuild it from the serving checkpoint or "
            f"serve the model it was built for"
        )
    index = read_index(folder / INDEX_FILE)
    ids = pq.read_table(folder / CREATORS)
    _check_shape(index, manifest, ids.num_rows, folder)
    apply_params(index, manifest.get("search_params") or {})
    return CreatorIndex(
        index=to_device(index, use_gpu),
        creator_idx=ids["creator_idx"].to_numpy(),
        creator_id=np.asarray(ids["creator_id"].to_pylist(), dtype=str),
        manifest=manifest,
        version=manifest["version"],
        folder=folder,
    )


def _check_shape(index: faiss.Index, manifest: dict, rows: int, folder: Path) -> None:
    want = (manifest["count"], manifest["count"], manifest["dim"], METRICS[manifest["metric"]])
    got = (index.ntotal, rows, index.d, index.metric_type)
    if got != want:
        raise IntegrityError(
            f"{folder}: (vectors, id rows, dim, metric) = {got} but the manifest says {want}; "
            f"the version is inconsistent: rebuild it"
        )


def verify_files(folder: Path, manifest: dict) -> None:
    """Every file a version's (or an export's) manifest lists is there with its size and sha256;
    IntegrityError naming the first that is not."""
    artifacts.verify(
        folder,
        manifest.get("files") or {},
        "rebuild (`python -m index rebuild --config ...`) or point the store at an older version",
    )


def check_probes(folder: Path, encode_users, atol: float = 1e-4) -> float:
    """Run a user tower (`encode_users(user, history, attributes) -> [P, d]`, e.g. the one
    serving loaded) on a version's probe inputs; raise unless it reproduces the probe vectors,
    so an index is never queried from another embedding space. Returns the largest difference."""
    with np.load(Path(folder) / PROBES, allow_pickle=False) as p:
        got = np.asarray(encode_users(p["user"], p["history"], p["attributes"]), np.float32)
        want = p["user_vectors"]
    diff = float(np.abs(got - want).max()) if len(want) else 0.0
    if got.shape != want.shape or diff > atol:
        raise IntegrityError(
            f"the user tower gives probe vectors {got.shape} differing by {diff:.2e} (> {atol}) "
            f"from the index's {want.shape}: it is not the model the index was built for"
        )
    return diff
