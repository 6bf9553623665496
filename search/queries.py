"""Labelled query sets for creator search (issue 16), built from data, deterministic by seed.

    catalog = Catalog.of_version(store.versions_dir(root) / store.current_version(root))
    nav = navigational(catalog, n=1000, seed=0)         # noisy names → that creator
    top = topical(catalog, seed=0)                      # Last.fm held-out tags → their artists
    fan = personal(catalog, n=1000, seed=0)             # a fan's held-out creator, by a topic
    validation, test = nav.split(seed=0)

Each set holds query texts, the relevant faiss rows of each query and, for the personal set, the
fan and the rows never to return (the fan's training creators). They are kept honest:

- navigational: a sampled creator's name with one kind of noise a fan makes (`noisy`); every
  creator with exactly that name is relevant (names repeat in large catalogs);
- topical: the tag assignments of Last.fm users on the held-out side of the tag hold-out
  (data.sources.public.tag_held_out, the one definition; `tag_holdout` in the data config).
  The catalog's tags, category and description come from the other side only, so no held-out
  assignment is in the indexed text; a query is a held-out tag given to at least `min_support`
  indexed artists, relevant: the artists held-out users gave it;
- personal: a fan's creator from the test pairs (never a training pair), queried by its
  category or one of its tags; relevant: the fan's test creators that carry that topic.

Sets are split into validation and test halves by query (seeded): fusion constants are chosen on
the first, figures reported on the second.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from data import manifest as data_manifest
from data import tables
from data.sources.public import LastFmSource
from index import projection
from index import store as index_store

BY_AUDIENCE = "navigational_by_audience"
"""The navigational set with targets drawn as fans look creators up: in proportion to audience."""
PRIMARY = {"navigational": "mrr@10", BY_AUDIENCE: "mrr@10", "topical": "ndcg@10",
           "personal": "mrr@10"}  # fmt: skip
"""Each set's metric that fusion constants are chosen by."""
METRICS = {
    "navigational": ("mrr@10", "hit_rate@1"),
    BY_AUDIENCE: ("mrr@10", "hit_rate@1"),
    "topical": ("ndcg@10", "recall@100"),
    "personal": ("mrr@10", "hit_rate@10"),
}


@dataclass
class Catalog:
    """A version's creators by faiss row, with what queries are made of."""

    data_dir: Path
    creator_idx: np.ndarray  # [N] int64, faiss row → vocabulary index
    creator_id: np.ndarray  # [N] str
    name: np.ndarray  # [N] object: str ("" when missing)
    category: np.ndarray  # [N] object: str
    tags: np.ndarray  # [N] object: list[str]

    @classmethod
    def of_version(cls, folder: Path) -> Catalog:
        """The catalog of a published version folder, read from the dataset it was built from."""
        folder = Path(folder)
        manifest = json.loads((folder / index_store.MANIFEST).read_text())
        data_dir = Path(manifest["catalog"]["data_dir"])
        ids = pq.read_table(folder / index_store.CREATORS, columns=["creator_idx", "creator_id"])
        idx = ids["creator_idx"].to_numpy().astype(np.int64)
        cols = projection.catalog_columns(data_dir, idx, {"name": "", "category": "", "tags": []})
        creator_id = np.asarray(ids["creator_id"].to_pylist(), dtype=object)
        return cls(data_dir, idx, creator_id, cols["name"], cols["category"], cols["tags"])

    def rows(self, creator_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Faiss rows of vocabulary indices, and which the version holds (creator_idx ascends)."""
        want = np.asarray(creator_idx, np.int64)
        pos = np.minimum(np.searchsorted(self.creator_idx, want), len(self.creator_idx) - 1)
        return pos.astype(np.int64), self.creator_idx[pos] == want


@dataclass
class QuerySet:
    """Queries with their relevant rows; for personal queries the fan and the rows excluded."""

    kind: str
    ids: list[str]
    text: list[str]
    relevant: list[list[int]]
    fans: list[str | None] = field(default_factory=list)
    exclude: list[list[int]] = field(default_factory=list)

    def __post_init__(self):
        self.fans = self.fans or [None] * len(self.ids)
        self.exclude = self.exclude or [[] for _ in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, which: np.ndarray) -> QuerySet:
        which = [int(i) for i in which]
        pick = lambda xs: [xs[i] for i in which]  # noqa: E731
        return replace(self, ids=pick(self.ids), text=pick(self.text),
                       relevant=pick(self.relevant), fans=pick(self.fans),
                       exclude=pick(self.exclude))  # fmt: skip

    def split(self, seed: int = 0, validation: float = 0.5) -> tuple[QuerySet, QuerySet]:
        """(validation, test): disjoint halves by query, the same for the same seed."""
        order = np.random.default_rng([seed, 16]).permutation(len(self))
        cut = round(validation * len(self))
        return self.take(np.sort(order[:cut])), self.take(np.sort(order[cut:]))


# --- navigational: names with the noise a fan makes ---


def typo(word: str, rng: np.random.Generator) -> str:
    """One slip of the finger: a letter dropped, two neighbours swapped or one replaced by x
    (the first letter is never dropped or replaced)."""
    j = int(rng.integers(1, max(len(word) - 1, 2)))
    return [word[:j] + word[j + 1 :], word[: j - 1] + word[j] + word[j - 1] + word[j + 1 :],
            word[:j] + "x" + word[j + 1 :]][rng.integers(3)]  # fmt: skip


def case_accents(name: str) -> str:
    """Upper case, with accents a phone keyboard adds (É, Á)."""
    return "".join({"E": "É", "A": "Á"}.get(c, c) for c in name.upper())


def noisy(name: str, rng: np.random.Generator) -> str:
    """One of the navigational set's kinds of noise, chosen at random: a typo in the longest
    word, a dropped word, a prefix (the last word cut to 3 letters), or case and accents."""
    words = name.split()
    kind = rng.integers(4)
    if kind == 0:
        i = int(np.argmax([len(w) for w in words]))
        words[i] = typo(words[i], rng)
    elif kind == 1 and len(words) > 1:
        words.pop(int(rng.integers(len(words))))
    elif kind == 2:
        words = [*words[:-1], words[-1][:3]] if len(words) > 1 else words
    else:
        return case_accents(name)
    return " ".join(words)


def navigational(
    catalog: Catalog, n: int = 1000, seed: int = 0, weights: np.ndarray | None = None
) -> QuerySet:
    """n sampled creators' noisy names; relevant: every creator with exactly that name.
    Targets are drawn uniformly, or in proportion to `weights` ([N] by faiss row, e.g.
    `audience(catalog) + 1`: a fan looks a creator up about as often as fans follow it)."""
    named = np.flatnonzero([bool(x and x.strip()) for x in catalog.name])
    rng = np.random.default_rng([seed, 1])
    p = None if weights is None else np.asarray(weights, np.float64)[named]
    n = min(n, len(named) if p is None else int((p > 0).sum()))
    picked = np.sort(rng.choice(named, n, replace=False, p=None if p is None else p / p.sum()))
    wanted = {catalog.name[r] for r in picked}
    by_name: dict[str, list[int]] = {}
    for r in named.tolist():
        if catalog.name[r] in wanted:
            by_name.setdefault(catalog.name[r], []).append(r)
    text = [noisy(catalog.name[r], rng) for r in picked]
    relevant = [by_name[catalog.name[r]] for r in picked]
    kind = "navigational" if weights is None else BY_AUDIENCE
    return QuerySet(kind, [f"nav-{r}" for r in picked], text, relevant)


def audience(catalog: Catalog) -> np.ndarray:
    """[N] each creator's training pairs (its fans before test), by faiss row."""
    return np.bincount(_pairs(catalog, tables.TRAIN)[:, 1], minlength=len(catalog.creator_idx))


# --- topical: Last.fm tags held out of the catalog ---


def topical(catalog: Catalog, min_support: int = 3, n: int | None = None, seed: int = 0):
    """The held-out tags given to at least `min_support` of the version's artists (all, or n of
    them sampled); relevant: the artists held-out users gave the tag."""
    source = holdout_source(catalog.data_dir)
    assigned, names = source.tag_assignments(held_out=True)
    row_of = {str(c): r for r, c in enumerate(catalog.creator_id)}
    by_tag: dict[str, set[int]] = {}
    for _, artist, tag in assigned:
        if artist in row_of and names.get(tag):
            by_tag.setdefault(names[tag], set()).add(row_of[artist])
    kept = sorted(t for t, rows in by_tag.items() if len(rows) >= min_support)
    if n is not None and n < len(kept):
        rng = np.random.default_rng([seed, 2])
        kept = [kept[i] for i in np.sort(rng.choice(len(kept), n, replace=False))]
    return QuerySet("topical", [f"tag-{i}" for i in range(len(kept))], kept,
                    [sorted(by_tag[t]) for t in kept])  # fmt: skip


def holdout_source(data_dir: Path) -> LastFmSource:
    """The Last.fm source a dataset was prepared from, with its tag hold-out; a ValueError for
    a dataset without one (its held-out tags would be in the indexed text)."""
    spec = dict(data_manifest.load(data_dir)["config"]["source"])
    if spec.get("kind") != "lastfm" or not spec.get("tag_holdout"):
        raise ValueError(
            f"{data_dir} was not prepared from Last.fm with a tag hold-out (source: {spec}); "
            f"topical queries need one: prepare configs/data/lastfm_search.yaml"
        )
    return LastFmSource(spec["path"], tag_holdout=float(spec["tag_holdout"]))


# --- personal: a fan's held-out creator, queried by its topic ---


def personal(catalog: Catalog, n: int = 1000, seed: int = 0) -> QuerySet:
    """n fans, each with one of their test creators (never a training pair) queried by its
    category or one of its tags; relevant: the fan's test creators carrying that topic;
    excluded: the fan's training creators (what they follow already)."""
    test = _pairs(catalog, tables.TEST)
    train = _pairs(catalog, tables.TRAIN)
    test = test[~np.isin(_key(test), _key(train))]  # a pair trained on is never a query
    test = test[[bool(_topics(catalog, r)) for r in test[:, 1]]]
    rng = np.random.default_rng([seed, 3])
    fans = np.unique(test[:, 0])
    fans = np.sort(rng.choice(fans, min(n, len(fans)), replace=False))
    ids = _user_ids(catalog.data_dir)
    out = QuerySet("personal", [], [], [])
    for fan in fans.tolist():
        mine = test[test[:, 0] == fan, 1]
        target = int(mine[rng.integers(len(mine))])
        topics = _topics(catalog, target)
        topic = topics[int(rng.integers(len(topics)))]
        out.ids.append(f"fan-{fan}-{target}")
        out.text.append(topic)
        out.relevant.append(sorted({int(r) for r in mine if topic in _topics(catalog, r)}))
        out.fans.append(ids[fan])
        out.exclude.append(sorted(set(train[train[:, 0] == fan, 1].tolist())))
    return out


def _pairs(catalog: Catalog, table: str) -> np.ndarray:
    """[n, 2] (user_idx, faiss row) of a split's pairs whose creator the version holds."""
    t = pq.read_table(catalog.data_dir / table, columns=["user_idx", "creator_idx"])
    rows, hit = catalog.rows(t["creator_idx"].to_numpy())
    users = t["user_idx"].to_numpy().astype(np.int64)
    return np.stack([users[hit], rows[hit]], axis=1)


def _key(pairs: np.ndarray) -> np.ndarray:
    return pairs[:, 0] * (1 << 32) + pairs[:, 1]


def _topics(catalog: Catalog, row: int) -> list[str]:
    """A creator's category and tags, each once, in that order."""
    return list(dict.fromkeys(t for t in [catalog.category[row], *catalog.tags[row]] if t))


def _user_ids(data_dir: Path) -> dict[int, str]:
    users = pq.read_table(Path(data_dir) / tables.USERS, columns=["user_idx", "user_id"])
    return dict(zip(users["user_idx"].to_pylist(), users["user_id"].to_pylist(), strict=True))
