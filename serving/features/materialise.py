"""The offline job that writes a feature store: `python -m serving materialise`.

`materialise` turns a prepared dataset (`python -m data prepare`) into one folder of
memory-mappable `.npy` arrays (serving.features.base.ARRAYS) with a manifest; the rows come
from data.tables.UserFeatures itself, so history and hashed attributes are byte-identical to
what training read, and the counts reconcile with the dataset's manifest or nothing is written.
The folder is content-addressed (its version is a hash of its files and hashing), written whole
under a staging name and swapped in. `--redis URL` also loads it into Redis
(serving.features.redis_store), switched atomically for every replica.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common import errors
from common.artifacts import MANIFEST, checksums, provenance, sha256_file
from common.io import publish_dir, save_npy, write_json
from data import contract, tables
from data import manifest as data_manifest
from serving.features.base import (
    ARRAYS,
    FORMAT,
    KIND,
    FeatureStoreError,
    FeatureStoreUnavailable,
    fingerprint,
)

USER_COLUMNS = ("user_id", "user_idx", "history", "country", "attributes", "train_count")
PAIR_COLUMNS = ("user_idx", "creator_idx")


def materialise(
    data_dir: str | os.PathLike,
    output: str | os.PathLike,
    attribute_buckets: int = contract.ATTRIBUTE_BUCKETS,
    attribute_width: int = contract.ATTRIBUTE_WIDTH,
) -> dict:
    """Write the feature store of a prepared dataset to `output` (staged, then swapped in whole)
    and return its manifest. The attribute arguments are the model's `user_attribute_buckets`
    and `max_user_attributes` data hyper-parameters."""
    data_dir, output = Path(data_dir), Path(output)
    _check_hashing(attribute_buckets, attribute_width)
    source = _source(data_dir)
    staging = output.with_name(f".{output.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        counts, history_len = _write_arrays(data_dir, staging, attribute_buckets, attribute_width)
        _reconcile(counts, source, data_dir)
        manifest = _manifest(
            staging, source, counts, history_len, attribute_buckets, attribute_width
        )
        write_json(staging / MANIFEST, manifest)
        publish_dir(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _check_hashing(attribute_buckets: int, attribute_width: int) -> None:
    """Refuse attribute hashing no user tower can have, before anything is read or written."""
    if attribute_buckets < 3 or attribute_width < 0:
        raise FeatureStoreError(
            f"attribute_buckets={attribute_buckets}, attribute_width={attribute_width}: buckets "
            f"must be >= 3 (0 and 1 are reserved) and width >= 0; pass the model's values"
        )


def _manifest(
    staging: Path, source: dict, counts: dict, history_len: int, buckets: int, width: int
) -> dict:
    """The manifest of the arrays written to `staging`, its version a hash of their content."""
    files = checksums(staging)
    # Content-addressed: the same dataset and hashing give the same version, so loading it
    # into Redis twice writes it once.
    identity = {"files": files, "buckets": buckets, "width": width}
    version = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return {
        "kind": KIND,
        "format": FORMAT,
        "version": version[:16],
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "created_by": provenance(),
        "source": source,
        "attribute_buckets": buckets,
        "attribute_width": width,
        "history_len": history_len,
        "counts": counts,
        "files": files,
    }


def _source(data_dir: Path) -> dict:
    """The dataset's identity; refuses missing tables, missing columns and tables that differ
    from the dataset's manifest (changed after prepare, or half copied)."""
    m = _dataset_manifest(data_dir)
    files = {}
    for rel, columns in ((tables.USERS, USER_COLUMNS), (tables.TRAIN, PAIR_COLUMNS)):
        files[rel] = _checked_table(data_dir, rel, columns, m)
    return {
        "path": str(data_dir.resolve()),
        "name": m.get("name"),
        "created_at": m.get("created_at"),
        "manifest_sha256": sha256_file(data_dir / MANIFEST),
        "users_vocab": m.get("vocab", {}).get("users", {}).get("size"),
        "train_pairs": m.get("counts", {}).get("train_pairs"),
        "files": files,
    }


def _dataset_manifest(data_dir: Path) -> dict:
    """The prepared dataset's manifest, or an error that says which command writes one."""
    try:
        return data_manifest.load(data_dir)
    except (FileNotFoundError, ValueError) as e:
        raise FeatureStoreError(
            f"{e}; materialise reads what `python -m data prepare` wrote"
        ) from e


