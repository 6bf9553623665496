"""Published versions beside the served one, for comparisons (the relevance explorer's "compare
two versions"): any version of the index store, loaded on demand with its own user tower run
in-process, answered through the recommender's stages with an encode stage of its own. The
served version's Triton and breakers are never touched by a comparison.

A loaded 1 M-creator version holds a few hundred MB (index, id map), so at most `keep` stay
loaded, the least recently asked for going first.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from common.errors import MissingInputError
from data import tables
from index import projection
from index import store as index_store
from serving.pipeline.bundle import Bundle, load_bundle
from serving.pipeline.stages import Encode, Pipeline
from serving.pipeline.towers import InProcessTowers


class Versions:
    def __init__(self, root: Path, features, verify: bool = True, keep: int = 2):
        self.root, self.features, self.verify, self.keep = Path(root), features, verify, keep
        self._loaded: OrderedDict[str, Bundle] = OrderedDict()
        self._lock = threading.Lock()

    def published(self) -> list[dict]:
        """Every version in the store, oldest first: name, model, when, measured recall."""
        out = []
        for version in index_store.list_versions(self.root):
            m = index_store.read_manifest(self.root, version)
            chosen = m.get("tuning", {}).get("chosen", {})
            out.append({
                "index_version": version, "model_version": m["model"]["version"],
                "count": m.get("count"), "recall": chosen.get("recall"),
                "params": chosen.get("params"), "has_map": bool(m.get("map")),
            })  # fmt: skip
        return out

    def get(self, version: str) -> Bundle:
        """A published version's bundle (loaded once, kept while among the `keep` newest
        asked for); MissingInputError naming the published ones when it is not there."""
        with self._lock:
            if version in self._loaded:
                self._loaded.move_to_end(version)
                return self._loaded[version]
            names = index_store.list_versions(self.root)
            if version not in names:
                raise MissingInputError(f"index version {version!r} is not published; have {names}")
            bundle = load_bundle(self.root, version, InProcessTowers(), self.verify, self.features)
            self._loaded[version] = bundle
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)
            return bundle


def with_own_encoder(base: Pipeline) -> Pipeline:
    """`base`'s stages with an encode stage (and breaker) of its own: a version compared runs
    its tower in-process, whatever the served tower's breaker says."""
    return Pipeline([Encode() if isinstance(s, Encode) else s for s in base.stages])


@functools.lru_cache(maxsize=8)
def sample_fans(data_dir: Path, n: int, seed: int = 0) -> tuple[str, ...]:
    """n fans with training history from a prepared dataset, seeded (the same fans each time);
    kept once drawn (a prepared dataset is never rewritten in place; 1 M fans' table: ~0.3 s)."""
    t = pq.read_table(Path(data_dir) / tables.USERS, columns=["user_id", "train_count"])
    ids = np.asarray(t["user_id"].to_pylist())[t["train_count"].to_numpy() > 0]
    rng = np.random.default_rng(seed)
    return tuple(sorted(rng.choice(ids, min(n, len(ids)), replace=False).tolist()))


def overlap(a: Sequence[str], b: Sequence[str], k: int) -> float:
    """|top-k of a ∩ top-k of b| / k."""
    return len(set(a[:k]) & set(b[:k])) / k if k else 0.0


class Audience:
    """Who a version recommends each creator to, over a fixed sample of fans: their top-k
    answered once per (version, k, sample), then any creator's audience is a lookup. A fan's
    kind is the category mix of their history."""

    def __init__(self, fans, answers, histories: list[np.ndarray], categories, degraded=0):
        self.fans = fans
        self.degraded = degraded
        """Fans a fallback answered or whose history the store did not give (a dependency
        failed): what the sample says is then not the model's."""
        self.recipients: dict[str, list[int]] = {}
        for i, answer in enumerate(answers):
            for c in answer.creator_ids:
                self.recipients.setdefault(c, []).append(i)
        self.mix = np.stack([_mix(h, categories) for h in histories]) if fans else None
        self.categories = categories
        self._exposure: dict | None = None

    def of(self, creator_id: str) -> tuple[int, dict[str, float]]:
        """How many sampled fans get the creator, and their mean category mix."""
        who = self.recipients.get(creator_id, [])
        if not who:
            return 0, {}
        return len(who), dict(zip(self.categories[1], self.mix[who].mean(axis=0), strict=True))

    def overall(self) -> dict[str, float]:
        return dict(zip(self.categories[1], self.mix.mean(axis=0), strict=True))

    def exposure(self, row_of: dict[str, int], popularity: np.ndarray) -> dict:
        """What the sample's lists cover of the catalog and how popular it is: distinct
        creators, and the share of list slots against the share of catalog creators in each
        popularity band (training interactions 0, 1, 2–3, 4–7, …). Worked out once (~25 ms
        over a 1 M catalog): a sample belongs to one version."""
        if self._exposure is None:
            self._exposure = self._work_out_exposure(row_of, popularity)
        return self._exposure

    def _work_out_exposure(self, row_of: dict[str, int], popularity: np.ndarray) -> dict:
        rows = np.asarray([row_of[c] for c in self.recipients], np.int64)
        slots = np.asarray([len(v) for v in self.recipients.values()], np.float64)
        band_all = projection.popularity_band(popularity)
        band_rec = projection.popularity_band(popularity[rows])
        bands = int(band_all.max(initial=0)) + 1
        catalog = np.bincount(band_all, minlength=bands) / max(len(popularity), 1)
        recommended = np.bincount(band_rec, weights=slots, minlength=bands) / max(slots.sum(), 1)
        top = np.argsort(-popularity, kind="stable")[: max(len(popularity) // 100, 1)]
        return {
            "fans": len(self.fans), "degraded": self.degraded, "distinct": len(rows),
            "catalog": len(popularity),
            "coverage": len(rows) / max(len(popularity), 1), "slots": int(slots.sum()),
            "top_1pct_share": float(slots[np.isin(rows, top)].sum() / max(slots.sum(), 1)),
            "mean_popularity": float((popularity[rows] * slots).sum() / max(slots.sum(), 1)),
            "catalog_mean_popularity": float(popularity.mean()) if len(popularity) else 0.0,
            "bands": [{"label": _band_label(b), "catalog_share": float(catalog[b]),
                       "recommended_share": float(recommended[b])} for b in range(bands)],
        }  # fmt: skip


def _band_label(band: int) -> str:
    if band <= 1:
        return str(band)
    lo = 2 ** (band - 1)
    return f"{lo}–{2 * lo - 1}"


def _mix(rows: np.ndarray, categories) -> np.ndarray:
    """Shares of each category in a fan's history (faiss rows)."""
    codes, names = categories
    out = np.zeros(len(names))
    if len(rows):
        np.add.at(out, codes[rows], 1.0)
        out /= len(rows)
    return out
