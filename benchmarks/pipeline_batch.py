"""The online pipeline in-process, without HTTP: microseconds a request for batches of 1 and 16
of the 1 M-creator benchmark's fans, and where a batch's time goes, stage by stage.

    python benchmarks/pipeline_batch.py [--batches 300] [--encoder onnx]

Needs the index, feature store and data of `benchmarks/serving_load.py` (it builds them when
missing). What it isolates is the Python around faiss and the tower: the per-request work of the
lookup, filter, rank and fallback stages (BENCHMARKS.md, issue 13).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NAME = "synthetic_1m_creators"


def recommender(encoder: str):
    import faiss

    from serving.features import open_store
    from serving.pipeline.recommender import Recommender
    from serving.pipeline.towers import InProcessTowers

    faiss.omp_set_num_threads(1)  # as the service runs (search_threads: 1)
    if encoder != "onnx":
        raise SystemExit("only --encoder onnx: the pipeline without a Triton server")
    store = open_store(str(REPO / "artifacts" / "features" / NAME))
    rec = Recommender(REPO / "artifacts" / "index" / NAME, store, InProcessTowers())
    rec.refresh()
    gc.collect()
    gc.freeze()  # as the service does after a load
    return rec


def run(rec, fans: list[str], size: int, batches: int) -> dict:
    from serving.pipeline.stages import Request

    groups = [fans[(i * size) % len(fans) :][:size] for i in range(batches)]
    rec.recommend_many([Request(f, 20) for f in groups[0]])  # warm
    stages: dict[str, float] = {}
    started = time.perf_counter()
    for group in groups:
        batch = rec.pipeline.run([Request(f, 20) for f in group], rec.bundle)
        for name, seconds in batch.timings.items():
            stages[name] = stages.get(name, 0.0) + seconds
    per_batch = (time.perf_counter() - started) / batches
    return {
        "batch": size,
        "us_per_request": per_batch / size * 1e6,
        "stages_us_per_batch": {k: v / batches * 1e6 for k, v in stages.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--encoder", default="onnx")
    args = p.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    from serving_load import ensure_index

    from serving.pipeline.versions import sample_fans

    ensure_index()
    rec = recommender(args.encoder)
    fans = sample_fans(REPO / "artifacts" / "data" / NAME, 2000)
    for size in (1, 16):
        r = run(rec, fans, size, args.batches)
        stages = ", ".join(f"{k} {v:.0f}" for k, v in r["stages_us_per_batch"].items())
        print(f"batch {size:>2}: {r['us_per_request']:6.0f} µs a request (µs a batch: {stages})")


if __name__ == "__main__":
    main()