def _checked_table(data_dir: Path, rel: str, columns: tuple, m: dict) -> dict:
    """The identity (sha256, bytes) of one table, refused when it lacks a column materialise
    reads or differs from what the dataset's manifest `m` recorded."""
    path = data_dir / rel
    names = _column_names(path, data_dir)
    if missing := [c for c in columns if c not in names]:
        raise FeatureStoreError(
            f"{path} has no column(s) {missing}; columns are {names}; it was written by "
            f"another version of prepare: re-run `python -m data prepare`"
        )
    identity = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    if m["files"].get(rel) != identity:
        raise FeatureStoreError(
            f"{path} differs from {data_dir / MANIFEST} (changed after prepare, or "
            f"a half-copied dataset); re-run prepare or copy the dataset again"
        )
    return identity


def _column_names(path: Path, data_dir: Path) -> list[str]:
    """A table's column names, read from its footer alone; refuses a missing or unreadable
    table, which means the dataset was not prepared whole."""
    if not path.exists():
        raise FeatureStoreError(
            f"{path} not found: {data_dir} is not a whole prepared dataset; re-run "
            f"`python -m data prepare`"
        )
    try:
        return pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise FeatureStoreError(f"cannot read {path} ({e}); re-run prepare") from e


def _write_arrays(data_dir: Path, out: Path, buckets: int, width: int) -> tuple[dict, int]:
    t = pq.read_table(data_dir / tables.USERS, columns=["user_id", "user_idx"])
    all_idx = t["user_idx"].to_numpy().astype(np.int64)
    keep = _user_rows(all_idx, data_dir / tables.USERS)
    idx = all_idx[keep]
    ids = t["user_id"].take(pa.array(keep)).to_pylist()
    arrays = _user_arrays(data_dir / tables.USERS, idx, buckets, width)
    indptr, indices, pairs = _followed(data_dir / tables.TRAIN, idx)
    arrays |= {"followed_indptr": indptr, "followed_indices": indices}
    arrays |= _id_table(ids, data_dir / tables.USERS)
    for name in ARRAYS:
        save_npy(out / f"{name}.npy", arrays[name])
    counts = _counts(t.num_rows, all_idx, arrays, pairs)
    return counts, int(arrays["history"].shape[1])


def _user_rows(all_idx: np.ndarray, path: Path) -> np.ndarray:
    """Positions of the users table's real users, in user_idx order; refuses a user_idx given
    twice, which would make the store's rows ambiguous."""
    keep = np.flatnonzero(all_idx >= contract.FIRST_ID)  # <pad>/<unk> rows are nobody's
    keep = keep[np.argsort(all_idx[keep], kind="stable")]
    idx = all_idx[keep]
    if len(idx) and (np.diff(idx) == 0).any():
        dup = idx[1:][np.diff(idx) == 0][:3].tolist()
        raise FeatureStoreError(f"{path}: user_idx {dup} appear twice; re-run prepare")
    return keep


def _user_arrays(path: Path, idx: np.ndarray, buckets: int, width: int) -> dict[str, np.ndarray]:
    """The per-user arrays, taken from data.tables.UserFeatures so they match what training
    read, one row per user_idx in `idx`."""
    features = tables.UserFeatures.from_table(path, buckets, width)
    return {
        "user_idx": idx,
        "trained": features.trained[idx],
        "history": features.history[idx],
        "attributes": features.attributes[idx],
    }


def _counts(users_in: int, all_idx: np.ndarray, arrays: dict, pairs: dict) -> dict:
    """What was read and written, for the manifest and for _reconcile to check."""
    return {
        "users_in": users_in,
        "reserved_rows": int((all_idx < contract.FIRST_ID).sum()),
        "users": len(arrays["user_idx"]),
        "trained_users": int(arrays["trained"].sum()),
        "train_pairs": pairs["rows"],
        "distinct_train_pairs": pairs["distinct"],
        "followed_pairs": int(arrays["followed_indptr"][-1]),
    }


