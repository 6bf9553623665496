"""The manifest every prepared dataset carries: what made it, from what, with what counts, and
the checksum of every file, so a reader can trust (and verify) what it loads."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from common import artifacts
from common.artifacts import MANIFEST, checksums, provenance
from common.config import to_dict
from common.io import write_json
from data.config import SUPPORTED_WORLD_SIZES
from data.contract import RESERVED
from data.schema import SCHEMA_VERSION

KIND = "towerline.prepared_data"


def build(job) -> dict:
    """The manifest of a finished prepare job (see data.prepare._Job)."""
    cfg, rows_in = job.cfg, job.counts["interactions_in"]
    return {
        "kind": KIND,
        "schema_version": SCHEMA_VERSION,
        "name": cfg.name,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "created_by": provenance("webdataset"),
        "config": to_dict(cfg),
        "source": job.source.describe(),
        "counts": _counts(job),
        "split": _split(job),
        "vocab": _vocab(job),
        "shards": _shards(job),
        "text_features": job.text_info,
        "timings": {k: round(v, 3) for k, v in job.timings.items()},
        "events_per_second": round(rows_in / job.timings["total_s"]) if rows_in else None,
    }


def _counts(job) -> dict:
    """Rows in, accepted and quarantined per table (by reason), events by type, and the split's
    pairs and users: the figures a reader reconciles against the raw logs."""
    c = job.counts
    return {
        "interactions": _table_counts(c, "interactions"),
        "creators": _table_counts(c, "creators"),
        "users": _table_counts(c, "users"),
        "events_by_type": _prefixed(c, "events_"),
        "quarantine_by_reason": _prefixed(c, "quarantined_"),
        "train_pairs": int(job.shard_counts.sum()),
        "test_pairs": int(job.user_test.sum()),
        "test_users": int((job.user_test > 0).sum()),
        "validation_pairs": int(job.user_validation.sum()),
        "validation_users": int((job.user_validation > 0).sum()),
    }


def _prefixed(c: dict, prefix: str) -> dict:
    """The counts whose key starts with `prefix`, by the rest of the key, sorted."""
    return {k.removeprefix(prefix): v for k, v in sorted(c.items()) if k.startswith(prefix)}


def _split(job) -> dict:
    """How train, validation and test were cut (times as ISO dates, None for a per-user split)."""
    s = job.cfg.split
    return {
        "kind": s.kind,
        "cut": _iso(job.cut_ms),
        "test_fraction": s.test_fraction,
        "validation_cut": _iso(job.validation_cut_ms),
        "validation_fraction": s.validation_fraction,
    }


def _vocab(job) -> dict:
    """Each vocabulary's size, the size it grew from (--vocab_from) and the reserved ids."""
    reserved = {name: i for i, name in enumerate(RESERVED)}
    previous = job.previous_sizes or {}
    return {
        name: {"size": len(v), "previous_size": previous.get(name), "reserved": dict(reserved)}
        for name, v in job.vocab.items()
    }


def _shards(job) -> dict:
    """Where the training shards are, how they are laid out, and each record's fields."""
    cfg = job.cfg
    return {
        "pattern": f"shards/train-{{00000..{cfg.shards.num_shards - 1:05d}}}.tar",
        "count": cfg.shards.num_shards,
        "record_size": cfg.shards.record_size,
        "records_per_shard": job.n_records,
        "examples": int(job.shard_counts.sum()),
        "padded_examples": job.padded,
        "balanced_for_world_sizes": list(SUPPORTED_WORLD_SIZES),
        "member": "one <key>.examples.npy per record: a structured array of fields",
        "fields": {
            "user": "int32 [R]",
            "creator": "int32 [R]",
            "history": f"int32 [R, {cfg.features.history_length}] (0 = padding, newest last)",
            "weight": "float32 [R]",
            "ts": "int64 [R] ms since epoch, -1 = no time",
        },
    }


def _table_counts(c, table: str) -> dict:
    return {
        "in": c[f"{table}_in"],
        "accepted": c[f"{table}_accepted"],
        "quarantined": c[f"{table}_quarantined"],
    }


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


def write(folder: Path, manifest: dict) -> None:
    manifest = dict(manifest, files=checksums(folder))
    write_json(Path(folder) / MANIFEST, manifest)


def load(folder: str | Path, verify: bool = False) -> dict:
    """Read a dataset's manifest; with verify, recompute every checksum and refuse a
    changed, missing or unexpected file (common.errors.IntegrityError)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {folder} a prepared dataset?")
    manifest = json.loads(path.read_text())
    if manifest.get("kind") != KIND:
        raise ValueError(f"{path} is a {manifest.get('kind')!r} manifest, not {KIND!r}")
    if verify:
        artifacts.verify(folder, manifest["files"], "re-run prepare", exclusive=True)
    return manifest


def summary(manifest: dict) -> str:
    """A short human-readable view of a manifest."""
    c, s, sh = manifest["counts"], manifest["split"], manifest["shards"]
    i = c["interactions"]
    lines = [
        f"dataset {manifest['name']}  (schema v{manifest['schema_version']}, "
        f"source {manifest['source'].get('kind')})",
        f"  interactions  in {i['in']:,}  accepted {i['accepted']:,}  "
        f"quarantined {i['quarantined']:,}",
        f"  quarantine    {c['quarantine_by_reason'] or 'none'}",
        f"  split         {s['kind']}"
        + (f" at {s['cut']}" if s["cut"] else "")
        + f": {c['train_pairs']:,} train pairs, {c.get('validation_pairs', 0):,} validation "
        f"pairs, {c['test_pairs']:,} test pairs ({c['test_users']:,} test users)",
        "  vocab         " + ", ".join(f"{k} {v['size']:,}" for k, v in manifest["vocab"].items()),
        f"  shards        {sh['count']} × {sh['records_per_shard']} records × "
        f"{sh['record_size']} examples ({sh['padded_examples']:,} padded); {sh['pattern']}",
        f"  time          {manifest['timings'].get('total_s')} s "
        f"({manifest['events_per_second'] or 0:,} events/s)",
        f"  files         {len(manifest['files'])} with sha256",
    ]
    return "\n".join(lines)
