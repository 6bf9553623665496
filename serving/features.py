"""The online feature store: what the user tower needs for a user at request time, exactly as
training saw it, and every creator the user already engaged with (never recommended again).

`materialise` turns a prepared dataset (`python -m data prepare`) into one folder of
memory-mappable `.npy` arrays with a manifest; the rows come from `training.data.UserFeatures`
itself, so history and hashed attributes are byte-identical to what training read. Two backends
answer the same `lookup(user_ids) -> UserFeaturesBatch`:

- `EmbeddedStore`: the folder memory-mapped in-process (no network hop; worker processes share
  the pages), checksums verified at open.
- `RedisStore`: the same records in Redis, shared by every replica. A load writes one key per user
  under a versioned prefix and only then moves the `<namespace>:current` pointer, so a reader
  never sees half a version; the previous version is kept so readers one switch behind still
  find whole records. A dead or hung Redis raises `FeatureStoreUnavailable` within the socket
  timeout, which the service turns into a fallback answer.

Redis keys (`ns` = namespace, `v` = the folder's content version):
`ns:current`, `ns:previous` (version strings), `ns:versions` (set of loaded versions),
`ns:loading:v` (a load in progress, expires), `ns:v:v:meta` (the manifest as JSON, written
last), `ns:v:v:u:<user_id>` (one record: header + int32 history, attributes, followed).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

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


def check_hashing(manifest: dict, attribute_buckets: int, attribute_width: int) -> None:
    """Refuse a store whose attributes were hashed for another model (see
    index.catalog.load_users for the model's values)."""
    have = (manifest["attribute_buckets"], manifest["attribute_width"])
    if have != (attribute_buckets, attribute_width):
        raise FeatureStoreError(
            f"feature store {manifest['version']} hashes user attributes into {have[0]} buckets "
            f"× {have[1]}, the model into {attribute_buckets} × {attribute_width}; re-run "
            f"`python -m serving materialise --attribute-buckets {attribute_buckets} "
            f"--attribute-width {attribute_width}`"
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


# -- the Redis backend -------------------------------------------------------------------------

# A record: this header, then int32 history [N], attributes [A] and followed [F], little-endian.
_HEADER = np.dtype({
    "names": ["magic", "user_idx", "trained", "pad", "history_len", "width", "followed"],
    "formats": ["S4", "<i8", "u1", "V3", "<u2", "<u2", "<u4"],
})  # fmt: skip
_MAGIC = b"TLU1"
_LOADING_TTL_S = 120  # a crashed load stops protecting its keys from clean-up after this


class _Keys:
    """The key layout of one namespace (see the module docstring)."""

    def __init__(self, ns: str):
        self.ns, self.current, self.previous = ns, f"{ns}:current", f"{ns}:previous"
        self.versions = f"{ns}:versions"

    def loading(self, v: str) -> str:
        return f"{self.ns}:loading:{v}"

    def meta(self, v: str) -> str:
        return f"{self.ns}:v:{v}:meta"

    def user(self, v: str) -> bytes:
        return f"{self.ns}:v:{v}:u:".encode()


def _encode_records(a: dict[str, np.ndarray], lo: int, hi: int) -> list[bytes]:
    ptr = a["followed_indptr"][lo : hi + 1]
    followed = np.asarray(a["followed_indices"][ptr[0] : ptr[-1]], dtype="<i4")
    head = np.zeros(hi - lo, dtype=_HEADER)
    head["magic"], head["user_idx"], head["trained"] = (
        _MAGIC,
        a["user_idx"][lo:hi],
        a["trained"][lo:hi],
    )
    head["history_len"], head["width"] = a["history"].shape[1], a["attributes"].shape[1]
    head["followed"] = np.diff(ptr)
    fixed = np.concatenate(
        [
            head.view(np.uint8).reshape(hi - lo, -1),
            np.asarray(a["history"][lo:hi], dtype="<i4").view(np.uint8).reshape(hi - lo, -1),
            np.asarray(a["attributes"][lo:hi], dtype="<i4").view(np.uint8).reshape(hi - lo, -1),
        ],
        axis=1,
    )
    ptr = (ptr - ptr[0]).tolist()
    return [fixed[i].tobytes() + followed[ptr[i] : ptr[i + 1]].tobytes() for i in range(hi - lo)]


def _decode_record(record: bytes, n: int, width: int, where: str):
    head = np.frombuffer(record[: _HEADER.itemsize], dtype=_HEADER)
    ok = len(head) == 1 and head["magic"][0] == _MAGIC
    ok = ok and (int(head["history_len"][0]), int(head["width"][0])) == (n, width)
    f = int(head["followed"][0]) if ok else 0
    if not ok or len(record) != _HEADER.itemsize + 4 * (n + width + f):
        raise FeatureStoreError(f"Redis record {where} is malformed; reload the version")
    body = np.frombuffer(record, dtype="<i4", offset=_HEADER.itemsize).astype(np.int64)
    return head[0], body[:n], body[n : n + width], body[n + width :]


def _safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (
        f":{parts.port}" if parts.port else ""
    )
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.contextmanager
def _unavailable(url: str) -> Iterator[None]:
    import redis

    try:
        yield
    except redis.RedisError as e:
        raise FeatureStoreUnavailable(
            f"Redis at {_safe_url(url)} failed: {type(e).__name__}: {e}"
        ) from e


def _client(url: str, timeout: float, retries: int):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # redis-py's default retries 10 times with backoff: seconds of a request hung on a dead Redis.
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), retries),
    )


