"""Drift between the current index version and a new one: what publishing it would change.

The rebuild job (index.rebuild) measures it in the staging folder before it publishes, writes
`drift.json` and a self-contained `drift.html` (index.drift_report) into the new version, logs
the figures to W&B, and refuses to publish past the config's `drift` thresholds unless told to
(`--allow_drift true`). Two trainings need not share axes (any rotation of both towers scores
the same), so figures that compare vectors do it after aligning the spaces; figures over
neighbours and lists are rotation-invariant and need no alignment.

Creators, the ones both versions hold (joined on creator id), o_i old and n_i new unit vectors:

- `cosine_shift` = mean_i (1 − cos(R o_i, n_i)) with R the orthogonal Procrustes rotation
  argmin_{RᵀR=I} ‖O R − N‖_F = U Vᵀ where Oᵀ N = U Σ Vᵀ (Schönemann 1966, "A generalized
  solution of the orthogonal Procrustes problem", Psychometrika 31). 0 = the same geometry up
  to a rotation. `cosine_shift_unaligned` is the same with R = I (only when the widths agree).
- `neighbour_overlap` = mean_i |NN_k^old(i) ∩ NN_k^new(i)| / k over a seeded sample of
  creators; NN_k is the k nearest joined creators by inner product, the creator itself left out.
- `two_sample_auc`: a classifier two-sample test (Lopez-Paz & Oquab 2017, "Revisiting
  Classifier Two-Sample Tests", ICLR) on the aligned vectors: a seeded sample of creators is
  split in halves; an L2-regularised logistic regression learns to tell old from new vectors
  on one half and its held-out ROC-AUC on the other is the figure: 0.5 = no linear direction
  separates the two clouds, 1 = one does completely. Split by creator, so a held-out vector's
  twin was never trained on. `two_sample_null_se` is the AUC's standard error when nothing
  changed, sqrt((n₀ + n₁ + 1) / (12 n₀ n₁)) (Mann–Whitney).
  A classifier test rather than MMD with a permutation p-value: the AUC is an effect size on
  one scale whatever the catalog and sample size, whereas a p-value goes to 0 for any real but
  harmless difference as samples grow, MMD's value hangs on a kernel bandwidth, and the
  permutation test costs O(n² · permutations). A linear classifier rather than a flexible one,
  by measurement: creators sit in tight clusters (nearest-neighbour cosine 0.996 on the demo
  against 0.87 between a creator's two aligned vectors), so a k-nearest-neighbour classifier
  told two trainings of the demo apart completely (AUC 1.000 at cosine shift 0.13) but scored
  one of them against itself noised to a larger shift (0.21) 0.53; the linear one gave 0.80
  and 0.76, a figure that grades drift rather than saturating on every retrain.

Fans, a seeded sample with training pairs from the new catalog's users table, each version
answering with its own ONNX user tower and its own creators (exact top k by inner product, the
fan's history left out, as serving excludes what a fan follows):

- `list_overlap` = mean_f |L_old(f) ∩ L_new(f)| / k; `share_lists_changed` the share of fans
  whose list differs in membership or order.
- `rank_correlation` = mean_f Kendall's τ_b (Kendall 1945, "The treatment of ties in ranking
  problems", Biometrika 33) over the union of the two lists, a creator missing from a list
  ranked k + 1 there (the location parameter ℓ = k + 1 of Fagin, Kumar & Sivakumar 2003,
  "Comparing top k lists"). τ_b = Σ_{i<j} s^a_ij s^b_ij / sqrt(Σ|s^a_ij| · Σ|s^b_ij|) with
  s_ij = sign(r_i − r_j), so pairs tied at k + 1 count in neither. Kendall rather than
  Spearman: the tied "missing" ranks are exact for τ_b, where Spearman would need mid-ranks.
  Disjoint lists of 10 give −100/145 ≈ −0.69, identical ones 1.
- `popularity_old`, `popularity_new`: the mean catalog percentile of training interactions of
  the listed creators (mid-ranks over the new catalog, in (0, 1)); `popularity_shift` = new −
  old. `train_count_old`/`_new`: the mean count itself.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
from scipy.special import expit
from scipy.stats import rankdata

from common import artifacts
from common.errors import MissingInputError
from data import contract
from data.tables import CREATORS as CATALOG
from data.tables import USERS, UserFeatures
from index import store
from index.onnx import OnnxEncoder

log = logging.getLogger(__name__)

KIND = "towerline.index_drift"
JSON, HTML = "drift.json", "drift.html"
MISSING = ""
"""A list slot without a creator (a catalog smaller than k plus the fan's history)."""
ENCODE_CHUNK = 4096
THRESHOLDS = (
    ("cosine_shift", "max_cosine_shift", "max"),
    ("neighbour_overlap", "min_neighbour_overlap", "min"),
    ("list_overlap", "min_list_overlap", "min"),
    ("rank_correlation", "min_rank_correlation", "min"),
    ("popularity_shift", "max_popularity_shift", "abs"),
    ("two_sample_auc", "max_two_sample_auc", "max"),
)
"""(figure, config threshold, kind): `max` breaks above, `min` below, `abs` when |figure| is
above."""


@dataclass
class Side:
    """One version as drift reads it: its creators' vectors and its user tower."""

    name: str
    folder: Path
    manifest: dict
    xb: np.ndarray  # [N, d] float32 unit vectors, row i = creator_id[i]
    creator_idx: np.ndarray  # [N] int64 vocabulary indices
    creator_id: np.ndarray  # [N] str


@dataclass
class Drift:
    """What `measure` found: the figures (drift.json), what they were measured on, and the
    per-creator and per-fan values the report plots."""

    figures: dict
    meta: dict
    detail: dict = field(default_factory=dict)
    breaches: list[dict] = field(default_factory=list)
    limits: dict = field(default_factory=dict)
    """The thresholds judged against (None = not checked)."""
    allowed: bool = False
    """Published past its breaches (`--allow_drift true`)."""

    def record(self) -> dict:
        """drift.json: strict JSON, so a figure that could not be measured (NaN) is null."""
        return {
            "kind": KIND,
            **self.meta,
            "figures": {k: _finite_or_none(v) for k, v in self.figures.items()},
            "thresholds": self.limits,
            "breaches": self.breaches,
            "allowed": self.allowed,
        }


def _finite_or_none(value):
    return None if isinstance(value, float) and not np.isfinite(value) else value


NEEDED = (store.EMBEDDINGS, store.CREATORS, store.USER_TOWER)


def read_side(folder: str | Path, manifest: dict | None = None) -> Side:
    """A version folder; with no `manifest` given, its own, and the files drift reads checked
    against it (a corrupted old version must not pass for a drift)."""
    folder = Path(folder)
    if manifest is None:
        path = folder / artifacts.MANIFEST
        if not path.exists():
            raise MissingInputError(f"{path} not found: {folder} is not an index version")
        manifest = json.loads(path.read_text())
        files = manifest.get("files") or {}
        artifacts.verify(
            folder,
            {k: files[k] for k in NEEDED if k in files},
            "rebuild it or --drift.enabled false",
        )
    table = pq.read_table(folder / store.CREATORS)
    return Side(
        name=manifest.get("version") or folder.name,
        folder=folder,
        manifest=manifest,
        xb=np.load(folder / store.EMBEDDINGS, allow_pickle=False).astype(np.float32, copy=False),
        creator_idx=table["creator_idx"].to_numpy().astype(np.int64),
        creator_id=np.asarray(table["creator_id"].to_pylist(), dtype=str),
    )


# ---- vectors: alignment, shift, neighbours, the two-sample test ------------------------------


def procrustes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """R [d_a, d_b] minimising ‖a R − b‖_F with orthonormal columns or rows: U Vᵀ of the thin
    SVD of aᵀ b (Schönemann 1966)."""
    u, _, vt = np.linalg.svd(a.astype(np.float64).T @ b.astype(np.float64), full_matrices=False)
    return (u @ vt).astype(np.float32)


def cosine_shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n] 1 − cos(a_i, b_i)."""
    dot = np.einsum("ij,ij->i", a, b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return 1.0 - dot / np.maximum(norms, 1e-12)


def neighbours(x: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """[len(rows), k] the k nearest rows of x to each x[rows] by inner product, itself left out."""
    _, found = faiss.knn(np.ascontiguousarray(x[rows]), np.ascontiguousarray(x), k + 1,
                         faiss.METRIC_INNER_PRODUCT)  # fmt: skip
    others = found != rows[:, None]
    order = np.argsort(~others, axis=1, kind="stable")  # the others first, in rank order
    return np.take_along_axis(found, order, axis=1)[:, :k]


def overlap_at_k(a: np.ndarray, b: np.ndarray, k: int, missing=MISSING) -> np.ndarray:
    """[n] |a_i ∩ b_i| / k for rows of k items (`missing` fills short rows; never matched)."""
    same = (a[:, :, None] == b[:, None, :]) & (a != missing)[:, :, None]
    return same.any(axis=2).sum(axis=1) / k


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC: P(score of a 1 > score of a 0) + ½ P(tie), by the Mann–Whitney rank sum."""
    labels = np.asarray(labels, dtype=bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if not n1 or not n0:
        raise ValueError(f"auc needs both classes; got {n1} positives and {n0} negatives")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def logistic_fit(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 50) -> np.ndarray:
    """Weights [d + 1] (bias last) of L2-regularised logistic regression by Newton's method
    (iteratively reweighted least squares); the bias is not regularised."""
    X = np.c_[x.astype(np.float64), np.ones(len(x))]
    ridge = np.full(X.shape[1], l2)
    ridge[-1] = 1e-9  # keeps the Hessian invertible without pulling the bias to 0
    w = np.zeros(X.shape[1])
    for _ in range(steps):
        p = expit(X @ w)
        gradient = X.T @ (p - y) + ridge * w
        hessian = (X * (p * (1 - p))[:, None]).T @ X + np.diag(ridge)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def two_sample_auc(x0: np.ndarray, x1: np.ndarray, seed: int) -> tuple[float, float, dict]:
    """The linear classifier two-sample test of paired samples x0[i] ↔ x1[i] (one creator):
    (held-out AUC, its null standard error, held-out scores and labels for the report)."""
    n = len(x0)
    if n < 4:
        return float("nan"), float("nan"), {}
    order = np.random.default_rng(seed).permutation(n)
    train, test = order[: n // 2], order[n // 2 :]
    w = logistic_fit(
        np.concatenate([x0[train], x1[train]]), np.r_[np.zeros(len(train)), np.ones(len(train))]
    )
    xq = np.concatenate([x0[test], x1[test]]).astype(np.float64)
    scores = expit(xq @ w[:-1] + w[-1])
    labels = np.r_[np.zeros(len(test), bool), np.ones(len(test), bool)]
    m = len(test)
    null_se = float(np.sqrt((2 * m + 1) / (12 * m * m)))
    return auc(scores, labels), null_se, {"scores": scores, "labels": labels}


def creator_figures(old: Side, new: Side, cfg, seed: int) -> tuple[dict, dict]:
    """Shift, neighbour overlap and the two-sample test over the creators both versions hold."""
    ids, io, jn = np.intersect1d(old.creator_id, new.creator_id, return_indices=True)
    o, n = old.xb[io], new.xb[jn]
    figures = _coverage(old, new, len(ids))
    if len(ids) < 2:
        log.warning("only %d creators in both versions: no creator drift figures", len(ids))
        return figures, {}
    aligned = o @ procrustes(o, n)
    shift = cosine_shift(aligned, n)
    raw = cosine_shift(o, n) if o.shape[1] == n.shape[1] else None
    rng = np.random.default_rng(seed)
    near, neighbour = _neighbour_figures(o, n, rng, cfg)
    two_sample, held_out = _two_sample_figures(aligned, n, rng, cfg, seed)
    figures |= {
        "cosine_shift": float(shift.mean()),
        "cosine_shift_unaligned": float(raw.mean()) if raw is not None else None,
        **neighbour,
        **two_sample,
    }
    return figures, {"shift": shift, "shift_unaligned": raw, "neighbours": near, **held_out}


def _coverage(old: Side, new: Side, joined: int) -> dict:
    """Creators held by both versions, by one only, and the two widths: the figures reported
    even when too few creators are shared to measure drift."""
    return {
        "creators_joined": joined,
        "creators_only_old": len(old.creator_id) - joined,
        "creators_only_new": len(new.creator_id) - joined,
        "dim_old": int(old.xb.shape[1]),
        "dim_new": int(new.xb.shape[1]),
    }


def _neighbour_figures(o: np.ndarray, n: np.ndarray, rng: np.random.Generator, cfg):
    """Per-creator neighbour overlap of a seeded sample of the joined creators, and its
    figures. It draws from `rng` before the two-sample pick does: a seed's samples depend on
    that order."""
    near, k = neighbour_overlap(o, n, _sample(rng, len(o), cfg.creators), cfg.k)
    figures = {
        "neighbour_overlap": float(near.mean()),
        "neighbour_sample": len(near),
        "neighbour_k": k,
    }
    return near, figures


def _two_sample_figures(aligned, n, rng: np.random.Generator, cfg, seed: int) -> tuple[dict, dict]:
    """The two-sample test on a seeded sample of the joined creators (the aligned old
    vectors, back at unit length, against the new): its figures, and the held-out scores the
    report plots."""
    pick = _sample(rng, len(aligned), cfg.two_sample_creators)
    unit = aligned[pick] / np.maximum(np.linalg.norm(aligned[pick], axis=1, keepdims=True), 1e-12)
    c2st, null_se, held_out = two_sample_auc(unit, n[pick], seed)
    figures = {
        "two_sample_auc": c2st,
        "two_sample_null_se": null_se,
        "two_sample_creators": len(pick),
    }
    return figures, held_out


def _sample(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    return np.sort(rng.choice(n, min(size, n), replace=False))


def neighbour_overlap(o: np.ndarray, n: np.ndarray, rows: np.ndarray, k: int):
    """([len(rows)] overlap@k of each sampled creator's neighbours in the two spaces, the k
    used: at most the other creators there are)."""
    k = min(k, len(o) - 1)
    return overlap_at_k(neighbours(o, rows, k), neighbours(n, rows, k), k, missing=-1), k


# ---- fans: each version's lists ---------------------------------------------------------------


def fan_sample(users: UserFeatures, n: int, seed: int) -> np.ndarray:
    """Up to n fans with training pairs, seeded, sorted (index.catalog.sample_users' rule)."""
    pool = np.flatnonzero(users.trained)
    pool = pool[pool >= contract.FIRST_ID]
    if n < len(pool):
        pool = np.random.default_rng(seed).choice(pool, n, replace=False)
    return np.sort(pool).astype(np.int64)


def fit_history(history: np.ndarray, length: int) -> np.ndarray:
    """Histories (newest last, padded in front) cut or padded in front to `length` columns:
    what a tower exported for another history length takes."""
    have = history.shape[1]
    if have >= length:
        return history[:, have - length :]
    return np.pad(history, ((0, 0), (length - have, 0)))


def users_of(side: Side, data_dir: Path, cache: dict) -> UserFeatures:
    """The users table hashed as `side`'s tower was trained (its manifest's user_tower); read
    once per hashing."""
    tower = side.manifest["user_tower"]
    hashing = (int(tower["attribute_buckets"]), max(int(tower["attribute_width"]), 1))
    if hashing not in cache:
        cache[hashing] = UserFeatures.from_table(Path(data_dir) / USERS, *hashing)
    return cache[hashing]


def encode_fans(side: Side, users: UserFeatures, fans: np.ndarray) -> np.ndarray:
    """[F, d] the fans' vectors from `side`'s own ONNX user tower, the inputs cut to what that
    version was exported for."""
    encoder = OnnxEncoder(side.folder / store.USER_TOWER)
    num_creators = int(side.manifest["model"]["towers"]["num_creators"])
    x = users.inputs(fans, num_creators)
    x["history"] = fit_history(x["history"], encoder.history_len)
    parts = [
        encoder.encode({k: v[s : s + ENCODE_CHUNK] for k, v in x.items()})
        for s in range(0, len(fans), ENCODE_CHUNK)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), np.float32)


def top_lists(side: Side, xq: np.ndarray, history: np.ndarray, k: int) -> np.ndarray:
    """[F, k] creator ids of each fan's exact top k by inner product without the creators of
    their history; MISSING where the catalog runs out."""
    order = np.argsort(side.creator_idx, kind="stable")
    at = np.searchsorted(side.creator_idx, history, sorter=order).clip(0, len(order) - 1)
    held = side.creator_idx[order[at]] == history
    banned = np.where(held & (history >= contract.FIRST_ID), order[at], -2)  # [F, H] rows
    depth = min(k + history.shape[1], len(side.xb))
    _, found = faiss.knn(np.ascontiguousarray(xq, np.float32), side.xb, depth,
                         faiss.METRIC_INNER_PRODUCT)  # fmt: skip
    keep = (found >= 0) & ~(found[:, :, None] == banned[:, None, :]).any(axis=2)
    ranked = np.take_along_axis(found, np.argsort(~keep, axis=1, kind="stable"), axis=1)
    kept = np.sort(keep, axis=1)[:, ::-1]  # True first, as `ranked`
    out = np.full((len(xq), k), MISSING, dtype=side.creator_id.dtype)
    width = min(k, depth)
    out[:, :width] = np.where(kept[:, :width], side.creator_id[ranked[:, :width]], MISSING)
    return out


def rank_correlation(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """[n] Kendall's τ_b of each pair of top-k lists over their union, a creator missing from a
    list ranked k + 1 in it (module docstring). 1 for two equal lists of one item, 0 for
    lists too short to hold a pair."""
    n = len(a)
    in_b = (a[:, :, None] == b[:, None, :]) & (a != MISSING)[:, :, None]  # [n, k, k]
    in_a = (b[:, :, None] == a[:, None, :]) & (b != MISSING)[:, :, None]
    valid = np.concatenate([a != MISSING, (b != MISSING) & ~in_a.any(axis=2)], axis=1)
    place = np.arange(1, k + 1, dtype=np.float64)
    rank_a = np.concatenate([np.broadcast_to(place, (n, k)), np.full((n, k), k + 1.0)], axis=1)
    rank_b = np.concatenate(
        [np.where(in_b.any(axis=2), in_b.argmax(axis=2) + 1.0, k + 1.0),
         np.broadcast_to(place, (n, k))], axis=1,
    )  # fmt: skip
    pairs = valid[:, :, None] & valid[:, None, :]
    sa = np.sign(rank_a[:, :, None] - rank_a[:, None, :]) * pairs
    sb = np.sign(rank_b[:, :, None] - rank_b[:, None, :]) * pairs
    den = np.sqrt(np.abs(sa).sum(axis=(1, 2)) * np.abs(sb).sum(axis=(1, 2)))
    equal = (a == b).all(axis=1) & (a != MISSING).any(axis=1)
    tau = np.divide((sa * sb).sum(axis=(1, 2)), den, out=np.zeros(n), where=den > 0)
    return np.where(den > 0, tau, equal.astype(np.float64))


def popularity(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The catalog's creator ids (sorted), their training interactions and mid-rank
    percentiles of them in (0, 1)."""
    t = pq.read_table(
        Path(data_dir) / CATALOG, columns=["creator_idx", "creator_id", "train_count"]
    )
    keep = t["creator_idx"].to_numpy() >= contract.FIRST_ID
    ids = np.asarray(t["creator_id"].to_pylist(), dtype=str)[keep]
    counts = t["train_count"].to_numpy().astype(np.float64)[keep]
    order = np.argsort(ids)
    percentile = (rankdata(counts) - 0.5) / max(len(counts), 1)
    return ids[order], counts[order], percentile[order]


def lookup(table: tuple, lists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train_count, percentile) of each listed creator; NaN where the catalog lacks it."""
    ids, counts, percentile = table
    at = np.searchsorted(ids, lists).clip(0, max(len(ids) - 1, 0))
    found = (ids[at] == lists) & (lists != MISSING) if len(ids) else np.zeros(lists.shape, bool)
    return np.where(found, counts[at], np.nan), np.where(found, percentile[at], np.nan)


def fan_figures(old: Side, new: Side, data_dir: Path, cfg, seed: int) -> tuple[dict, dict]:
    """List overlap, rank correlation and popularity shift over a seeded sample of fans."""
    if not (old.folder / store.USER_TOWER).exists() or "user_tower" not in old.manifest:
        log.warning("%s has no user tower: no list drift figures", old.name)
        return {"fans": 0, "lists_skipped": f"{old.name} has no {store.USER_TOWER}"}, {}
    cache: dict = {}
    users = users_of(new, data_dir, cache)
    fans = fan_sample(users, cfg.fans, seed)
    if not len(fans):
        return {"fans": 0, "lists_skipped": "no fan of the users table has training pairs"}, {}
    history = users.history[fans]
    a = top_lists(old, encode_fans(old, users_of(old, data_dir, cache), fans), history, cfg.k)
    b = top_lists(new, encode_fans(new, users, fans), history, cfg.k)
    overlap, tau = overlap_at_k(a, b, cfg.k), rank_correlation(a, b, cfg.k)
    figures, detail = popularity_figures(a, b, data_dir)
    figures = {
        "fans": len(fans),
        "list_overlap": float(overlap.mean()),
        "share_lists_changed": float((a != b).any(axis=1).mean()),
        "rank_correlation": float(tau.mean()),
        **figures,
    }
    return figures, {"list_overlap": overlap, "rank_correlation": tau, **detail}


def popularity_figures(a: np.ndarray, b: np.ndarray, data_dir: Path) -> tuple[dict, dict]:
    """Mean popularity percentile and training count of the creators in lists a (old) and b
    (new), and the shift; the counts themselves for the report."""
    table = popularity(data_dir)
    (count_a, pct_a), (count_b, pct_b) = lookup(table, a), lookup(table, b)
    figures = {
        "popularity_old": float(np.nanmean(pct_a)),
        "popularity_new": float(np.nanmean(pct_b)),
        "train_count_old": float(np.nanmean(count_a)),
        "train_count_new": float(np.nanmean(count_b)),
    }
    figures["popularity_shift"] = figures["popularity_new"] - figures["popularity_old"]
    detail = {
        "catalog_counts": table[1],
        "counts_old": count_a[~np.isnan(count_a)],
        "counts_new": count_b[~np.isnan(count_b)],
    }
    return figures, detail


# ---- the whole measurement, the verdict ------------------------------------------------------


def measure(old: Side, new: Side, data_dir: Path, cfg, seed: int) -> Drift:
    """Every figure of the module docstring, old → new; `cfg` is the index config's `drift`."""
    started = time.perf_counter()
    creators, creator_detail = creator_figures(old, new, cfg, seed)
    fans, fan_detail = fan_figures(old, new, Path(data_dir), cfg, seed)
    meta = {
        "old": {"version": old.name, "model_version": old.manifest["model"]["version"]},
        "new": {"version": new.name, "model_version": new.manifest["model"]["version"]},
        "k": cfg.k,
        "seed": seed,
        "data_dir": str(data_dir),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return Drift({**creators, **fans}, meta, {**creator_detail, **fan_detail})


def judge(drift: Drift, cfg) -> list[dict]:
    """Each configured threshold the figures break, with by how much; a threshold whose figure
    could not be measured is logged, not a breach."""
    breaches = []
    drift.limits = {name: getattr(cfg, name) for _, name, _ in THRESHOLDS}
    for figure, name, kind in THRESHOLDS:
        limit, value = getattr(cfg, name), drift.figures.get(figure)
        if limit is None:
            continue
        if value is None or not np.isfinite(value):
            log.warning("drift.%s is set but %s was not measured", name, figure)
            continue
        seen = abs(value) if kind == "abs" else value
        by = limit - seen if kind == "min" else seen - limit
        if by > 0:
            breaches.append(
                {"figure": figure, "value": value, "threshold": name, "limit": limit, "by": by}
            )
    drift.breaches = breaches
    return breaches


def describe_breach(b: dict) -> str:
    """One breach in words: `list_overlap 0.412 < min_list_overlap 0.5 (by 0.088)`."""
    sign = "<" if b["threshold"].startswith("min_") else ">"
    value = f"|{b['figure']}| {abs(b['value']):.4g}" if b["threshold"] == "max_popularity_shift" \
        else f"{b['figure']} {b['value']:.4g}"  # fmt: skip
    return f"{value} {sign} {b['threshold']} {b['limit']:.4g} (by {b['by']:.4g})"


def headline(f: dict, k: int) -> str:
    """The figures a summary line carries."""
    parts = [
        ("cosine shift", f.get("cosine_shift")),
        (f"neighbour overlap@{k}", f.get("neighbour_overlap")),
        (f"list overlap@{k}", f.get("list_overlap")),
        ("rank correlation", f.get("rank_correlation")),
        ("popularity shift", f.get("popularity_shift")),
        ("two-sample AUC", f.get("two_sample_auc")),
    ]
    return ", ".join(f"{name} {value:.3f}" for name, value in parts if value is not None)


def summary_line(entry: dict) -> str:
    """A version manifest's `drift` entry in words (the rebuild's summary, `index show`)."""
    if not entry.get("measured"):
        return f"no drift measured ({entry.get('reason', 'not asked')})"
    line = f"drift from {entry['against']}: {headline(entry['figures'], entry['k'])}"
    if entry["allowed"]:
        broken = "; ".join(describe_breach(b) for b in entry["breaches"])
        line += (
            f", published past {len(entry['breaches'])} threshold(s) with --allow_drift: {broken}"
        )
    return line
