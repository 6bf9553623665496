"""Which BM25 library the lexical retriever uses (issue 16), chosen by measurement on the
1 M-creator catalog, both built and queried side by side in one run on this machine:

- bm25s (numpy/scipy): one BM25 over each creator's name, category, tags and description, plus
  one over the name's character trigrams (for typos); a query's score is the sum of the two.
- tantivy (Rust, via tantivy-py), as shipped (index.lexical, search.lexical): the same four
  fields and the name's trigrams as fields; a query's score is its BM25 summed over them.
  (Its fuzzy term query on name words, tried too, cost 12 ms more at p90 with the trigrams
  and found noisy names worse without them: MRR@10 0.518 against 0.770.)

Both read the same tokens (index.lexical.tokens and trigrams: casefolded, accents stripped).

    pip install -e '.[bench]'      # bm25s
    python benchmarks/lexical_choice.py [--creators 1000000] [--queries 500]

Measured: build seconds and size on disk; per-query latency (one at a time) of noisy name
queries (a typo, a dropped word, a prefix, case and accents: the navigational set's kinds of
noise) and of tag queries; and the name queries' MRR@10 and success@1 (relevant: every creator
with that exact name). Writes artifacts/bench/lexical/results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from index import lexical  # noqa: E402
from index.lexical import tokens, trigrams  # noqa: E402
from search.lexical import Lexical  # noqa: E402
from search.queries import noisy  # noqa: E402

OUT = REPO / "artifacts" / "bench" / "lexical"
DATA = REPO / "artifacts" / "data" / "synthetic_1m_creators" / "tables"
CATALOG = DATA / "creators.parquet"
K = 10


def load(n: int) -> dict[str, list]:
    t = pq.read_table(CATALOG, columns=["creator_idx", "name", "category", "tags", "description"])
    t = t.slice(2, n)  # past the reserved rows
    return {c: t[c].to_pylist() for c in t.column_names}


def texts(cat: dict[str, list]) -> list[str]:
    fields = zip(cat["name"], cat["category"], cat["tags"], cat["description"], strict=True)
    return [f"{n} {c} {' '.join(t or [])} {d}" for n, c, t, d in fields]


class Bm25s:
    def __init__(self, cat: dict[str, list], folder: Path):
        import bm25s

        self.words = bm25s.BM25()
        self.words.index(bm25s.tokenization.Tokenized(*_vocab([tokens(t) for t in texts(cat)])),
                         show_progress=False)  # fmt: skip
        self.grams = bm25s.BM25()
        grams = [trigrams(n) for n in cat["name"]]
        self.grams.index(bm25s.tokenization.Tokenized(*_vocab(grams)), show_progress=False)
        self.words.save(folder / "words")
        self.grams.save(folder / "grams")

    def search(self, query: str) -> list[int]:
        scores = self.words.get_scores(tokens(query)) + self.grams.get_scores(trigrams(query))
        top = np.argpartition(-scores, K)[:K]
        return top[np.argsort(-scores[top])].tolist()


def _vocab(docs: list[list[str]]):
    vocab: dict[str, int] = {}
    ids = [[vocab.setdefault(w, len(vocab)) for w in d] for d in docs]
    return ids, vocab


class Tantivy:
    """What the rebuild job ships (index.lexical) and search asks (search.lexical)."""

    def __init__(self, cat: dict[str, list], folder: Path):
        lexical.build(DATA.parent, np.asarray(cat["creator_idx"], np.int64), folder)
        self.lexical = Lexical(folder)

    def search(self, query: str) -> list[int]:
        return self.lexical.search(query, K)[0].tolist()


def measure(engine, queries: list[str]) -> tuple[list[list[int]], dict]:
    found, ms = [], []
    for q in queries:
        started = time.perf_counter()
        found.append(engine.search(q))
        ms.append((time.perf_counter() - started) * 1e3)
    return found, {f"p{p}": round(float(np.percentile(ms, p)), 2) for p in (50, 90, 99)}


def quality(found: list[list[int]], relevant: list[set[int]]) -> dict:
    rr = [next((1 / (r + 1) for r, d in enumerate(f) if d in rel), 0.0)
          for f, rel in zip(found, relevant, strict=True)]  # fmt: skip
    s1 = [bool(f) and f[0] in rel for f, rel in zip(found, relevant, strict=True)]
    return {"mrr@10": round(float(np.mean(rr)), 4), "success@1": round(float(np.mean(s1)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--creators", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=500)
    args = ap.parse_args()
    cat = load(args.creators)
    rng = np.random.default_rng(0)
    picked = rng.choice(len(cat["name"]), args.queries, replace=False)
    by_name: dict[str, set[int]] = {}
    for i, n in enumerate(cat["name"]):
        by_name.setdefault(n, set()).add(i)
    names = [noisy(cat["name"][i], rng) for i in picked]
    relevant = [by_name[cat["name"][i]] for i in picked]
    tags = sorted({t for ts in cat["tags"][:10000] for t in (ts or [])})
    topics = [tags[i] for i in rng.integers(len(tags), size=args.queries)]
    out = {"creators": len(cat["name"]), "queries": args.queries, "examples": names[:8]}
    for name, cls in (("bm25s", Bm25s), ("tantivy", Tantivy)):
        folder = OUT / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        started = time.perf_counter()
        engine = cls(cat, folder)
        build_s = time.perf_counter() - started
        found, name_ms = measure(engine, names)
        _, topic_ms = measure(engine, topics)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        out[name] = {"build_s": round(build_s, 1), "disk_mb": round(size / 2**20, 1),
                     "names": {**quality(found, relevant), "ms": name_ms},
                     "topics_ms": topic_ms}  # fmt: skip
        print(name, json.dumps(out[name]), flush=True)
        del engine
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
