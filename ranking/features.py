"""What the rank stage sees of a (fan, candidate creator) pair that one dot product cannot.

Every feature is computed from one window of pairs (`Window`): what the fans were known to follow
up to a moment, and the catalog. The ranker learns with the training pairs as the window and the
validation pairs as labels, and is measured with the same window and test labels, so a label never
feeds a feature of the fan it labels (issue 17: features from the training window, labels from the
validation window).

FEATURES, in column order:

- retrieval_score, retrieval_rank, retrieval_gap: the towers' score, log1p of the 0-based rank in
  the fan's candidate list, and the score less the list's best (scores of different fans are on
  different scales; the gap puts them on one);
- category_share: the share of the fan's creators that are in the candidate's category;
- tag_affinity: over the candidate's tags, the mean share of the fan's creators carrying the tag;
- text_similarity: cosine of the candidate's text vector with the mean of the fan's creators'
  unit text vectors (0 where the catalog has no text);
- cofollow: the mean, over the fan's creators, of the item-item cosine of their fans with the
  candidate's fans (ItemKNN's similarity, what "fans of X also follow Y" measures);
- popularity: log1p of the candidate's pairs in the window;
- age_days: log1p of the days from the candidate's created_at to the window's end (0 unknown);
- growth: the share of the candidate's pairs in the window's last `recent_days` (0 without times);
- fan_activity: log1p of the fan's pairs in the window;
- als_score: implicit ALS's score, the fan's factors folded in from the fan's creators
  (ranking.collab); 0 where the window has no ALS factors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from data import contract, tables
from data import manifest as data_manifest
from ranking.collab import Als

FEATURES = (
    "retrieval_score",
    "retrieval_rank",
    "retrieval_gap",
    "category_share",
    "tag_affinity",
    "text_similarity",
    "cofollow",
    "popularity",
    "age_days",
    "growth",
    "fan_activity",
    "als_score",
)
DAY_MS = 86_400_000


@dataclass
class Catalog:
    """The creators as the features read them, by creator index."""

    category: np.ndarray  # [C] int64; UNK (or any value < first_category) = none
    tags: sp.csr_matrix  # [C, T] binary
    text: np.ndarray | None  # [C, D] float32 or None
    created_ms: np.ndarray  # [C] int64 epoch ms, -1 unknown
    first_category: int = contract.FIRST_ID  # 0 pad, 1 unknown

    @classmethod
    def from_dataset(cls, data_dir: str | Path) -> Catalog:
        """A prepared dataset's creators as the towers read them, with their creation times."""
        data_dir = Path(data_dir)
        creators = tables.CreatorFeatures.from_dataset(data_dir)
        padded = creators.tags  # [C, T], 0 = padding
        rows, cols = np.nonzero(padded >= contract.FIRST_ID)
        width = int(padded.max(initial=0)) + 1
        tags = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, padded[rows, cols])),
                             (len(padded), width))  # fmt: skip
        t = pq.read_table(data_dir / tables.CREATORS, columns=["creator_idx", "created_at"])
        created = np.full(len(padded), -1, np.int64)
        at = t["created_at"].cast("int64").fill_null(-1).to_numpy()
        created[t["creator_idx"].to_numpy()] = at
        return cls(creators.category, tags, creators.text, created)


class Window:
    """The pairs features are computed from (a fan's creators, co-follows, popularity, growth)
    and the catalog they describe.

    Args:
        users, creators, ts: the window's (fan, creator, epoch ms) pairs; repeats count once.
        num_users: fans in the vocabulary (rows of the fan × creator matrix).
        catalog: the creators' category, tags, text and creation time.
        recent_days: what `growth` calls recent, counted back from the window's last pair.
        als: ALS's creator factors fit on the window's pairs (`als_score`); None = 0.
    """

    def __init__(self, users, creators, ts, num_users: int, catalog: Catalog, recent_days=30,
                 als: Als | None = None):  # fmt: skip
        num_creators = len(catalog.category)
        x = sp.csr_matrix(
            (np.ones(len(users), np.float32), (users, creators)), (num_users, num_creators)
        )
        x.sum_duplicates()
        x.data[:] = 1.0  # a pair followed twice is one pair
        self.x, self.catalog, self.als = x, catalog, als
        category = catalog.category  # [C, K] one-hot: a fan's creators per category in one product
        self.category_onehot = sp.csr_matrix(
            (np.ones(num_creators, np.float32), (np.arange(num_creators), category)),
            (num_creators, int(category.max()) + 1),
        )
        self.counts = np.asarray(x.sum(0)).ravel()  # [C] fans per creator
        self.fan_counts = np.asarray(x.sum(1)).ravel()  # [U] creators per fan
        # Y = X D^-1/2: Y_b X^T Y gives each fan's summed item-item cosines in two sparse products
        self.scale = (1.0 / np.sqrt(np.maximum(self.counts, 1.0))).astype(np.float32)[None, :]
        self.y = x.multiply(self.scale).tocsr()
        self.xt = x.T.tocsr()
        self.yt = self.y.T.tocsr()  # [C, U] each creator's fans, cosine-weighted
        self.end_ms = int(ts.max()) if len(ts) else 0
        self.growth = self._growth(creators, ts, recent_days, num_creators)
        known = catalog.created_ms >= 0
        days = np.where(known, (self.end_ms - catalog.created_ms) / DAY_MS, 0.0)
        self.age = np.log1p(np.maximum(days, 0.0)).astype(np.float32)
        text = catalog.text
        if text is not None:
            norms = np.linalg.norm(text, axis=1, keepdims=True)
            self.text = (text / np.maximum(norms, 1e-12)).astype(np.float32)
        else:
            self.text = None

    def _growth(self, creators, ts, recent_days: float, num_creators: int) -> np.ndarray:
        if len(ts) == 0 or int(ts.min()) == self.end_ms:  # no times: nothing is recent
            return np.zeros(num_creators, np.float32)
        recent = creators[ts > self.end_ms - recent_days * DAY_MS]
        fresh = np.bincount(recent, minlength=num_creators)
        total = np.bincount(creators, minlength=num_creators)
        return (fresh / np.maximum(total, 1)).astype(np.float32)

    @classmethod
    def from_dataset(
        cls, data_dir: str | Path, catalog: Catalog | None = None, splits=(tables.TRAIN,), **kw
    ) -> Window:
        """The pairs of a prepared dataset's `splits` as the window: the training pairs while
        validation is the labels; training and validation while test is (what is known before
        the labels, never the labels)."""
        data_dir = Path(data_dir)
        num_users = int(data_manifest.load(data_dir)["vocab"]["users"]["size"])
        columns = ["user_idx", "creator_idx", "ts"]
        t = pa.concat_tables([pq.read_table(data_dir / s, columns=columns) for s in splits])
        users, creators, ts = (t[c].to_numpy().astype(np.int64) for c in columns)
        return cls(users, creators, ts, num_users, catalog or Catalog.from_dataset(data_dir), **kw)