class RedisStore:
    """Features served from Redis; `timeout` (seconds) bounds every socket wait."""

    def __init__(
        self,
        url: str,
        namespace: str = "towerline",
        timeout: float = 0.05,
        retries: int = 1,
    ):
        self.url, self.namespace, self._keys = url, namespace, _Keys(namespace)
        self._client = _client(url, timeout, retries)
        with _unavailable(url):
            self._switch(self._client.get(self._keys.current))

    @property
    def version(self) -> str:
        return self._state[0]

    @property
    def manifest(self) -> dict:
        return self._state[1]

    def _switch(self, current: bytes | None) -> None:
        load = f"`python -m serving materialise --data DIR --output DIR --redis {self.url}`"
        if current is None:
            raise FeatureStoreUnavailable(
                f"nothing loaded in Redis at {_safe_url(self.url)}: {self._keys.current} is "
                f"not set; load a version with {load}"
            )
        version = current.decode()
        raw = self._client.get(self._keys.meta(version))
        if raw is None:
            raise FeatureStoreUnavailable(
                f"{self._keys.current} points at {version} but {self._keys.meta(version)} is "
                f"missing (deleted or half loaded); load it again with {load}"
            )
        self._state = (version, json.loads(raw))  # one assignment: threads see old or new

    def lookup(self, user_ids: Sequence[str]) -> UserFeaturesBatch:
        """One MULTI/EXEC round trip reads the pointer and the records together, so every
        record of a batch comes from the version the pointer named at that instant."""
        encoded = _encode_ids(user_ids)
        with _unavailable(self.url):
            for _ in range(3):
                version, manifest = self._state
                if not encoded:
                    return _unknown_batch(0, manifest, version)
                prefix = self._keys.user(version)
                pipe = self._client.pipeline(transaction=True)
                pipe.get(self._keys.current).mget([prefix + u for u in encoded])
                current, records = pipe.execute()
                if current is not None and current.decode() == version:
                    return self._batch(records, user_ids, version, manifest)
                self._switch(current)
        raise FeatureStoreUnavailable(
            f"{self._keys.current} changed three times during one lookup; retry"
        )

    def _batch(self, records, user_ids, version: str, manifest: dict) -> UserFeaturesBatch:
        batch = _unknown_batch(len(records), manifest, version)
        n, width = manifest["history_len"], manifest["attribute_width"]
        followed = []
        for i, (uid, rec) in enumerate(zip(user_ids, records, strict=True)):
            if rec is None:
                followed.append(_EMPTY)
                continue
            head, history, attributes, seen = _decode_record(rec, n, width, f"{version}/{uid}")
            batch.known[i], batch.user_idx[i] = True, head["user_idx"]
            batch.trained[i] = bool(head["trained"])
            batch.history[i], batch.attributes[i] = history, attributes
            followed.append(seen)
        batch.followed = followed
        return batch

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except Exception:
            return False

    def close(self) -> None:
        self._client.close()

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        url: str,
        namespace: str = "towerline",
        batch: int = 2000,
        timeout: float = 30.0,
    ) -> dict:
        """Copy a materialised folder into Redis (pipelined, `batch` users a round trip), point
        `<namespace>:current` at it, and delete versions older than the previous one."""
        store = EmbeddedStore.open(folder, verify=True)
        keys, v, start = _Keys(namespace), store.version, time.monotonic()
        client = _client(url, timeout, retries=3)
        try:
            with _unavailable(url):
                client.sadd(keys.versions, v)
                written = 0
                if not client.exists(keys.meta(v)):  # content-addressed: present means whole
                    written = _write_records(client, keys, store, batch)
                previous = _point_at(client, keys, v)
                deleted = _delete_versions(client, keys, keep={v, previous})
        finally:
            client.close()
        return {
            "version": v,
            "previous": previous,
            "users": len(store),
            "written": written,
            "deleted": deleted,
            "seconds": round(time.monotonic() - start, 3),
        }


