"""`python -m index export`: every creator's embedding and id, with a manifest serving can trust.

An export folder:

    embeddings.npy     float32 [N, d] unit vectors, row i is creators.parquet row i
    creators.parquet   creator_idx (vocabulary index), creator_id
    queries.npy        float32 [Q, d] real user vectors (a seeded sample), for tuning and benchmarks
    query_users.npy    int64 [Q] their vocabulary indices
    probes.npz         fixed probe creators and users: their tower inputs and vectors
    manifest.json      model version, embedding-space fingerprint, metric, norms, checksums

The fingerprint hashes the probes' vectors rounded to 5 decimals: it names the embedding space
(which towers, which weights). Rounding can flip on other hardware, so serving checks its own
user tower with `index.store.check_probes` (a tolerance) rather than by recomputing the hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from common.artifacts import MANIFEST, checksums, provenance
from common.errors import MissingInputError, ValidationError
from common.io import atomic_path, publish_dir, save_npy, write_json, write_parquet
from index import catalog as cat
from index.checkpoint import TrainedModel
from index.store import (
    CREATORS,
    EMBEDDINGS,
    PROBES,
    QUERIES,
    QUERY_USERS,
    verify_files,
)

log = logging.getLogger(__name__)

KIND = "towerline.creator_embeddings"
METRIC = "inner_product"
"""What the towers were trained with: dot products of unit vectors (towers.model)."""
PROBE_COUNT = 8
DECIMALS = 5
NORM_TOLERANCE = 1e-3


@dataclass
class Embeddings:
    """An export folder loaded: xb [N, d] with row → creator, and real user queries xq."""

    xb: np.ndarray
    creator_idx: np.ndarray
    creator_id: np.ndarray
    xq: np.ndarray
    manifest: dict


def norm_check(x: np.ndarray) -> dict:
    """Smallest and largest L2 norm and the NaN/inf count: unit vectors or not."""
    finite = np.isfinite(x).all(axis=1)
    norms = np.linalg.norm(x[finite], axis=1) if finite.any() else np.zeros(1)
    return {
        "min_norm": float(norms.min()),
        "max_norm": float(norms.max()),
        "nonfinite_rows": int((~finite).sum()),
    }


def fingerprint(*vectors: np.ndarray) -> str:
    h = hashlib.sha256()
    for v in vectors:
        h.update((np.round(v.astype(np.float64), DECIMALS) + 0.0).astype(np.float32).tobytes())
    return h.hexdigest()


def probe_inputs(trained: TrainedModel, users: cat.UserFeatures, catalog: cat.Catalog) -> dict:
    """The first PROBE_COUNT creators and trained users, by index: fixed for a dataset, whatever the
    config, so two exports of one model share the fingerprint."""
    pool = cat.sample_users(users, len(users.trained), seed=0)[:PROBE_COUNT]
    inputs = cat.user_inputs(users, pool, trained.config)
    return {
        "creator_idx": catalog.creator_idx[:PROBE_COUNT],
        "user_idx": pool,
        **{k: v.numpy() for k, v in inputs.items()},
    }


def write_export(
    trained: TrainedModel, catalog: cat.Catalog, folder: Path, queries: int, seed: int
) -> dict:
    """Encode every creator and a sample of users into `folder` (created); returns the
    manifest, also written as manifest.json with the checksum of every file."""
    folder.mkdir(parents=True, exist_ok=True)
    xb = cat.encode_creators(trained.model, catalog, trained.config)  # [N, d]
    users = cat.load_users(catalog.data_dir, trained.attribute_hashing)
    query_users = cat.sample_users(users, queries, seed)
    xq = cat.encode_users(trained.model, cat.user_inputs(users, query_users, trained.config))
    probes = probe_inputs(trained, users, catalog)
    tensors = {k: torch.as_tensor(probes[k]) for k in ("user", "history", "attributes")}
    probes["user_vectors"] = cat.encode_users(trained.model, tensors)
    probes["creator_vectors"] = xb[: len(probes["creator_idx"])]
    save_npy(folder / EMBEDDINGS, xb)
    save_npy(folder / QUERIES, xq)
    save_npy(folder / QUERY_USERS, query_users)
    write_creators(folder / CREATORS, catalog.creator_idx, catalog.creator_id)
    with atomic_path(folder / PROBES) as tmp, open(tmp, "wb") as f:
        np.savez(f, **probes)
    manifest = describe(trained, catalog, xb, xq, probes, seed)
    write_json(folder / MANIFEST, {**manifest, "files": checksums(folder)})
    log.info("exported %d creators × %d (%s)", *xb.shape, folder)
    return manifest


def write_creators(path: Path, creator_idx: np.ndarray, creator_id: np.ndarray) -> None:
    table = pa.table(
        {
            "creator_idx": pa.array(creator_idx.astype(np.int64)),
            "creator_id": pa.array(creator_id.astype(str).tolist(), pa.string()),
        }
    )
    write_parquet(path, table)


def describe(trained, catalog, xb, xq, probes, seed) -> dict:
    """The manifest of an export: what made it, from which catalog, and what its vectors are."""
    return {
        "kind": KIND,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "created_by": provenance("torch", "faiss"),
        "model": _model_section(trained),
        "catalog": _catalog_section(trained, catalog),
        "metric": METRIC,
        "normalized": True,
        "dim": int(xb.shape[1]),
        "count": int(xb.shape[0]),
        "norms": norm_check(xb),
        "queries": {"count": len(xq), "seed": seed, "norms": norm_check(xq)},
        "fingerprint": _fingerprint_section(probes),
    }


def _model_section(trained: TrainedModel) -> dict:
    """The checkpoint behind the vectors and how it was chosen, so an index names its model."""
    return {
        "version": trained.version,
        "checkpoint": str(trained.path),
        "epoch": trained.epoch,
        "global_step": trained.global_step,
        "evaluations": trained.evaluations,
        "selected_by": trained.selected_by,
        "trained_at": trained.trained_at,  # None: trained before runs recorded it
        "towers": vars(trained.config),
    }


def _catalog_section(trained: TrainedModel, catalog: cat.Catalog) -> dict:
    """Which creators were encoded, and how many only through the content path (no id row)."""
    return {
        "data_dir": str(catalog.data_dir),
        "creators_sha256": catalog.sha256,
        "creators": len(catalog),
        "vocabulary": len(catalog.features),
        "content_path_only": int((catalog.creator_idx >= trained.config.num_creators).sum()),
    }


def _fingerprint_section(probes: dict) -> dict:
    """The embedding space's name (see the module docstring) and the probes it was hashed from."""
    return {
        "sha256": fingerprint(probes["creator_vectors"], probes["user_vectors"]),
        "decimals": DECIMALS,
        "probe_creators": probes["creator_idx"].tolist(),
        "probe_users": probes["user_idx"].tolist(),
    }


