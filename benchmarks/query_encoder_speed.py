"""The query encoder's speed against the semantic retriever's accuracy, per precision (index
config `query_precision`: fp32 as exported, int8 quantized from it), side by side in one run.

    python benchmarks/query_encoder_speed.py \
        --dataset synthetic_demo lastfm_search synthetic_1m_creators

For each dataset's served version, both encoders are made (or taken from this machine's cache,
as the rebuild job does: index.semantic) for the encoder that made the version's text vectors.
The labelled query sets the semantic retriever answers alone (search.queries: navigational,
and topical on Last.fm) are split into the validation and test halves of
benchmarks/search_quality.py. Each query is embedded by both encoders, taking turns, and each
vector searched in the version's text index. Latency: tokenizing and running the encoder, in
this process on one thread (the text index search is the same for both and timed apart).

This measures the encoder alone: the semantic retriever's own accuracy, which on the 1 M set
moves with a few queries. The choice is made on what the service answers, the fusion of
every retriever (benchmarks/search_quality.py --query_precision choose); the test halves here
are compared, paired, int8 against fp32.
Writes artifacts/bench/query_encoder/<dataset>.json and a plot of the datasets.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import search_quality  # noqa: E402
from benchmarks.lexical_speed import percentiles, run, speed_plot, version_folder  # noqa: E402
from index import semantic as built  # noqa: E402
from index import store  # noqa: E402
from index.onnx import QueryEncoder  # noqa: E402
from search import evaluation as ev  # noqa: E402
from search import queries as qs  # noqa: E402
from search.semantic import Semantic  # noqa: E402

OUT = REPO / "artifacts" / "bench" / "query_encoder"
PRECISIONS = store.QUERY_PRECISIONS
KINDS = ("navigational", "topical")
K = 100


def encoders(folder: Path, scratch: Path, record: dict | None = None) -> dict[str, QueryEncoder]:
    """Both precisions of the version's query encoder, made as the rebuild job makes them
    (`record`: the version's semantic record, read from its manifest when not given)."""
    record = record or store.read_manifest(folder.parents[1], folder.name)["semantic"]
    name = record["encoder"]
    out = {}
    for precision in PRECISIONS:
        (scratch / precision).mkdir()
        built._encoder_into(name, scratch / precision, precision)
        out[precision] = QueryEncoder(scratch / precision / store.QUERY_ENCODER,
                                      scratch / precision / store.QUERY_TOKENIZER)  # fmt: skip
    return out


def ask(semantic: Semantic, enc: dict[str, QueryEncoder], texts: list[str]):
    """Each precision's rows per query and its encoding time (ms), the precisions taking
    turns on each query; and the text index's search time."""
    rows = {p: [] for p in PRECISIONS}
    took = {p: [] for p in PRECISIONS} | {"index": []}
    for i, text in enumerate(texts):
        for j in range(len(PRECISIONS)):
            p = PRECISIONS[(i + j) % len(PRECISIONS)]
            started = time.perf_counter()
            vector = enc[p].encode([text])
            took[p].append((time.perf_counter() - started) * 1e3)
            started = time.perf_counter()
            found, _ = semantic.search_vectors(vector, K)
            took["index"].append((time.perf_counter() - started) * 1e3)
            rows[p].append(found.tolist())
    return rows, took


def measure(dataset: str, n: int, seed: int) -> dict:
    folder = version_folder(dataset)
    semantic = Semantic(folder)
    record = store.read_manifest(folder.parents[1], folder.name)["semantic"]
    with tempfile.TemporaryDirectory() as scratch:
        enc = encoders(folder, Path(scratch), record)
        for e in enc.values():
            e.encode(["warm up"])
        out = {"dataset": dataset, "index_version": folder.name, "sets": {},
               "served": record.get("precision", "fp32")}  # fmt: skip
        took_all = {p: [] for p in [*PRECISIONS, "index"]}
        tests = {}
        catalog = qs.Catalog.of_version(folder)
        for q in search_quality.build_sets(dataset, catalog, n, seed, KINDS):
            halves = {}
            for half, part in zip(("validation", "test"), q.split(seed), strict=True):
                print(f"{dataset} {q.kind} {half}: {len(part)} queries", flush=True)
                rows, took = ask(semantic, enc, part.text)
                for p, ms in took.items():
                    took_all[p] += ms
                halves[half] = (part, rows)
            out["sets"][q.kind] = report(qs.PRIMARY[q.kind], halves)
            tests[q.kind] = halves["test"]
    out["latency_ms"] = {p: percentiles(ms) for p, ms in took_all.items()}
    out["test"] = {kind: ev.compare(part, ("int8", rows["int8"]), ("fp32", rows["fp32"]),
                                    out["sets"][kind]["metric"])
                   for kind, (part, rows) in tests.items()}  # fmt: skip
    return out


def report(primary: str, halves: dict) -> dict:
    out = {"metric": primary, "queries": {h: len(p) for h, (p, _) in halves.items()}}
    for half, (part, rows) in halves.items():
        out[half] = {p: ev.evaluate(part, rows[p], [primary])[primary] for p in PRECISIONS}
        out[half]["top10_overlap"] = round(float(np.mean(
            [len(set(a[:10]) & set(b[:10])) / max(len(a[:10]), 1)
             for a, b in zip(rows["fp32"], rows["int8"], strict=True)])), 4)  # fmt: skip
    return out


def show(r: dict) -> None:
    print(f"\n{r['dataset']} ({r['index_version']}, serves {r['served']})")
    for p in PRECISIONS:
        cells = "  ".join(f"{k} val {x['validation'][p]:.4f} test {x['test'][p]:.4f}"
                          for k, x in r["sets"].items())  # fmt: skip
        lat = r["latency_ms"][p]
        print(f"  {p}: {cells}  encode p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} ms")
    print(f"  text index search: p50 {r['latency_ms']['index']['p50']:.2f} ms")
    for kind, c in r["test"].items():
        print(f"  test {kind}: int8 {c['a_score']} vs fp32 {c['b_score']} ({c['metric']}), "
              f"p = {c['p_value']:.3g}, W/T/L {c['win_tie_loss']}, top-10 overlap "
              f"{r['sets'][kind]['test']['top10_overlap']}")  # fmt: skip


def plot(results: list[dict], path: Path) -> None:
    speed_plot(results, path, PRECISIONS, "fp32", "query encoder p99 (ms, one thread)")


def main() -> None:
    run(__doc__, measure, show, plot, OUT)


if __name__ == "__main__":
    main()
