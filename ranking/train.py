"""`python -m ranking train`: the rank stage's model for a published index version.

The candidates are what the service would retrieve for each fan with validation pairs: the
version's ONNX user tower on the fan's features, its creator embeddings searched exactly, the
fan's training creators left out (the service bans what a fan follows). Features come from the
training window (ranking.features; ALS's creator factors for `als_score` are fit on the same
training pairs and saved with the ranker), labels from the validation window, so a label never
feeds a feature of its fan; test is never read. ranking.ranker chooses the setting, the trees and
whether to rank at all on held-out validation fans, and the graph it exports is saved with its
manifest beside the version's name in the ranking store (ranking.store).
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from common.artifacts import provenance
from common.errors import MissingInputError
from data import tables
from index import store as index_store
from index.onnx import OnnxEncoder
from ranking import ranker, store
from ranking.collab import Als
from ranking.config import RankingConfig
from ranking.features import FEATURES, Window, features

log = logging.getLogger(__name__)

BLOCK = 128
"""Fans scored against every creator at once ([BLOCK, creators] floats)."""


def pairs_of(data_dir: Path, table: str) -> tuple[np.ndarray, np.ndarray]:
    t = pq.read_table(data_dir / table, columns=["user_idx", "creator_idx"])
    return t["user_idx"].to_numpy().astype(np.int64), t["creator_idx"].to_numpy().astype(np.int64)


def by_fan(users: np.ndarray, creators: np.ndarray, num_users: int) -> list[np.ndarray]:
    """Each fan's creators (ascending, once each)."""
    order = np.lexsort((creators, users))
    starts = np.searchsorted(users[order], np.arange(num_users + 1))
    return [np.unique(creators[order[a:b]]) for a, b in itertools.pairwise(starts)]


class Retriever:
    """The version's towers as the service runs them: ONNX user tower, creator embeddings."""

    def __init__(self, index: index_store.CreatorIndex, data_dir: Path):
        m = index.manifest
        tower = m["user_tower"]  # how the tower hashes attributes, as the feature store does
        self.encoder = OnnxEncoder(index.folder / index_store.USER_TOWER)
        self.users = tables.UserFeatures.from_table(
            data_dir / tables.USERS, tower["attribute_buckets"], tower["attribute_width"]
        )
        self.num_creators = int(m["model"]["towers"]["num_creators"])
        self.embeddings = np.load(index.folder / index_store.EMBEDDINGS, allow_pickle=False)
        self.creator_idx = index.creator_idx

    def rows(self, creator_idx: np.ndarray) -> np.ndarray:
        """The embedding rows of creator indices the version holds (creator_idx ascends)."""
        pos = np.minimum(np.searchsorted(self.creator_idx, creator_idx), len(self.creator_idx) - 1)
        return pos[self.creator_idx[pos] == creator_idx]

    def top(self, fans: np.ndarray, followed: list[np.ndarray], n: int):
        """Creator indices [B, n] and scores [B, n], best first, each fan's followed left out."""
        inputs = self.users.inputs(fans, self.num_creators)
        queries = self.encoder.encode({k: inputs[k] for k in self.encoder.inputs})
        scores = queries @ self.embeddings.T  # [B, rows]
        for i, seen in enumerate(followed):
            scores[i, self.rows(seen)] = -np.inf
        top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, 1)
        return self.creator_idx[top], np.take_along_axis(scores, top, 1).astype(np.float32)


