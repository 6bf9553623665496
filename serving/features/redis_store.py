"""The Redis backend of the online feature store: the materialised records in Redis, shared by
every replica.

A load writes one key per user under a versioned prefix and only then moves the
`<namespace>:current` pointer, so a reader never sees half a version; the previous version is kept
so readers one switch behind still find whole records. A dead or hung Redis raises
`FeatureStoreUnavailable` within the socket timeout, which the service turns into a fallback.

Redis keys (`ns` = namespace, `v` = the folder's content version):
`ns:current`, `ns:previous` (version strings), `ns:versions` (set of loaded versions),
`ns:loading:v` (a load in progress, expires), `ns:v:v:meta` (the manifest as JSON, written
last), `ns:v:v:u:<user_id>` (one record: header + int32 history, attributes, followed).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from serving.features.base import (
    EMPTY,
    FeatureStoreError,
    FeatureStoreUnavailable,
    UserFeaturesBatch,
    encode_ids,
    unknown_batch,
)
from serving.features.embedded import EmbeddedStore

# -- records -------------------------------------------------------------------------

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


def safe_url(url: str) -> str:
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
            f"Redis at {safe_url(url)} failed: {type(e).__name__}: {e}"
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
                f"nothing loaded in Redis at {safe_url(self.url)}: {self._keys.current} is "
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
        encoded = encode_ids(user_ids)
        with _unavailable(self.url):
            for _ in range(3):
                version, manifest = self._state
                if not encoded:
                    return unknown_batch(0, manifest, version)
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
        batch = unknown_batch(len(records), manifest, version)
        n, width = manifest["history_len"], manifest["attribute_width"]
        followed = []
        for i, (uid, rec) in enumerate(zip(user_ids, records, strict=True)):
            if rec is None:
                followed.append(EMPTY)
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
    a, v = store.arrays, store.version
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
