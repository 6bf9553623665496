"""The online feature store room: what the user tower needs for a user at request time.

- `base` — the `FeatureStore` protocol every backend answers (`lookup(user_ids)` →
  `UserFeaturesBatch`), its errors, and `check_hashing` (a store must hash users as the served
  model was trained)
- `embedded` — a materialised folder memory-mapped in-process
- `redis_store` — the same records in Redis for many replicas, switched atomically
- `materialise` — the offline job (`python -m serving materialise`) that writes a store from a
  prepared dataset, byte-identical to what training read

`open_store(spec)` picks the backend from the spec: `redis://…` or a folder.
"""

from __future__ import annotations


def open_store(spec: str, namespace: str = "towerline", **kwargs):
    """`redis://host:port/0` (also rediss://, unix://) → RedisStore; a folder → EmbeddedStore."""
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from serving.features.redis_store import RedisStore

        return RedisStore(spec, namespace=namespace, **kwargs)
    from serving.features.embedded import EmbeddedStore

    return EmbeddedStore.open(spec, **kwargs)