def examples(cfg: RankingConfig, index, data_dir: Path, window: Window):
    """Features [F, N, len(FEATURES)] and labels [F, N] of the validation fans' candidates."""
    num_users = window.x.shape[0]
    train = by_fan(*pairs_of(data_dir, tables.TRAIN), num_users)
    validation = by_fan(*pairs_of(data_dir, tables.VALIDATION), num_users)
    fans = np.flatnonzero([len(v) > 0 for v in validation])
    if cfg.fit_fans and cfg.fit_fans < len(fans):
        rng = np.random.default_rng(cfg.seed)
        fans = np.sort(rng.choice(fans, cfg.fit_fans, replace=False))
    retriever = Retriever(index, data_dir)
    xs, ys, started = [], [], time.perf_counter()
    for s in range(0, len(fans), BLOCK):
        block = fans[s : s + BLOCK]
        found, scores = retriever.top(block, [train[u] for u in block], cfg.candidates)
        xs.append(features(window, block, found, scores))
        truth = [validation[u] for u in block]
        ys.append(np.stack([np.isin(row, t) for row, t in zip(found, truth, strict=True)]))
        if s // BLOCK % 20 == 0:
            log.info("candidates: %d / %d fans (%.0f s)", s + len(block), len(fans),
                     time.perf_counter() - started)  # fmt: skip
    return np.concatenate(xs), np.concatenate(ys), len(fans)


def fit_als(x, cfg: RankingConfig) -> Als | None:
    """ALS's creator factors for the `als_score` feature, fit on the window's pairs `x`
    [fans, creators] with the configured settings; None when `als_factors` is 0."""
    if cfg.als_factors == 0:
        return None
    from training.peers import als_model

    started = time.perf_counter()
    model = als_model(x, cfg.als_factors, cfg.als_regularization, cfg.als_alpha,
                      cfg.als_iterations, cfg.seed)  # fmt: skip
    log.info("ALS (%d factors) on %d pairs in %.1f s", cfg.als_factors, x.nnz,
             time.perf_counter() - started)  # fmt: skip
    items = np.ascontiguousarray(model.item_factors, np.float32)
    return Als(items, cfg.als_regularization, cfg.als_alpha)


def run(cfg: RankingConfig) -> dict:
    """Train, export and save the ranker of the configured index version; its manifest."""
    index = index_store.load(Path(cfg.index), version=cfg.version)
    data_dir = _validation_data_dir(index)
    started = time.perf_counter()
    window = Window.from_dataset(data_dir, recent_days=cfg.recent_days)
    window.als = fit_als(window.x, cfg)
    x, y, fans = examples(cfg, index, data_dir, window)
    log.info("%d validation fans, %.1f%% with a validation creator in the top %d", fans,
             100 * y.any(1).mean(), cfg.candidates)  # fmt: skip
    fitted = ranker.fit(x, y, cfg.seed, log=log.info)
    model = ranker.passthrough() if fitted.booster is None else ranker.to_onnx(fitted.booster)
    manifest = _manifest(cfg, index, data_dir, window, fans, fitted, started)
    trees = None if fitted.booster is None else fitted.booster.model_to_string()
    folder = store.save(cfg.store, index.version, model, manifest, trees, window.als)
    log.info("ranker for %s (%s) in %s", index.version, fitted.info["chosen"], folder)
    return {**manifest, "folder": str(folder)}


def _validation_data_dir(index) -> Path:
    """The version's dataset folder, refused up front when it has no validation pairs (the
    labels), before any feature or ALS work is spent on it."""
    data_dir = Path(index.manifest["catalog"]["data_dir"])
    if not (data_dir / tables.VALIDATION).exists():
        raise MissingInputError(
            f"{data_dir} has no {tables.VALIDATION}: the ranker learns from validation pairs; "
            f"prepare the dataset with split.validation_fraction > 0"
        )
    return data_dir


def _manifest(cfg: RankingConfig, index, data_dir: Path, window: Window, fans: int,
              fitted: ranker.Fitted, started: float) -> dict:  # fmt: skip
    """What the saved ranker was made from and what validation chose; `seconds` runs from
    `started` to now, so it covers the examples, the fit and the export."""
    return {
        "index_version": index.version,
        "model_version": index.manifest["model"]["version"],
        "data_dir": str(data_dir),
        "features": list(FEATURES),
        "candidates": cfg.candidates,
        "recent_days": cfg.recent_days,
        "validation_fans": fans,
        "chosen": fitted.info,
        "seconds": round(time.perf_counter() - started, 1),
        "als": {"iterations": cfg.als_iterations, "seed": cfg.seed} if window.als else None,
        "created_by": provenance("lightgbm", "onnxmltools", "onnx", "onnxruntime", "implicit"),
    }
