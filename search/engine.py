"""Creator search over one version: the retrievers' candidates fused into one list.

    engine = Engine(lexical, semantic, embeddings)        # a version's retrievers
    hits, used = engine.search("watercolor comics", k=10, user_vector=u, settings=settings)

Each retriever gives up to `candidates` creators for the query: lexical (BM25), semantic (the
query's sentence vector against the creators' text vectors), and, when a fan is given,
personal: the user tower's score (the fan's vector · the creator's, the recommendation score)
of every candidate the others found, ranked. The lists are fused (search.fusion) as
`settings` say; every hit carries its rank in each list, so a reader sees why it stands there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from search import fusion

RETRIEVERS = ("lexical", "semantic", "personal")


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
    candidates: int = 100
    """Creators each retriever proposes before fusion."""

    def __post_init__(self):
        if self.method not in ("rrf", "weighted"):
            raise ValueError(f"search.method={self.method!r}: use rrf or weighted")
        unknown = sorted(set(self.weights) - set(RETRIEVERS))
        if unknown:
            raise ValueError(f"search.weights names {unknown}: the retrievers are {RETRIEVERS}")
        if self.candidates < 1:
            raise ValueError(f"search.candidates={self.candidates}: use at least 1")


@dataclass
class Hit:
    row: int
    score: float
    ranks: dict[str, int]


class Engine:
    def __init__(self, lexical, semantic, embeddings: np.ndarray):
        self.lexical, self.semantic, self.embeddings = lexical, semantic, embeddings

    def candidates(
        self, query: str, n: int, user_vector=None, query_vector=None, semantic: bool = True
    ) -> dict[str, fusion.Ranked]:
        """Each retriever's list for the query, best first. The semantic retriever embeds the
        query in this process unless given its `query_vector` (serving's, from Triton);
        `semantic=False` leaves it out (its encoder failed)."""
        lists = {"lexical": self.lexical.search(query, n)}
        if self.semantic is not None and semantic:
            q = self.semantic.embed([query]) if query_vector is None else query_vector
            lists["semantic"] = self.semantic.search_vectors(np.reshape(q, (1, -1)), n)
        if user_vector is not None:
            lists["personal"] = self.personal(lists, user_vector)
        return lists

    def personal(self, lists: dict[str, fusion.Ranked], user_vector: np.ndarray):
        """The other lists' candidates ranked by the user tower's score."""
        rows = np.unique(np.concatenate([r for r, _ in lists.values()])).astype(np.int64)
        if not len(rows):
            return rows, np.zeros(0, np.float32)
        scores = np.asarray(self.embeddings[rows], np.float32) @ np.asarray(user_vector, np.float32)
        order = np.lexsort((rows, -scores))
        return rows[order], scores[order]

    def search(
        self, query: str, k: int, settings: SearchSettings, user_vector=None, exclude=(),
        query_vector=None, semantic: bool = True,
    ) -> tuple[list[Hit], list[str]]:  # fmt: skip
        """The k best creators for the query, and the retrievers that took part."""
        n = settings.candidates
        lists = self.candidates(query, n, user_vector, query_vector, semantic)
        return self.fuse(lists, k, settings, exclude), list(lists)

    def fuse(
        self, lists: dict[str, fusion.Ranked], k: int, settings: SearchSettings, exclude=()
    ) -> list[Hit]:
        """The retrievers' lists fused as `settings` say, without `exclude`d rows: the k best,
        each with its rank in every list (serving adds the personal list itself when the
        fan's vector comes while the others search)."""
        banned = set(exclude)
        if banned:
            lists = {n: _without(rows, scores, banned) for n, (rows, scores) in lists.items()}
        if settings.method == "rrf":
            fused = fusion.rrf(lists, settings.c, settings.weights)
        else:
            fused = fusion.weighted(lists, settings.weights)
        where = fusion.ranks(lists)
        return [Hit(row, score, where[row]) for row, score in fused[:k]]


def _without(rows: np.ndarray, scores: np.ndarray, banned: set[int]) -> fusion.Ranked:
    keep = np.array([r not in banned for r in rows.tolist()], bool)
    return rows[keep], scores[keep]