def features(w: Window, users, candidates: np.ndarray, scores: np.ndarray, history=None):
    """[B, N, len(FEATURES)] float32 for fans `users` [B] and their candidates [B, N] (creator
    indices, best first) with the retrieval scores [B, N].

    `history` [B, C] (0/1, sparse): each fan's creators as the caller knows them, in place of
    the window's rows for `users` (the service passes what its feature store says each fan
    follows, which is the window's row when the store was materialised from the same pairs)."""
    b, n = candidates.shape
    history = w.x[users] if history is None else sp.csr_matrix(history, dtype=np.float32)
    counts = np.asarray(history.sum(1)).ravel()  # [B] creators per fan
    sizes = np.maximum(counts, 1.0)[:, None]  # [B, 1]
    out = np.zeros((b, n, len(FEATURES)), np.float32)
    columns = {
        "retrieval_score": scores,
        "retrieval_rank": np.log1p(np.arange(n))[None, :],
        "retrieval_gap": scores - scores.max(1, keepdims=True),
        "category_share": _category_share(w, history, candidates) / sizes,
        "tag_affinity": _tag_affinity(w, history, candidates, sizes),
        "text_similarity": _text_similarity(w, history, candidates),
        "cofollow": _cofollow(w, history.multiply(w.scale).tocsr(), candidates) / sizes,
        "popularity": np.log1p(w.counts[candidates]),
        "age_days": w.age[candidates],
        "growth": w.growth[candidates],
        "fan_activity": np.log1p(counts)[:, None],
        "als_score": 0.0 if w.als is None else w.als.score(history, candidates),
    }
    for i, name in enumerate(FEATURES):
        out[..., i] = columns[name]
    return out


def _cofollow(w: Window, y_fans: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
    """Summed cosine of each candidate's fans with the fan's creators' fans: (Y_b X^T) Y, only
    at the candidates' columns (a block of fans against every creator would touch each
    co-follower's whole list; the candidates' fan lists are all that is needed)."""
    cofans = (y_fans @ w.xt).tocsr()  # [B, U] the fan's creators' fans, cosine-weighted
    b, n = candidates.shape
    out = np.empty((b, n), np.float32)
    for i in range(b):  # one fan's N candidates against its co-followers, sparse
        out[i] = np.asarray((w.yt[candidates[i]] @ cofans[i].T).todense()).ravel()
    return out


def _gather(block: sp.spmatrix, candidates: np.ndarray) -> np.ndarray:
    """block[i, candidates[i, j]] as a dense [B, N] array, without densifying the block."""
    rows = np.repeat(np.arange(candidates.shape[0]), candidates.shape[1])
    return np.asarray(block.tocsr()[rows, candidates.ravel()]).reshape(candidates.shape)


def _category_share(w: Window, history: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
    """Count of the fan's creators in each candidate's category (none: 0)."""
    category = w.catalog.category
    counts = _gather(history @ w.category_onehot, category[candidates])
    return np.where(category[candidates] >= w.catalog.first_category, counts, 0.0)


def _tag_affinity(w: Window, history, candidates: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Mean over each candidate's tags of the share of the fan's creators with that tag."""
    tags = w.catalog.tags
    share = (history @ tags).toarray() / sizes  # [B, T]
    cand_tags = tags[candidates.ravel()]  # [B·N, T], a row per pair
    per = np.diff(cand_tags.indptr)  # tags per pair
    pair = np.repeat(np.arange(len(per)), per)  # the pair of each stored tag
    fan = pair // candidates.shape[1]
    summed = np.bincount(pair, share[fan, cand_tags.indices], minlength=len(per))
    return (summed / np.maximum(per, 1)).reshape(candidates.shape)


def _text_similarity(w: Window, history, candidates: np.ndarray) -> np.ndarray:
    if w.text is None:
        return np.zeros(candidates.shape, np.float32)
    mean = np.asarray(history @ w.text)  # [B, D]
    mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    return np.einsum("bd,bnd->bn", mean, w.text[candidates])
