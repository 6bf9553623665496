"""The rebuild job: from the newest checkpoint and catalog to a published, verified index version.

Run by a scheduler as `python -m index rebuild --config configs/index/<name>.yaml`:

1. detect the inputs: the checkpoint (its weights' hash is the model version), the catalog
   (sha256 of its creators table) and the build settings of the config;
2. if the current version was built from the same three → nothing to do (exit 0, "up to date");
3. export every creator's vector; if only creators were appended to the catalog and the model
   and settings are the current version's, add the new ones to a copy of the current index
   (their vectors come from the creator tower's content path; no IVF retraining), else build a
   new index from the config's factory string;
4. tune the search parameters on real user vectors, validate (recall floor, one vector per
   catalog creator, finite unit vectors);
5. measure drift against the current version (index.drift: drift.json and drift.html in the
   new folder, the figures in W&B) and refuse past the config's `drift` thresholds unless
   `allow_drift` (exit 4, the report kept in `<store>/refused/`);
6. publish: the new folder is renamed into place and `current` switched atomically; old
   versions beyond `keep` are removed.

Any failure leaves the current version untouched (the new one is built in a staging folder) and
the exit code says why (index.errors). The last line on stdout is a one-line summary.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import to_dict, to_yaml
from common.errors import (
    FAILED,
    OK,
    IntegrityError,
    MissingInputError,
    ValidationError,
    exit_code,
)
from common.io import save_npy, write_bytes
from data.tables import history_length
from index import (
    build,
    catalog,
    checkpoint,
    drift,
    drift_report,
    export,
    lexical,
    projection,
    semantic,
    store,
    suggest,
    tune,
    user_tower,
)
from index.config import IndexConfig, settings_sha256

log = logging.getLogger(__name__)

VECTOR_ATOL = 1e-5  # existing creators' vectors re-encoded by the same model on the same catalog
REFUSED = "refused"
"""<store>/refused/: the drift report of the last build refused for its drift."""


class DriftError(ValidationError):
    """The new version drifted past the config's thresholds; nothing was published."""


@dataclass
class Inputs:
    """What a version is built from; `id` names the combination. The users table only
    supplies tuning queries, so a new one alone does not make the current version stale."""

    trained: checkpoint.TrainedModel
    catalog: catalog.Catalog
    settings_sha256: str

    @property
    def record(self) -> dict:
        return {
            "model_version": self.trained.version,
            "catalog_sha256": self.catalog.sha256,
            "settings_sha256": self.settings_sha256,
            "checkpoint": str(self.trained.path),
            "data_dir": str(self.catalog.data_dir),
            "id": self.id,
        }

    @property
    def id(self) -> str:
        parts = (self.trained.version, self.catalog.sha256, self.settings_sha256)
        return hashlib.sha256("|".join(parts).encode()).hexdigest()


@dataclass
class Result:
    code: int
    status: str  # published | up to date | would rebuild | failed
    summary: str
    version: str | None = None


def load_inputs(
    checkpoint_path: str | Path, data: str | Path | None
) -> tuple[checkpoint.TrainedModel, catalog.Catalog]:
    """The towers and the catalog (`data`, default: the dataset the checkpoint trained on),
    checked to share one vocabulary."""
    trained = checkpoint.load(checkpoint_path)
    trained_on = trained.data_hparams.get("data_dir")
    if not (data or trained_on):
        raise MissingInputError(
            f"checkpoint {trained.path} records no data_dir; name the catalog (--data DIR)"
        )
    found = catalog.load_catalog(data or trained_on)
    catalog.check_vocabulary(found, trained.config, trained_on)
    return trained, found


def detect(cfg: IndexConfig) -> Inputs:
    trained, found = load_inputs(cfg.checkpoint, cfg.data)
    return Inputs(trained, found, settings_sha256(cfg))


def current_manifest(root: Path) -> dict | None:
    """The current version's manifest, or None when there is none or it is unreadable (then
    the job builds from scratch rather than trusting it)."""
    try:
        return store.read_manifest(root)
    except MissingInputError:
        return None
    except IntegrityError as e:
        log.warning("ignoring the current version: %s", e)
        return None