def _followed(path: Path, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """CSR of each row's distinct training creators; refuses pairs of users not in the table."""
    t = pq.read_table(path, columns=list(PAIR_COLUMNS))
    users = t["user_idx"].to_numpy().astype(np.int64)
    creators = t["creator_idx"].to_numpy().astype(np.int64)
    if len(creators) and (creators.min() < 0 or creators.max() >= 2**31 or users.min() < 0):
        raise FeatureStoreError(f"{path}: negative or > int32 indices; re-run prepare")
    keys = np.unique((users << 32) | creators)
    pair_users, pair_creators = keys >> 32, keys & 0xFFFFFFFF
    rows = np.minimum(np.searchsorted(idx, pair_users), max(len(idx) - 1, 0))
    stray = pair_users[idx[rows] != pair_users] if len(idx) else pair_users
    if len(stray):
        raise FeatureStoreError(
            f"{path}: {len(stray)} distinct pairs belong to users missing from {tables.USERS} "
            f"(user_idx {np.unique(stray)[:5].tolist()}); the tables come from different "
            f"prepares: re-run prepare"
        )
    indptr = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(idx)), out=indptr[1:])
    # Counted apart from the CSR (arrow's group-by, not numpy's unique) so the reconciliation
    # below compares two computations, not one with itself.
    distinct = t.group_by(list(PAIR_COLUMNS)).aggregate([]).num_rows
    return indptr, pair_creators.astype(np.int32), {"rows": t.num_rows, "distinct": distinct}


def _id_table(ids: list, path: Path) -> dict[str, np.ndarray]:
    if None in ids:
        raise FeatureStoreError(f"{path}: a user row has a null user_id; re-run prepare")
    if len(set(ids)) != len(ids):
        dup = Counter(ids).most_common(1)[0][0]
        raise FeatureStoreError(f"{path}: user_id {dup!r} appears twice; re-run prepare")
    encoded = [i.encode() for i in ids]
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, len(ids)), out=offsets[1:])
    hashes = np.fromiter(map(fingerprint, encoded), np.uint64, len(ids))
    order = np.argsort(hashes, kind="stable")
    return {
        "id_bytes": np.frombuffer(b"".join(encoded), dtype=np.uint8),
        "id_offsets": offsets,
        "id_hash": hashes[order],
        "id_rows": order.astype(np.int64),
    }


def _reconcile(c: dict, source: dict, data_dir: Path) -> None:
    expected = [
        ("users_in", c["users"] + c["reserved_rows"], "users + reserved rows"),
        ("followed_pairs", c["distinct_train_pairs"], "distinct train pairs"),
    ]
    if source["users_vocab"] is not None:
        expected.append(("users_in", source["users_vocab"], "the dataset's user vocabulary"))
    if source["train_pairs"] is not None:
        expected.append(("train_pairs", source["train_pairs"], "the dataset's train_pairs"))
    for key, want, what in expected:
        if c[key] != want:
            raise FeatureStoreError(
                f"counts do not reconcile for {data_dir}: {key}={c[key]:,} but {what} = "
                f"{want:,}; the dataset is inconsistent: re-run prepare"
            )


def add_materialise_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="a prepared dataset (python -m data prepare)")
    parser.add_argument("--output", required=True, help="feature-store folder (replaced whole)")
    parser.add_argument(
        "--attribute-buckets",
        type=int,
        default=contract.ATTRIBUTE_BUCKETS,
        help="the model's user_attribute_buckets",
    )
    parser.add_argument(
        "--attribute-width",
        type=int,
        default=contract.ATTRIBUTE_WIDTH,
        help="the model's max_user_attributes",
    )
    parser.add_argument("--redis", help="also load it, e.g. redis://host:6379/0")
    parser.add_argument("--namespace", default="towerline", help="Redis key prefix")


def cli_materialise(args) -> int:
    """`python -m serving materialise`: exit 0 done, 2 bad input, 7 Redis unavailable."""
    try:
        m = materialise(args.data, args.output, args.attribute_buckets, args.attribute_width)
        c = m["counts"]
        print(
            f"feature store {m['version']}: {c['users']:,} users ({c['trained_users']:,} "
            f"trained), {c['followed_pairs']:,} followed pairs, history {m['history_len']}, "
            f"attributes {m['attribute_buckets']} × {m['attribute_width']} → {args.output}"
        )
        if args.redis:
            from serving.features.redis_store import RedisStore, safe_url

            r = RedisStore.load(args.output, args.redis, namespace=args.namespace)
            print(
                f"redis {safe_url(args.redis)} {args.namespace}:current = {r['version']} "
                f"(previous {r['previous']}; wrote {r['written']:,} users in {r['seconds']} s; "
                f"deleted {r['deleted'] or 'nothing'})"
            )
    except (FeatureStoreError, FeatureStoreUnavailable) as e:
        return errors.report("serving", "materialise", e)
    return errors.OK
