"""The semantic retriever at query time: the query embedded by the version's query encoder (the
sentence encoder that made the creator text vectors; index.semantic put it in the version),
then the text index searched by inner product (cosine: both sides are unit vectors).

    semantic = Semantic(version_folder)
    rows, scores = semantic.search("watercolor comics", k=10)   # faiss rows of the version
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from common.errors import MissingInputError
from index import store
from index.onnx import QueryEncoder


class Semantic:
    def __init__(self, folder: Path, threads: int = 1):
        folder = Path(folder)
        if not (folder / store.TEXT_INDEX).exists():
            raise MissingInputError(
                f"{folder.name} has no semantic retriever: its catalog has no creator text "
                f"vectors (data prepare with features.text_encoder), or it was built before search"
            )
        self.folder = folder
        self.index = faiss.read_index(str(folder / store.TEXT_INDEX))
        self.encoder = QueryEncoder(
            folder / store.QUERY_ENCODER, folder / store.QUERY_TOKENIZER, threads
        )

    def embed(self, queries: list[str]) -> np.ndarray:
        return self.encoder.encode(queries)

    def search(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k creators whose text is nearest the query's meaning, and the cosines."""
        return self.search_vectors(self.embed([query]), k)

    def search_vectors(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(np.ascontiguousarray(q[:1], np.float32), k)
        keep = rows[0] >= 0
        return rows[0][keep].astype(np.int64), scores[0][keep]