def stale_reason(current: dict | None, inputs: Inputs) -> str | None:
    """Why the current version must be replaced, or None if it was built from these inputs."""
    if current is None:
        return "no current version"
    if "user_tower" not in current:
        return f"{current['version']} has no exported user tower (serving needs {store.USER_TOWER})"
    missing = [name for name in ("lexical", "suggest") if name not in current]
    if missing:
        return f"{current['version']} was built before creator search (no {' or '.join(missing)})"
    if lexical.WHOLE not in current["lexical"].get("fields", ()):
        return f"{current['version']}'s lexical index has no whole-name field (exact names first)"
    was, now = current.get("inputs", {}), inputs.record
    if was.get("id") == now["id"]:
        return None
    changed = [
        name
        for name, key in (
            ("model", "model_version"),
            ("catalog", "catalog_sha256"),
            ("build settings", "settings_sha256"),
        )
        if was.get(key) != now[key]
    ]
    return f"{' and '.join(changed) or 'inputs'} changed since {current['version']}"


def run(cfg: IndexConfig, dry_run: bool = False, wandb: bool = False) -> Result:
    """The whole job; never raises: failures come back as a Result with their exit code.

    `wandb`: also log the drift figures to W&B (when the config's `drift.wandb` agrees). The
    command line turns it on; in-process callers leave it off, since W&B starts a service
    process, a fork that a caller holding gRPC calls open (a service hot-swapping under load)
    must not make."""
    started, root = time.perf_counter(), Path(cfg.store)
    try:
        if dry_run:
            return _plan(cfg, root)
        with store.lock(root):
            return _rebuild(cfg, root, started, wandb)
    except Exception as e:
        code = exit_code(e)
        if code == FAILED:  # unexpected: the traceback is the diagnosis
            log.exception("rebuild failed")
        kept = _safe_current(root)
        return Result(
            code,
            "failed",
            f"index rebuild {cfg.name}: FAILED (exit {code}) {type(e).__name__}: {e} — "
            f"current stays {kept or 'none'}",
            kept,
        )


def _safe_current(root: Path) -> str | None:
    try:
        return store.current_version(root)
    except OSError:
        return None


def _plan(cfg: IndexConfig, root: Path) -> Result:
    inputs = detect(cfg)
    current = current_manifest(root)
    reason = stale_reason(current, inputs)
    version = current["version"] if current else None
    if reason is None:
        return Result(
            OK, "up to date", f"index rebuild {cfg.name}: up to date ({version})", version
        )
    return Result(
        OK, "would rebuild", f"index rebuild {cfg.name}: would rebuild: {reason}", version
    )