def validate(manifest: dict, expected_count: int | None = None) -> None:
    """Fit to index: no NaN or inf, unit norms, and (when given) one row per catalog creator."""
    norms, count = manifest["norms"], manifest["count"]
    if norms["nonfinite_rows"]:
        raise ValidationError(
            f"{norms['nonfinite_rows']} of {count} creator vectors are NaN or inf; the "
            f"checkpoint {manifest['model']['checkpoint']} is broken: retrain or pick another"
        )
    if abs(norms["min_norm"] - 1) > NORM_TOLERANCE or abs(norms["max_norm"] - 1) > NORM_TOLERANCE:
        raise ValidationError(
            f"creator vector norms span [{norms['min_norm']:.4f}, {norms['max_norm']:.4f}], "
            f"not 1 ± {NORM_TOLERANCE}: inner product would not be cosine; check the towers"
        )
    if expected_count is not None and count != expected_count:
        raise ValidationError(
            f"{count} vectors for a catalog of {expected_count} creators; re-export"
        )


def load_embeddings(folder: str | Path, verify: bool = True) -> Embeddings:
    """An export folder (or an index version folder, a superset of one), checksums verified."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.exists():
        raise MissingInputError(f"{path} not found: is {folder} an export or index version?")
    manifest = json.loads(path.read_text())
    if verify:
        verify_files(folder, manifest)
    table = pq.read_table(folder / CREATORS)
    xb = np.load(folder / EMBEDDINGS, allow_pickle=False)
    xq = np.load(folder / QUERIES, allow_pickle=False)
    return Embeddings(
        xb=xb,
        creator_idx=table["creator_idx"].to_numpy(),
        creator_id=np.asarray(table["creator_id"].to_pylist(), dtype=str),
        xq=xq,
        manifest=manifest,
    )


def export_to(trained: TrainedModel, catalog: cat.Catalog, output: Path, **kw) -> dict:
    """write_export into a staging folder beside `output`, swapped in only when complete."""
    output = Path(output)
    staging = output.with_name(f".{output.name}.staging.{os.getpid()}")
    try:
        manifest = write_export(trained, catalog, staging, **kw)
        publish_dir(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest
