"""Creator search over one version: the retrievers' candidates fused into one list.

    engine = Engine(lexical, semantic, embeddings)        # a version's retrievers
    hits, used = engine.search("watercolor comics", k=10, user_vector=u, settings=settings)

Each retriever gives up to `candidates` creators for the query: lexical (BM25), semantic (the
query's sentence vector against the creators' text vectors), and, when a fan is given,
personal: the user tower's score (the fan's vector · the creator's, the recommendation score)
of every candidate the others found, ranked. Beside them a prior, popularity: the text
retrievers' candidates ordered by their audience (training pairs), so that of two creators the
query fits alike ("clara" → two Claras) the one more fans follow comes first, as fans' name
searches do. The lists are fused (search.fusion) as `settings` say (the prior takes part only
where they weight it); every hit carries its rank in each list that took part, so a reader sees
why it stands there.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from search import fusion
from search.lexical import GRAMS
from search.topics import READINGS

RETRIEVERS = ("lexical", "semantic", "personal")
PRIOR = "popularity"
LISTS = (*RETRIEVERS, PRIOR)
"""What `SearchSettings.weights` may weight: the retrievers and the prior."""
TEXT = ("lexical", "semantic")
"""The retrievers whose candidates the prior orders: those the query's text found (the
personal list is the fan's, and a list asked without the fan must not hold it)."""


@dataclass
class SearchSettings:
    """How creator search fuses its retrievers (serving config `search`)."""

    method: str = "rrf"
    """rrf: reciprocal-rank fusion; weighted: min-max-normalised scores, weighted."""
    c: float = 60.0
    """rrf's constant: a larger c flattens the difference between ranks."""
    weights: dict[str, float] = field(
        default_factory=lambda: {"lexical": 1.0, "semantic": 1.0, "personal": 1.0}
    )
    """Each list's weight (LISTS); the popularity prior takes part only where weighted > 0."""
    candidates: int = 100
    """Creators each retriever proposes before fusion."""
    near: int = 1000
    """The fan's nearest creators (the recommendation index) in which the personal retriever
    also looks for the query's words (name, category, tags: search.topics); 0: it only ranks
    the other retrievers' candidates."""
    grams: str = "every"
    """Whose name trigrams the lexical retriever asks for: every query word's, or only those
    of words no creator's name holds ("unknown": faster on large catalogs; search.lexical)."""
    reading: str = "words"
    """How a query is told to read as a name (the `names` route), search.topics.READINGS:
    words (it has a word only names use), slips (or it is a creator's whole name, or has a
    word nobody's text holds one slip from a names' word) or fit (or it has a word nobody's
    text holds and the lexical retriever's first creator's name fits every word of it);
    Topics.reads_as_name."""

    names: dict | None = None
    """The fusion for a query that reads as a creator's name ({method, c, weights}, each
    optional): one using a word only names use (search.topics). None: the fusion above
    answers every query."""
    fans: dict | None = None
    """The fusion for any other query when a fan asks it (the personal retriever takes part):
    which of a topic's creators this fan loves is the personal retriever's to say, where a
    topic asked without a fan leans on the text retrievers. None: the fusion above."""

    def for_query(self, name_like: bool, with_fan: bool = False) -> SearchSettings:
        """The settings that fuse a query that does (or does not) read as a name, asked with
        (or without) a fan."""
        route = {"name": self.names, "fan topic": self.fans}.get(self.route(name_like, with_fan))
        return replace(self, **route, names=None, fans=None) if route else self

    @staticmethod
    def route(name_like: bool, with_fan: bool) -> str:
        """The name of the fusion `for_query` picks: name, fan topic or topic."""
        return "name" if name_like else "fan topic" if with_fan else "topic"

    def __post_init__(self):
        for key, route in (("names", self.names), ("fans", self.fans)):
            unknown = sorted(set(route or ()) - {"method", "c", "weights"})
            if unknown:
                raise ValueError(f"search.{key} has {unknown}: it takes method, c, weights")
        if self.names is not None or self.fans is not None:
            self.for_query(True), self.for_query(False, True)  # each route's values checked
        if self.method not in ("rrf", "weighted"):
            raise ValueError(f"search.method={self.method!r}: use rrf or weighted")
        unknown = sorted(set(self.weights) - set(LISTS))
        if unknown:
            raise ValueError(f"search.weights names {unknown}: the lists are {LISTS}")
        if self.candidates < 1:
            raise ValueError(f"search.candidates={self.candidates}: use at least 1")
        if self.near < 0:
            raise ValueError(f"search.near={self.near}: use 0 (off) or more")
        if self.grams not in GRAMS:
            raise ValueError(f"search.grams={self.grams!r}: use one of {GRAMS}")
        if self.reading not in READINGS:
            raise ValueError(f"search.reading={self.reading!r}: use one of {READINGS}")


@dataclass
class Hit:
    row: int
    score: float
    ranks: dict[str, int]


class Engine:
    def __init__(
        self, lexical, semantic, embeddings: np.ndarray, index=None, topics=None, audience=None
    ):
        """`index`: the version's recommendation index (faiss rows, the fan's nearest
        creators) and `topics` (search.topics.Topics) let the personal retriever propose
        creators of its own; without them it ranks the others' candidates only. `audience`:
        [N] each row's training pairs, the popularity prior's order (None: no prior)."""
        self.lexical, self.semantic, self.embeddings = lexical, semantic, embeddings
        self.index, self.topics = index, topics
        self.audience = None if audience is None else np.asarray(audience, np.float64)

    def candidates(
        self, query: str, n: int, user_vector=None, semantic: bool = True, near: int = 0,
        grams: str = "every", prior: bool = False,
    ) -> dict[str, fusion.Ranked]:  # fmt: skip
        """Each retriever's list for the query, best first (`near`, `grams`: SearchSettings'),
        and the prior's last where `prior` asks and the engine has audiences. `semantic=False`
        leaves the semantic retriever out (serving asks it itself, with the query's vector
        from Triton)."""
        lists = {"lexical": self.lexical.search(query, n, grams)}
        if self.semantic is not None and semantic:
            lists["semantic"] = self.semantic.search(query, n)
        if user_vector is not None:
            lists["personal"] = self.personal(lists, user_vector, query, near, n)
        return self.with_prior(lists) if prior else lists

    def with_prior(
        self, lists: dict[str, fusion.Ranked], weights: dict[str, float] | None = None
    ) -> dict[str, fusion.Ranked]:
        """The lists and, last, the prior: the text retrievers' candidates by audience, most
        followed first (log1p, ties by row). Unchanged without audiences or text candidates,
        or where `weights` (a chosen fusion's) leave the prior out."""
        found = [lists[name][0] for name in TEXT if name in lists]
        off = weights is not None and weights.get(PRIOR, 0.0) <= 0
        if self.audience is None or not found or off:
            return lists
        rows = np.unique(np.concatenate(found)).astype(np.int64)
        scores = np.log1p(self.audience[rows])
        order = np.lexsort((rows, -scores))
        return {**lists, PRIOR: (rows[order], scores[order])}

    def personal(
        self, lists: dict[str, fusion.Ranked], user_vector, query: str = "", near: int = 0,
        n: int | None = None,
    ) -> fusion.Ranked:  # fmt: skip
        """The other lists' candidates, and those of the fan's `near` nearest creators the
        query's words describe, ranked by the user tower's score (the n best)."""
        u = np.asarray(user_vector, np.float32).reshape(-1)
        found = [r for r, _ in lists.values()]
        if near and self.index is not None and self.topics is not None:
            _, rows = self.index.search(u[None, :], near)
            rows = rows[0][rows[0] >= 0].astype(np.int64)
            found.append(rows[self.topics.matching(rows, query)])
        rows = np.unique(np.concatenate(found)).astype(np.int64) if found else np.zeros(0, int)
        if not len(rows):
            return rows, np.zeros(0, np.float32)
        scores = np.asarray(self.embeddings[rows], np.float32) @ u
        order = np.lexsort((rows, -scores))[:n]
        return rows[order], scores[order]

    def search(
        self, query: str, k: int, settings: SearchSettings, user_vector=None, exclude=()
    ) -> tuple[list[Hit], list[str]]:
        """The k best creators for the query, and the retrievers that took part."""
        lists = self.candidates(
            query, settings.candidates, user_vector, near=settings.near, grams=settings.grams
        )
        return self.routed(query, lists, k, settings, exclude)[0], list(lists)

    def routed(
        self, query: str, lists: dict[str, fusion.Ranked], k: int, settings: SearchSettings,
        exclude=(),
    ) -> tuple[list[Hit], SearchSettings, bool]:  # fmt: skip
        """The k best of the query's lists (the retrievers', as `candidates` or serving gave
        them), fused by the route `settings` give the query, with the prior where that route
        weights it: the hits, the route's settings, and whether the query read as a name."""
        name_like = self.reads_as_name(query, settings.reading, lists)
        chosen = settings.for_query(name_like, "personal" in lists)
        return fuse(self.with_prior(lists, chosen.weights), k, chosen, exclude), chosen, name_like

    def reads_as_name(self, query: str, reading: str = "words", lists=None) -> bool:
        """Whether the query reads as a creator's name (navigational) rather than a topic, by
        `reading` (SearchSettings'); False without the topics index. "fit" looks at the
        lexical retriever's first creator: in `lists` (the query's, as `candidates` gave
        them), else asked here."""
        if self.topics is None:
            return False
        first = None
        if reading == "fit":
            rows = (lists or {}).get("lexical", (None,))[0]
            rows = self.lexical.search(query, 1)[0] if rows is None else rows
            first = int(rows[0]) if len(rows) else None
        return self.topics.reads_as_name(query, reading, first)


def fuse(
    lists: dict[str, fusion.Ranked], k: int, settings: SearchSettings, exclude=()
) -> list[Hit]:
    """The retrievers' lists fused as `settings` say, without `exclude`d rows: the k best, each
    with its rank in every list (serving adds the personal list itself when the fan's vector
    comes while the others search; the evaluation re-fuses lists asked for once)."""
    banned = set(exclude)
    if banned:
        lists = {n: _without(rows, scores, banned) for n, (rows, scores) in lists.items()}
    fused = fusion.by_method(lists, settings.method, settings.c, settings.weights)
    where = fusion.ranks(lists)
    return [Hit(row, score, where[row]) for row, score in fused[:k]]


def _without(rows: np.ndarray, scores: np.ndarray, banned: set[int]) -> fusion.Ranked:
    keep = np.array([r not in banned for r in rows.tolist()], bool)
    return rows[keep], scores[keep]
