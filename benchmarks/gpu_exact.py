"""Exact top-k over every creator with torch: queries/s on the GPU in fp32 and bf16, bf16's
recall@k against fp32, and fp32 on this machine's CPU in the same run (a ratio).

    python benchmarks/gpu_exact.py                       # 1 M × 64 creators, 10,000 queries
    python benchmarks/gpu_exact.py --n 50000 --queries 500 --cpu-queries 200     # a quick check

benchmarks/gpu_check.sh runs it where faiss cannot see the GPU (the lent image has CUDA 13,
PyPI's faiss GPU builds link CUDA 12's cuBLAS). It answers a serving question on its own: at
1 M creators, does one matrix product and a top-k on the GPU beat the IVF-PQ index on CPU
cores (BENCHMARKS.md, issue 4) without an approximation to tune? The corpus is the one
index_search.py measures (benchmarks.vectors.clustered), scores are inner products of unit
vectors, as the towers' are.

Writes <out>/gpu_exact.json (or cpu_exact.json without a GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.vectors import clustered  # noqa: E402
from common.io import write_json  # noqa: E402


def top_k(xb: torch.Tensor, xq: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """[Q, k] row ids of the k largest inner products, best first, `batch` queries a product."""
    out = []
    for s in range(0, len(xq), batch):
        out.append(torch.topk(xq[s : s + batch] @ xb.T, k, dim=1).indices)
    return torch.cat(out)


def timed(xb: torch.Tensor, xq: torch.Tensor, k: int, batch: int) -> tuple[torch.Tensor, float]:
    """top_k's ids and queries/s, after one batch to warm up (kernel choice, allocations)."""
    top_k(xb, xq[:batch], k, batch)
    sync(xb.device)
    started = time.perf_counter()
    ids = top_k(xb, xq, k, batch)
    sync(xb.device)
    return ids, len(xq) / (time.perf_counter() - started)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean share of each query's true top k that `found` holds."""
    f, t = found.cpu().numpy(), truth.cpu().numpy()
    return float(
        np.mean([len(np.intersect1d(a, b)) / t.shape[1] for a, b in zip(f, t, strict=True)])
    )


def on_gpu(xb: np.ndarray, xq: np.ndarray, a) -> dict:
    """fp32 (TF32 off: the exact reference) and bf16 on the GPU; bf16's recall against fp32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    gpu = torch.device("cuda")
    b32, q32 = torch.from_numpy(xb).to(gpu), torch.from_numpy(xq).to(gpu)
    truth, fp32_qps = timed(b32, q32, a.k, a.batch)
    found, bf16_qps = timed(b32.bfloat16(), q32.bfloat16(), a.k, a.batch)
    return {"device": torch.cuda.get_device_name(0), "fp32_qps": round(fp32_qps),
            "bf16_qps": round(bf16_qps), f"bf16_recall@{a.k}": round(recall(found, truth), 4),
            "truth": truth[: a.cpu_queries]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="creators")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--queries", type=int, default=10_000, help="timed on the GPU")
    ap.add_argument("--cpu-queries", type=int, default=1_000, help="the first of them, on CPU")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1024, help="queries a product on the GPU")
    ap.add_argument("--out", type=Path, default=REPO / "artifacts/bench/gpu_exact")
    a = ap.parse_args()
    xb = clustered(a.n, a.d, a.n, seed=1)
    xq = clustered(a.queries, a.d, a.n, seed=2)
    result = {"n": a.n, "d": a.d, "k": a.k, "queries": a.queries, "torch": torch.__version__}
    gpu = on_gpu(xb, xq, a) if torch.cuda.is_available() else None
    cpu_ids, cpu_qps = timed(torch.from_numpy(xb), torch.from_numpy(xq[: a.cpu_queries]), a.k,
                             min(a.batch, 128))  # fmt: skip
    result["cpu"] = {"threads": torch.get_num_threads(), "fp32_qps": round(cpu_qps)}
    if gpu is not None:
        truth = gpu.pop("truth")
        result["cpu"][f"recall@{a.k}_vs_gpu_fp32"] = round(recall(cpu_ids, truth), 4)
        result |= {"gpu": gpu, "gpu_fp32_over_cpu": round(gpu["fp32_qps"] / cpu_qps, 1)}
    path = a.out / f"{'gpu' if gpu else 'cpu'}_exact.json"
    write_json(path, result)  # atomic; the folder made if missing
    print(json.dumps(result, indent=1), f"\nwrote {path}")


if __name__ == "__main__":
    main()
