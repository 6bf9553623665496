"""The semantic retriever of an index version (creator search, issue 16), written by the rebuild
job into the version folder when the catalog has creator text vectors (data.text):

    text.faiss             the version's creators' text vectors by faiss row, inner product
    query_encoder.onnx     the sentence encoder that made those vectors (index.query_encoder),
    query_tokenizer.json   so a query lands in their space

The index is exact (flat inner product) up to EXACT_UP_TO creators: the demo's and Last.fm's
thousands search in well under a millisecond. A larger catalog gets IVF-Flat, its nprobe tuned
at build time to recall@10 ≥ 0.95 against exact search (kept in the index file and the record).

The query encoder depends only on the encoder's name, its precision (index config
`query_precision`: fp32, or int8 quantized from it) and the libraries that make it, so it is
made once per machine (under ~/.cache/towerline) and linked into each version.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from importlib.metadata import version
from pathlib import Path

import faiss
import numpy as np

from common.io import atomic_path
from data import manifest as data_manifest
from data.tables import CREATOR_TEXT
from index import query_encoder, store

log = logging.getLogger(__name__)

TEXT_INDEX, ENCODER, TOKENIZER = store.TEXT_INDEX, store.QUERY_ENCODER, store.QUERY_TOKENIZER
EXACT_UP_TO = 200_000
"""Creators whose text vectors are searched exactly: a flat scan of 200 K × 384 takes a few
ms on one core; a million would take ~20 ms, past the whole of /search's budget."""
TARGET_RECALL = 0.95
TUNING_QUERIES = 500
CACHE = Path(os.environ.get("TOWERLINE_CACHE", Path.home() / ".cache" / "towerline"))


def text_encoder(data_dir: Path) -> str | None:
    """The sentence encoder that made the catalog's text vectors; None when there are none."""
    if not (Path(data_dir) / CREATOR_TEXT).exists():
        return None
    info = data_manifest.load(data_dir).get("text_features") or {}
    return info.get("encoder")


def build(
    data_dir: Path, creator_idx: np.ndarray, folder: Path, precision: str = "fp32"
) -> dict | None:
    """Write the version's semantic retriever into `folder` (the version folder), its query
    encoder at `precision` (store.QUERY_PRECISIONS); its manifest record, or None when the
    catalog has no text vectors."""
    name = text_encoder(data_dir)
    if name is None:
        log.info("no creator text vectors in %s: no semantic retriever", data_dir)
        return None
    started = time.perf_counter()
    text = np.load(Path(data_dir) / CREATOR_TEXT, mmap_mode="r", allow_pickle=False)
    rows = np.asarray(creator_idx, np.int64)
    xb = np.zeros((len(rows), text.shape[1]), np.float32)
    known = rows < len(text)  # creators newer than the vectors get none (zero: never first)
    xb[known] = text[rows[known]]
    index, kind = text_index(xb)
    with atomic_path(folder / TEXT_INDEX) as tmp:
        faiss.write_index(index, str(tmp))
    record = _encoder_into(name, folder, precision)
    log.info("semantic retriever: %d creators' text vectors (%s, %s)", len(rows), name, kind)
    return {**record, "creators": len(rows), "with_text": int(np.any(xb != 0, axis=1).sum()),
            **kind, "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def text_index(xb: np.ndarray, seed: int = 0) -> tuple[faiss.Index, dict]:
    """Exact inner product up to EXACT_UP_TO creators; above, IVF-Flat (√N·4 lists, trained
    on a sample) probing the fewest lists that find TARGET_RECALL of the exact top 10."""
    if len(xb) <= EXACT_UP_TO:
        index = faiss.IndexFlatIP(xb.shape[1])
        index.add(xb)
        return index, {"index": "Flat"}
    nlist = int(4 * np.sqrt(len(xb)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(xb.shape[1]), xb.shape[1], nlist,
                               faiss.METRIC_INNER_PRODUCT)  # fmt: skip
    rng = np.random.default_rng(seed)
    index.train(xb[np.sort(rng.choice(len(xb), min(len(xb), 64 * nlist), replace=False))])
    index.add(xb)
    nprobe, recall = _tune(index, xb, rng)
    return index, {"index": f"IVF{nlist},Flat", "nprobe": nprobe, "recall@10": recall}


def _tune(index, xb: np.ndarray, rng: np.random.Generator) -> tuple[int, float]:
    """The smallest power-of-two nprobe whose top 10 holds TARGET_RECALL of the exact top 10,
    for queries near the creators' texts (a creator's vector, noised: not itself)."""
    q = xb[rng.choice(len(xb), TUNING_QUERIES, replace=False)]
    q = q + rng.normal(0, 0.05, q.shape).astype(np.float32)
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    exact = faiss.IndexFlatIP(xb.shape[1])
    exact.add(xb)
    _, truth = exact.search(q, 10)
    recall = 0.0
    for nprobe in 2 ** np.arange(int(np.log2(index.nlist)) + 1):
        index.nprobe = int(nprobe)
        _, found = index.search(q, 10)
        recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
        if recall >= TARGET_RECALL:
            break
    return index.nprobe, round(float(recall), 4)


def _encoder_into(name: str, folder: Path, precision: str = "fp32") -> dict:
    """The query encoder `name` at `precision`, made once into this machine's cache (int8 from
    the cached fp32 export), linked into folder; its record."""
    key = f"{name}-torch{version('torch')}-st{version('sentence-transformers')}"
    cached = CACHE / "query_encoder" / key.replace("/", "_")
    _cache(cached, lambda staging: query_encoder.export(name, staging, ENCODER, TOKENIZER))
    if precision == "int8":
        fp32 = cached
        cached = cached.with_name(cached.name + "-int8-ort" + version("onnxruntime"))

        def int8(staging: Path) -> dict:
            shutil.copyfile(fp32 / TOKENIZER, staging / TOKENIZER)
            record = query_encoder.quantize(fp32 / ENCODER, staging / ENCODER, name,
                                            staging / TOKENIZER)  # fmt: skip
            made = json.loads((fp32 / "record.json").read_text())
            of_fp32 = {"fp32_sha256": made.pop("sha256"),
                       "fp32_parity_max_abs_diff": made.pop("parity_max_abs_diff")}  # fmt: skip
            return {**made, **record, **of_fp32}

        _cache(cached, int8)
    for file in (ENCODER, TOKENIZER):
        _link_or_copy(cached / file, folder / file)
    return json.loads((cached / "record.json").read_text())


def _cache(cached: Path, make) -> None:
    """Fill the cache folder `cached` with make(staging)'s files and record, unless done:
    made in a staging folder of this process's, renamed into place whole."""
    if (cached / "record.json").exists():
        return
    staging = cached.with_name(cached.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    record = make(staging)
    (staging / "record.json").write_text(json.dumps(record))
    shutil.rmtree(cached, ignore_errors=True)
    staging.rename(cached)


def _link_or_copy(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)  # no second copy of ~90 MB when the cache shares the disk
    except OSError:
        shutil.copyfile(source, target)
