"""What every artifact folder carries: the checksum of each file and what produced it.

A prepared dataset, an index version and a feature store each keep a manifest.json with a
`files` entry (relative path → sha256 and bytes, from `checksums`) and a `created_by` entry
(`provenance`); readers check a folder against it with `verify` before trusting it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from common.errors import IntegrityError

MANIFEST = "manifest.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def checksums(root: str | os.PathLike, exclude: tuple[str, ...] = (MANIFEST,)) -> dict:
    """sha256 and size of every file under `root`, keyed by relative path, sorted."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in exclude:
            out[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


def verify(
    folder: str | os.PathLike,
    files: dict,
    fix: str,
    hashes: bool = True,
    exclusive: bool = False,
    error: type[Exception] = IntegrityError,
) -> None:
    """Raise `error` naming the first file of `files` (a manifest's entry) that is missing or
    differs in size or (with `hashes`) sha256, and what to do (`fix`); with `exclusive`, a file
    the manifest does not list is refused too. Sizes are checked first: a truncated file is
    found without reading every other one."""
    folder = Path(folder)
    for rel, want in sorted(files.items()):
        path = folder / rel
        size = path.stat().st_size if path.is_file() else None
        if size is None:
            raise error(f"{path} is missing (its manifest lists {want['bytes']} bytes); {fix}")
        if size != want["bytes"]:
            raise error(
                f"{path} is {size} bytes where its manifest has {want['bytes']}: the file is "
                f"truncated or corrupted; {fix}"
            )
    for rel, want in sorted(files.items()) if hashes else ():
        got = sha256_file(folder / rel)
        if got != want["sha256"]:
            raise error(
                f"{folder / rel} is corrupted or truncated: sha256 {got[:12]}… where its "
                f"manifest has {want['sha256'][:12]}…; {fix}"
            )
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    extra = sorted(present - set(files) - {MANIFEST}) if exclusive else []
    if extra:
        raise error(f"{folder} holds files its manifest does not list: {extra[:5]}; {fix}")


def provenance(*packages: str) -> dict:
    """What produced an artifact: Python, package versions, the git commit, the host."""
    out = {"python": platform.python_version(), "host": platform.node()}
    for pkg in ("towerline", "numpy", "pyarrow", *packages):
        out[pkg] = _version(pkg)
    try:
        out["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).parent,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def _version(package: str) -> str | None:
    """A distribution's version; faiss is published as faiss-cpu or faiss-gpu-cu12."""
    for name in (package, f"{package}-cpu", f"{package}-gpu-cu12"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None