def _write_records(client, keys: _Keys, store: EmbeddedStore, batch: int) -> int:
    a, v = store._a, store.version
    if len(store) and max(int(a["history"].max()), int(a["attributes"].max())) >= 2**31:
        raise FeatureStoreError(f"{store.folder}: indices past int32 do not fit a Redis record")
    prefix = keys.user(v)
    client.set(keys.loading(v), b"1", ex=_LOADING_TTL_S)
    for lo in range(0, len(store), batch):
        hi = min(lo + batch, len(store))
        records = _encode_records(a, lo, hi)
        mapping = {
            prefix + store.user_id(r): rec for r, rec in zip(range(lo, hi), records, strict=True)
        }
        client.pipeline(transaction=False).mset(mapping).expire(
            keys.loading(v), _LOADING_TTL_S
        ).execute()
    client.set(keys.meta(v), json.dumps(store.manifest))  # last: the version is now whole
    client.delete(keys.loading(v))
    return len(store)


def _point_at(client, keys: _Keys, v: str) -> str | None:
    """Move `current` to v and the old current to `previous`, atomically; return previous."""
    import redis

    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(keys.current, keys.previous)
                old, prev = pipe.get(keys.current), pipe.get(keys.previous)
                old = old.decode() if old is not None else None
                pipe.multi()
                pipe.set(keys.current, v)
                if old is not None and old != v:
                    pipe.set(keys.previous, old)
                    prev = old.encode()
                pipe.execute()
                return prev.decode() if prev is not None else None
            except redis.WatchError:
                continue


def _delete_versions(client, keys: _Keys, keep: set) -> list[str]:
    deleted = []
    for raw in sorted(client.smembers(keys.versions)):
        v = raw.decode()
        if v in keep or client.exists(keys.loading(v)):
            continue
        client.delete(keys.meta(v))  # first: a half-deleted version never looks whole
        pattern = _glob_escape(keys.user(v)) + b"*"
        chunk = []
        for key in client.scan_iter(match=pattern, count=1000):
            chunk.append(key)
            if len(chunk) == 1000:
                client.unlink(*chunk)
                chunk = []
        if chunk:
            client.unlink(*chunk)
        client.srem(keys.versions, v)
        deleted.append(v)
    return deleted


def _glob_escape(raw: bytes) -> bytes:
    for c in (b"\\", b"*", b"?", b"[", b"]"):
        raw = raw.replace(c, b"\\" + c)
    return raw


def open_store(spec: str, namespace: str = "towerline", **kwargs) -> FeatureStore:
    """`redis://host:port/0` (also rediss://, unix://) → RedisStore; a folder → EmbeddedStore."""
    if spec.startswith(("redis://", "rediss://", "unix://")):
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