def _rebuild(cfg: IndexConfig, root: Path, started: float, wandb: bool = False) -> Result:
    store.clean_staging(root)
    inputs = detect(cfg)
    current = current_manifest(root)
    reason = stale_reason(current, inputs)
    if reason is None:
        version = current["version"]
        return Result(
            OK,
            "up to date",
            f"index rebuild {cfg.name}: up to date — {version} was built from the same model "
            f"{inputs.trained.version[:12]}, catalog and settings",
            version,
        )
    log.info("rebuilding %s: %s", root, reason)
    staging = store.staging_dir(root)
    try:
        manifest = build_version(cfg, root, inputs, current, staging)
        manifest["version"] = store.new_version_name(root, inputs.id)
        manifest["drift"] = gate_drift(cfg, root, current, manifest, staging, wandb)
        store.write_manifest(staging, manifest)
        store.publish(root, staging, manifest["version"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when published
    removed = store.prune(root, cfg.keep)
    return Result(
        OK, "published", summary(cfg, manifest, removed, time.perf_counter() - started),
        manifest["version"],
    )  # fmt: skip


def build_version(
    cfg: IndexConfig, root: Path, inputs: Inputs, current: dict | None, folder: Path
) -> dict:
    """Export, build or extend, tune and validate into `folder`; returns the manifest."""
    exported, tower, metric, emb = _export_version(cfg, inputs, folder)
    use_gpu = build.HAS_GPU if cfg.use_gpu is None else cfg.use_gpu
    index, record = _build_or_extend(cfg, root, current, emb, metric, folder, use_gpu)
    tuning = _tune_and_check(cfg, index, emb, metric, use_gpu, len(inputs.catalog))
    search_files = _write_search_files(cfg, inputs, emb, folder)
    _write_index_and_config(cfg, index, record, folder)
    return {
        **exported,
        "kind": store.KIND,
        "inputs": inputs.record,
        "index": record,
        "tuning": tuning,
        "search_params": tuning["chosen"]["params"],
        "user_tower": tower,
        **search_files,
        "config": to_dict(cfg),
    }


def _export_version(cfg: IndexConfig, inputs: Inputs, folder: Path):
    """Export and validate the creator vectors and the user tower; the metric is checked early."""
    exported = export.write_export(
        inputs.trained, inputs.catalog, folder, queries=cfg.tuning_users, seed=cfg.seed
    )
    export.validate(exported, expected_count=len(inputs.catalog))
    tower = write_user_tower(inputs, folder / store.USER_TOWER)
    metric = build.check_metric(cfg.metric, exported["metric"])
    emb = export.load_embeddings(folder, verify=False)
    return exported, tower, metric, emb


def _build_or_extend(cfg: IndexConfig, root: Path, current, emb, metric, folder, use_gpu):
    """A copy of the current index extended by appended creators where allowed, else a new one."""
    base = incremental_base(cfg, root, current, emb)
    if base is not None:
        return extend(root, base, emb, folder, use_gpu)
    return full_build(cfg, emb, metric, use_gpu)


def _tune_and_check(cfg: IndexConfig, index, emb, metric: int, use_gpu: bool, creators: int):
    """Search parameters tuned on the real user vectors, refused below the config's floors."""
    # tuned where serving will search it (store.load moves it the same way)
    tuning = tune.tune(
        build.to_device(index, use_gpu), emb.xb, emb.xq, cfg.k, cfg.recall_target, metric,
        cfg.nprobe, cfg.k_factor, cfg.repeats, use_gpu,
    )  # fmt: skip
    check_fit(cfg, index, tuning, creators)
    return tuning


def _write_search_files(cfg: IndexConfig, inputs: Inputs, emb, folder: Path) -> dict:
    """The id map and the lexical, suggest and (optional) semantic files, as manifest entries."""
    data_dir = inputs.catalog.data_dir
    return {
        "map": write_map(cfg, inputs, emb, folder),
        "lexical": lexical.build(data_dir, emb.creator_idx, folder / store.LEXICAL),
        "suggest": suggest.build(data_dir, emb.creator_idx, folder / store.SUGGEST),
        "semantic": (
            semantic.build(data_dir, emb.creator_idx, folder, cfg.query_precision)
            if cfg.semantic
            else None
        ),
    }


def _write_index_and_config(cfg: IndexConfig, index, record: dict, folder: Path) -> None:
    """Write the index and the config beside it, recording the index's size in `record`."""
    build.write_index(index, folder / store.INDEX_FILE)
    write_bytes(folder / store.CONFIG, to_yaml(cfg).encode())
    record["bytes"] = (folder / store.INDEX_FILE).stat().st_size


def gate_drift(
    cfg: IndexConfig,
    root: Path,
    current: dict | None,
    manifest: dict,
    folder: Path,
    wandb: bool = False,
) -> dict:
    """Drift of the version in `folder` from the current one, written into `folder` (and to
    W&B under <store>/wandb with `wandb`); a DriftError past the config's thresholds unless
    `allow_drift`. Returns the manifest's `drift` entry."""
    if not cfg.drift.enabled:
        return {"measured": False, "reason": "drift.enabled is false"}
    if current is None:
        log.info("no current version: no drift to measure")
        return {"measured": False, "reason": "no current version to compare with"}
    try:
        old = drift.read_side(store.versions_dir(root) / current["version"])
    except (IntegrityError, MissingInputError) as e:
        log.warning("no drift measured: the current version does not verify (%s)", e)
        return {"measured": False, "reason": f"{current['version']} does not verify"}
    new = drift.read_side(folder, manifest)
    found = drift.measure(old, new, Path(manifest["catalog"]["data_dir"]), cfg.drift, cfg.seed)
    breaches = drift.judge(found, cfg.drift)
    found.allowed = bool(breaches) and cfg.allow_drift
    drift_report.write(found, folder, {"config": cfg.name})
    if wandb and cfg.drift.wandb:
        drift_report.log_to_wandb(found, root)
    if breaches and not cfg.allow_drift:
        raise DriftError(refusal(cfg, root, found, folder))
    log.info("drift from %s: %s", old.name, drift.headline(found.figures, cfg.drift.k))
    return {
        "measured": True,
        "against": old.name,
        "k": cfg.drift.k,
        "figures": found.record()["figures"],
        "breaches": found.breaches,
        "allowed": found.allowed,
        "report": drift.HTML,
    }


def refusal(cfg: IndexConfig, root: Path, found: drift.Drift, folder: Path) -> str:
    """Keep the refused build's drift report in <store>/refused/ (the staging folder goes) and
    say which figures broke which thresholds, by how much."""
    kept = root / REFUSED
    for name in (drift.JSON, drift.HTML):
        write_bytes(kept / name, (folder / name).read_bytes())
    broken = "; ".join(drift.describe_breach(b) for b in found.breaches)
    return (
        f"{found.meta['new']['version']} drifted from {found.meta['old']['version']} past the "
        f"drift thresholds of {cfg.name}: {broken}; not published. Report: "
        f"{kept / drift.HTML}. Publish anyway with --allow_drift true, or change the "
        f"thresholds (--drift.<threshold>)"
    )


def write_map(cfg: IndexConfig, inputs: Inputs, emb: export.Embeddings, folder: Path):
    """The version's creator map (index.projection), or None with `map_points` 0."""
    if not cfg.map_points:
        return None
    return projection.write_map(
        folder / store.MAP, emb.xb, emb.creator_idx, emb.creator_id, inputs.catalog.data_dir,
        cfg.map_points, cfg.seed,
    )  # fmt: skip


def write_user_tower(inputs: Inputs, path: Path) -> dict:
    """The user tower as ONNX beside the index (parity with torch checked by the export), with
    the request inputs it expects: history length and attribute hashing as training used."""
    history_len = history_length(inputs.catalog.data_dir)
    buckets, width = inputs.trained.attribute_hashing
    described = user_tower.export_user_tower(inputs.trained, path, history_len, width)
    return {
        **described,
        "file": store.USER_TOWER,
        "history_len": history_len,
        "attribute_width": width,
        "attribute_buckets": buckets,
    }


def full_build(cfg: IndexConfig, emb: export.Embeddings, metric: int, use_gpu: bool):
    n, d = emb.xb.shape
    factory = build.resolve_factory(cfg.factory, n, d, cfg.nlist, cfg.pq_m)
    index, timings = build.build(emb.xb, factory, metric, use_gpu, cfg.seed)
    ivf = build.ivf_of(index)
    return index, {
        "mode": "full",
        "factory": factory,
        "factory_template": cfg.factory,
        "nlist": ivf.nlist if ivf is not None else None,
        "ntotal": int(index.ntotal),
        "trained_on": n,  # vectors the IVF cells were trained on; increments count against it
        "device": "gpu" if use_gpu else "cpu",
        "timings": timings,
    }


def incremental_base(
    cfg: IndexConfig, root: Path, current: dict | None, emb: export.Embeddings
) -> tuple[dict, export.Embeddings] | None:
    """The current version and its embeddings when the new catalog only appends creators to
    it under the same model and settings; None (with the reason logged) otherwise."""
    if not cfg.incremental or current is None:
        return None
    reason = _not_incremental(cfg, current, emb)
    old = None
    if reason is None:
        try:
            old = export.load_embeddings(store.versions_dir(root) / current["version"])
            trained_on = current["index"].get("trained_on", len(old.creator_idx))
            reason = _not_appended(old, emb, trained_on, cfg.incremental_max_fraction)
        except IntegrityError as e:
            reason = f"the current version does not verify ({e})"
    if reason is not None:
        log.info("full build, not incremental: %s", reason)
        return None
    return current, old


def _not_incremental(cfg: IndexConfig, current: dict, emb: export.Embeddings) -> str | None:
    if current["model"]["version"] != emb.manifest["model"]["version"]:
        return "the model changed"
    if current["inputs"]["settings_sha256"] != settings_sha256(cfg):
        return "the build settings changed"
    return None


def _not_appended(old, new, trained_on: int, max_fraction: float) -> str | None:
    """Why `new` is not `old` plus appended creators within the allowed growth, or None."""
    n = len(old.creator_idx)
    if len(new.creator_idx) < n or not (
        np.array_equal(new.creator_idx[:n], old.creator_idx)
        and np.array_equal(new.creator_id[:n], old.creator_id)
    ):
        return "creators were removed or renumbered"
    if not np.allclose(new.xb[:n], old.xb, atol=VECTOR_ATOL):
        worst = float(np.abs(new.xb[:n] - old.xb).max())
        return f"indexed creators' vectors changed (features changed; max diff {worst:.2e})"
    grown = len(new.creator_idx) - trained_on  # all increments since the IVF was trained
    if grown > max_fraction * trained_on:
        return (
            f"{grown} creators added since the IVF was trained on {trained_on} is more than "
            f"incremental_max_fraction={max_fraction} of them"
        )
    return None


def extend(root: Path, base: tuple[dict, export.Embeddings], emb, folder: Path, use_gpu: bool):
    """A copy of the current index with the new creators added; the stored vectors of the
    indexed creators are the current version's exactly, so index and embeddings agree."""
    current, old = base
    n = len(old.creator_idx)
    emb.xb[:n] = old.xb
    save_npy(folder / store.EMBEDDINGS, emb.xb)
    started = time.perf_counter()
    index = build.read_index(store.versions_dir(root) / current["version"] / store.INDEX_FILE)
    index = build.add(index, emb.xb[n:], use_gpu)
    log.info(
        "added %d creators to %s through the content path", len(emb.xb) - n, current["version"]
    )
    return index, {
        **current["index"],
        "mode": "incremental",
        "base_version": current["version"],
        "added": int(len(emb.xb) - n),
        "ntotal": int(index.ntotal),
        "device": "gpu" if use_gpu else "cpu",
        "timings": {"add_s": time.perf_counter() - started},
    }


def check_fit(cfg: IndexConfig, index, tuning: dict, creators: int) -> None:
    chosen = tuning["chosen"]
    if chosen["recall"] < cfg.recall_floor:
        raise ValidationError(
            f"recall@{cfg.k} {chosen['recall']:.4f} at the best setting "
            f"{tune.param_string(chosen['params']) or '(defaults)'} is below recall_floor="
            f"{cfg.recall_floor}; not published. Widen the sweep (nprobe, k_factor), use a finer "
            f"factory (more pq_m, an RFlat stage) or lower recall_floor"
        )
    if index.ntotal != creators:
        raise ValidationError(
            f"the index holds {index.ntotal} vectors for a catalog of {creators} creators"
        )


def summary(cfg: IndexConfig, manifest: dict, removed: list[str], seconds: float) -> str:
    t, idx = manifest["tuning"], manifest["index"]
    chosen = t["chosen"]
    params = tune.param_string(chosen["params"]) or "defaults"
    added = f" +{idx['added']}" if idx["mode"] == "incremental" else ""
    return (
        f"index rebuild {cfg.name}: published {manifest['version']} ({idx['mode']}{added}, "
        f"{manifest['count']:,} creators, {idx['factory']}, recall@{t['k']} "
        f"{chosen['recall']:.3f} at {params}, {chosen['qps']:,.0f} q/s = "
        f"{t['speedup_vs_exact']:.1f}× exact; {t['distinct_exact']:,} distinct creators in "
        f"{t['queries']:,} fans' exact top-{t['k']}s) in {seconds:.1f} s"
        + (f"; a map of {m['points']:,} creators ({m['method']})" if (m := manifest["map"]) else "")
        + f"; {drift.summary_line(manifest.get('drift') or {})}"
        + (f"; removed {len(removed)} old version(s)" if removed else "")
    )
