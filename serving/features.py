"""The online feature store: what the user tower needs for a user at request time, exactly as
training saw it, and every creator the user already engaged with (never recommended again).

`materialise` turns a prepared dataset (`python -m data prepare`) into one folder of
memory-mappable `.npy` arrays with a manifest; the rows come from `training.data.UserFeatures`
itself, so history and hashed attributes are byte-identical to what training read. Two backends
answer the same `lookup(user_ids) -> UserFeaturesBatch`:

- `EmbeddedStore`: the folder memory-mapped in-process (no network hop; worker processes share
  the pages), checksums verified at open.
- `RedisStore` (serving.redis_store): the same records in Redis, shared by every replica,
  switched version by version atomically; a dead or hung Redis raises `FeatureStoreUnavailable`
  within the socket timeout, which the service turns into a fallback answer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data import manifest as data_manifest
from data.io import atomic_path, checksums, publish_dir, sha256_file, write_json
from data.schema import RESERVED, UNK_INDEX

KIND = "towerline.feature_store"
FORMAT = 1
USERS = Path("tables") / "users.parquet"
TRAIN = Path("tables") / "train.parquet"
USER_COLUMNS = ("user_id", "user_idx", "history", "country", "attributes", "train_count")
PAIR_COLUMNS = ("user_idx", "creator_idx")
ARRAYS = (
    "user_idx",  # int64 [U] vocabulary index of each row; rows ascend by it
    "trained",  # bool [U] the user has training pairs
    "history",  # int64 [U, N] last N training creators, 0 = padding, newest last
    "attributes",  # int64 [U, A] hashed attribute buckets, 0 = none
    "followed_indptr",  # int64 [U + 1] CSR over followed_indices
    "followed_indices",  # int32 [P] creator vocabulary indices, ascending per user
    "id_bytes",  # uint8 [sum of id lengths] UTF-8 user ids, concatenated in row order
    "id_offsets",  # int64 [U + 1] row r's id is id_bytes[id_offsets[r]:id_offsets[r + 1]]
    "id_hash",  # uint64 [U] blake2b-64 of each id, sorted
    "id_rows",  # int64 [U] row of each id_hash entry
)
OK, BAD_INPUT, UNAVAILABLE = 0, 2, 3  # exit codes of `python -m serving materialise`
_EMPTY = np.zeros(0, dtype=np.int64)


class FeatureStoreError(ValueError):
    """A feature store or its input is missing, malformed or corrupted."""


class FeatureStoreUnavailable(RuntimeError):
    """The backend did not answer in time (or holds nothing yet): serve a fallback instead."""


@dataclass
class UserFeaturesBatch:
    """Features of a batch of user ids, in request order."""

    user_idx: np.ndarray  # [B] int64 vocabulary index; UNK (1) for ids the store doesn't know
    known: np.ndarray  # [B] bool: the id is in the store
    trained: np.ndarray  # [B] bool: the user had training pairs
    history: np.ndarray  # [B, N] int64, 0 = padding, newest last
    attributes: np.ndarray  # [B, A] int64 hashed buckets, 0 = none
    followed: list[np.ndarray]  # per user: int64 creator vocabulary indices seen in training
    version: str = ""  # the store version that answered

    def inputs(self) -> dict[str, np.ndarray]:
        """encode_users arguments, as training.data.UserFeatures.inputs builds them: users
        without training pairs go in as UNK."""
        return {
            "user": np.where(self.trained, self.user_idx, UNK_INDEX),
            "history": self.history,
            "attributes": self.attributes,
        }


@runtime_checkable
class FeatureStore(Protocol):
    version: str
    manifest: dict

    def lookup(self, user_ids: Sequence[str]) -> UserFeaturesBatch: ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


def check_hashing(
    manifest: dict, attribute_buckets: int, attribute_width: int, history_len: int | None = None
) -> None:
    """Refuse a store whose attributes were hashed, or histories cut, for another model (see
    index.catalog.user_hashing and history_length for the model's values)."""
    have = (manifest["attribute_buckets"], manifest["attribute_width"])
    if have != (attribute_buckets, attribute_width):
        raise FeatureStoreError(
            f"feature store {manifest['version']} hashes user attributes into {have[0]} buckets "
            f"× {have[1]}, the model into {attribute_buckets} × {attribute_width}; re-run "
            f"`python -m serving materialise --attribute-buckets {attribute_buckets} "
            f"--attribute-width {attribute_width}`"
        )
    if history_len is not None and manifest["history_len"] != history_len:
        raise FeatureStoreError(
            f"feature store {manifest['version']} keeps histories of {manifest['history_len']} "
            f"creators, the model takes {history_len}; re-run `python -m serving materialise` "
            f"from the dataset the model was trained on"
        )


# -- materialise -------------------------------------------------------------------------------


def materialise(
    data_dir: str | os.PathLike,
    output: str | os.PathLike,
    attribute_buckets: int = 4096,
    attribute_width: int = 8,
) -> dict:
    """Write the feature store of a prepared dataset to `output` (staged, then swapped in whole)
    and return its manifest. The attribute arguments are the model's `user_attribute_buckets`
    and `max_user_attributes` data hyper-parameters."""
    data_dir, output = Path(data_dir), Path(output)
    if attribute_buckets < 3 or attribute_width < 0:
        raise FeatureStoreError(
            f"attribute_buckets={attribute_buckets}, attribute_width={attribute_width}: buckets "
            f"must be >= 3 (0 and 1 are reserved) and width >= 0; pass the model's values"
        )
    source = _source(data_dir)
    staging = output.with_name(f".{output.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        counts, history_len = _write_arrays(data_dir, staging, attribute_buckets, attribute_width)
        _reconcile(counts, source, data_dir)
        files = checksums(staging)
        # Content-addressed: the same dataset and hashing give the same version, so loading it
        # into Redis twice writes it once.
        identity = {"files": files, "buckets": attribute_buckets, "width": attribute_width}
        version = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        manifest = {
            "kind": KIND,
            "format": FORMAT,
            "version": version[:16],
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "created_by": data_manifest.provenance(),
            "source": source,
            "attribute_buckets": attribute_buckets,
            "attribute_width": attribute_width,
            "history_len": history_len,
            "counts": counts,
            "files": files,
        }
        write_json(staging / "manifest.json", manifest)
        publish_dir(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _source(data_dir: Path) -> dict:
    """The dataset's identity; refuses missing tables, missing columns and tables that differ
    from the dataset's manifest (changed after prepare, or half copied)."""
    try:
        m = data_manifest.load(data_dir)
    except (FileNotFoundError, ValueError) as e:
        raise FeatureStoreError(
            f"{e}; materialise reads what `python -m data prepare` wrote"
        ) from e
    files = {}
    for rel, columns in ((USERS, USER_COLUMNS), (TRAIN, PAIR_COLUMNS)):
        path = data_dir / rel
        if not path.exists():
            raise FeatureStoreError(
                f"{path} not found: {data_dir} is not a whole prepared dataset; re-run "
                f"`python -m data prepare`"
            )
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowException, OSError) as e:
            raise FeatureStoreError(f"cannot read {path} ({e}); re-run prepare") from e
        if missing := [c for c in columns if c not in names]:
            raise FeatureStoreError(
                f"{path} has no column(s) {missing}; columns are {names}; it was written by "
                f"another version of prepare: re-run `python -m data prepare`"
            )
        files[rel.as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        if m["files"].get(rel.as_posix()) != files[rel.as_posix()]:
            raise FeatureStoreError(
                f"{path} differs from {data_dir / 'manifest.json'} (changed after prepare, or "
                f"a half-copied dataset); re-run prepare or copy the dataset again"
            )
    return {
        "path": str(data_dir.resolve()),
        "name": m.get("name"),
        "created_at": m.get("created_at"),
        "manifest_sha256": sha256_file(data_dir / "manifest.json"),
        "users_vocab": m.get("vocab", {}).get("users", {}).get("size"),
        "train_pairs": m.get("counts", {}).get("train_pairs"),
        "files": files,
    }


def _write_arrays(data_dir: Path, out: Path, buckets: int, width: int) -> tuple[dict, int]:
    from training.data import UserFeatures  # torch and Lightning: only this batch job pays

    t = pq.read_table(data_dir / USERS, columns=["user_id", "user_idx"])
    all_idx = t["user_idx"].to_numpy().astype(np.int64)
    keep = np.flatnonzero(all_idx >= len(RESERVED))  # <pad>/<unk> rows are nobody's
    keep = keep[np.argsort(all_idx[keep], kind="stable")]
    idx = all_idx[keep]
    if len(idx) and (np.diff(idx) == 0).any():
        dup = idx[1:][np.diff(idx) == 0][:3].tolist()
        raise FeatureStoreError(f"{data_dir / USERS}: user_idx {dup} appear twice; re-run prepare")
    ids = t["user_id"].take(pa.array(keep)).to_pylist()
    features = UserFeatures.from_table(data_dir / USERS, buckets, width)
    arrays = {
        "user_idx": idx,
        "trained": features.trained.numpy()[idx],
        "history": features.history.numpy()[idx],
        "attributes": features.attributes.numpy()[idx],
    }
    indptr, indices, pairs = _followed(data_dir / TRAIN, idx)
    arrays |= {"followed_indptr": indptr, "followed_indices": indices}
    arrays |= _id_table(ids, data_dir / USERS)
    for name in ARRAYS:
        with atomic_path(out / f"{name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, arrays[name], allow_pickle=False)
    counts = {
        "users_in": t.num_rows,
        "reserved_rows": int((all_idx < len(RESERVED)).sum()),
        "users": len(idx),
        "trained_users": int(arrays["trained"].sum()),
        "train_pairs": pairs["rows"],
        "distinct_train_pairs": pairs["distinct"],
        "followed_pairs": int(indptr[-1]),
    }
    return counts, int(arrays["history"].shape[1])


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
            f"{path}: {len(stray)} distinct pairs belong to users missing from {USERS} "
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
    hashes = np.fromiter(map(_fingerprint, encoded), np.uint64, len(ids))
    order = np.argsort(hashes, kind="stable")
    return {
        "id_bytes": np.frombuffer(b"".join(encoded), dtype=np.uint8),
        "id_offsets": offsets,
        "id_hash": hashes[order],
        "id_rows": order.astype(np.int64),
    }


def _fingerprint(user_id: bytes) -> int:
    """blake2b, not polars' hash: the folder outlives library versions, and this never changes."""
    return int.from_bytes(hashlib.blake2b(user_id, digest_size=8).digest(), "little")


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


# -- the embedded backend ----------------------------------------------------------------------


def read_manifest(folder: str | os.PathLike, verify: bool = True) -> dict:
    """A feature store's manifest; every file must be there at its size, and with verify its
    sha256 must match too."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.exists():
        raise FeatureStoreError(
            f"{path} not found: is {folder} a feature store? write one with "
            f"`python -m serving materialise --data DATASET --output {folder}`"
        )
    m = json.loads(path.read_text())
    if (m.get("kind"), m.get("format")) != (KIND, FORMAT):
        raise FeatureStoreError(
            f"{path} is kind {m.get('kind')!r} format {m.get('format')!r}, not {KIND!r} format "
            f"{FORMAT}; re-run materialise with this version of towerline"
        )
    if sorted(m["files"]) != sorted(f"{name}.npy" for name in ARRAYS):
        raise FeatureStoreError(f"{path} lists files {sorted(m['files'])}; re-run materialise")
    for rel, want in m["files"].items():
        p = folder / rel
        size = p.stat().st_size if p.exists() else None
        if size != want["bytes"]:
            raise FeatureStoreError(
                f"{p} is missing or truncated ({size} bytes, manifest says {want['bytes']}); "
                f"re-run materialise"
            )
        if verify and sha256_file(p) != want["sha256"]:
            raise FeatureStoreError(f"{p} is corrupted (sha256 differs); re-run materialise")
    return m


class EmbeddedStore:
    """A materialised folder memory-mapped in this process."""

    def __init__(self, folder: Path, manifest: dict, arrays: dict[str, np.ndarray]):
        self.folder, self.manifest, self._a = folder, manifest, arrays
        self.version = manifest["version"]

    @classmethod
    def open(cls, folder: str | os.PathLike, verify: bool = True) -> EmbeddedStore:
        """Map a materialised folder. verify re-hashes every file (measured 0.03 s for a
        200k-user store): a slower start, but never a corrupted file served."""
        folder = Path(folder)
        manifest = read_manifest(folder, verify)
        # Plain ndarray views of the maps: np.memmap's per-item overhead is microseconds.
        arrays = {
            name: np.asarray(np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False))
            for name in ARRAYS
        }
        u, n = manifest["counts"]["users"], manifest["history_len"]
        shapes = {
            "history": (u, n),
            "attributes": (u, manifest["attribute_width"]),
            "followed_indptr": (u + 1,),
            "id_hash": (u,),
        }
        for name, shape in shapes.items():
            if arrays[name].shape != shape:
                raise FeatureStoreError(
                    f"{folder / name}.npy has shape {arrays[name].shape}, the manifest implies "
                    f"{shape}; re-run materialise"
                )
        return cls(folder, manifest, arrays)

    def __len__(self) -> int:
        return len(self._a["user_idx"])

    def user_id(self, row: int) -> bytes:
        off = self._a["id_offsets"]
        return self._a["id_bytes"][off[row] : off[row + 1]].tobytes()

    def rows(self, user_ids: Sequence[str]) -> np.ndarray:
        """[B] int64 row of each id, -1 where unknown. A fingerprint only narrows the search:
        the stored id bytes decide, so a hash collision can never return another user."""
        encoded = _encode_ids(user_ids)
        hashes = np.fromiter(map(_fingerprint, encoded), np.uint64, len(encoded))
        table, order = self._a["id_hash"], self._a["id_rows"]
        out = np.full(len(encoded), -1, dtype=np.int64)
        for i, p in enumerate(np.searchsorted(table, hashes).tolist()):
            while p < len(table) and table[p] == hashes[i]:
                if self.user_id(int(order[p])) == encoded[i]:
                    out[i] = order[p]
                    break
                p += 1
        return out

    def lookup(self, user_ids: Sequence[str]) -> UserFeaturesBatch:
        rows = self.rows(user_ids)
        a, known = self._a, rows >= 0
        r = rows[known]
        batch = _unknown_batch(len(rows), self.manifest, self.version)
        batch.known[:] = known
        batch.user_idx[known] = a["user_idx"][r]
        batch.trained[known] = a["trained"][r]
        batch.history[known] = a["history"][r]
        batch.attributes[known] = a["attributes"][r]
        ptr, ind = a["followed_indptr"], a["followed_indices"]
        batch.followed = [
            ind[ptr[i] : ptr[i + 1]].astype(np.int64) if i >= 0 else _EMPTY for i in rows.tolist()
        ]
        return batch

    def ping(self) -> bool:
        return bool(self._a)

    def close(self) -> None:
        self._a = {}  # the maps close once no batch view refers to them


def _encode_ids(user_ids: Sequence[str]) -> list[bytes]:
    bad = next((u for u in user_ids if not isinstance(u, str)), None)
    if bad is not None:
        raise TypeError(f"user id {bad!r} is a {type(bad).__name__}; pass user ids as str")
    return [u.encode() for u in user_ids]


def _unknown_batch(n: int, manifest: dict, version: str) -> UserFeaturesBatch:
    return UserFeaturesBatch(
        user_idx=np.full(n, UNK_INDEX, dtype=np.int64),
        known=np.zeros(n, dtype=bool),
        trained=np.zeros(n, dtype=bool),
        history=np.zeros((n, manifest["history_len"]), dtype=np.int64),
        attributes=np.zeros((n, manifest["attribute_width"]), dtype=np.int64),
        followed=[_EMPTY] * n,
        version=version,
    )


def open_store(spec: str, namespace: str = "towerline", **kwargs) -> FeatureStore:
    """`redis://host:port/0` (also rediss://, unix://) → RedisStore; a folder → EmbeddedStore."""
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from serving.redis_store import RedisStore

        return RedisStore(spec, namespace=namespace, **kwargs)
    return EmbeddedStore.open(spec, **kwargs)


# -- command line ------------------------------------------------------------------------------


def add_materialise_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="a prepared dataset (python -m data prepare)")
    parser.add_argument("--output", required=True, help="feature-store folder (replaced whole)")
    parser.add_argument(
        "--attribute-buckets", type=int, default=4096, help="the model's user_attribute_buckets"
    )
    parser.add_argument(
        "--attribute-width", type=int, default=8, help="the model's max_user_attributes"
    )
    parser.add_argument("--redis", metavar="URL", help="also load it, e.g. redis://host:6379/0")
    parser.add_argument("--namespace", default="towerline", help="Redis key prefix")


def cli_materialise(args) -> int:
    """`python -m serving materialise`: 0 done, 2 bad input, 3 Redis unavailable."""
    try:
        m = materialise(args.data, args.output, args.attribute_buckets, args.attribute_width)
        c = m["counts"]
        print(
            f"feature store {m['version']}: {c['users']:,} users ({c['trained_users']:,} "
            f"trained), {c['followed_pairs']:,} followed pairs, history {m['history_len']}, "
            f"attributes {m['attribute_buckets']} × {m['attribute_width']} → {args.output}"
        )
        if args.redis:
            from serving.redis_store import RedisStore, _safe_url

            r = RedisStore.load(args.output, args.redis, namespace=args.namespace)
            print(
                f"redis {_safe_url(args.redis)} {args.namespace}:current = {r['version']} "
                f"(previous {r['previous']}; wrote {r['written']:,} users in {r['seconds']} s; "
                f"deleted {r['deleted'] or 'nothing'})"
            )
    except FeatureStoreUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return UNAVAILABLE
    except FeatureStoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT
    return OK
