#!/usr/bin/env bash
# The checks a lent GPU is for, in one call of at most 8 minutes (device `run`):
#
#   1. training: the towers' bf16 training samples/s through the real training step, beside
#      the shard loader's samples/s on the same data (benchmarks/train_rate.py);
#   2. the creator index: faiss IVF-PQ built and searched on the GPU over 1 M creators, q/s at
#      recall@10 >= 0.95 against exact search on the same GPU (benchmarks/index_search.py --gpu);
#      where faiss cannot see the GPU, exact top-10 over the same 1 M creators with torch, fp32
#      and bf16, against the CPU in the same run (benchmarks/gpu_exact.py);
#   3. the tests marked gpu (pytest -m gpu).
#
# Prepared here, before the call (the machine reaches no package index):
#
#   bash benchmarks/gpu_wheels.sh train          # .whl/: what the image lacks for 1 and 3
#   make demo (or its prepare step)              # artifacts/data/synthetic_demo, 18 MB
#
# then: run(command="bash benchmarks/gpu_check.sh", carry=[".whl", "artifacts/data/synthetic_demo"],
# timeout_s=540). Each part that cannot run says why and the others go on. Figures and logs go
# to $OUT (the device tool's folder), else artifacts/bench/gpu_check.
#
# faiss on the GPU: the PyPI GPU builds (faiss-gpu-cu12, faiss-gpu) link CUDA 12's cuBLAS, with
# versioned symbols, and the lent image holds CUDA 13 only; cuBLAS 12 is a 410 MB wheel and a
# call carries 64 MiB. So part 2 runs only where faiss loads with a GPU (`gpu_wheels.sh faiss`
# carries faiss-gpu-cu12 for an image that has cuBLAS 12), and says so otherwise; exact search
# with torch runs in its place.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-artifacts/bench/gpu_check}
STEPS=${STEPS:-300}
N=${N:-1000000}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
            'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())"
} 2>&1 | tee "$OUT/summary.log"

part() {  # part NAME SECONDS COMMAND...: run it under a limit, log it, never stop the script
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v -i 'warn' | tail -40
  echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$OUT/summary.log"
}

if [ -f artifacts/data/synthetic_demo/manifest.json ]; then
  part train 200 "$PY" benchmarks/train_rate.py --workers 8 --records-per-batch 16 \
    --warmup 20 --steps "$STEPS" --out "$OUT" --lightning-dir /tmp/lightning
else
  echo "== train: skipped, no artifacts/data/synthetic_demo (carry it)"
fi

faiss_gpus=$("$PY" -c "import faiss; print(faiss.get_num_gpus())" 2>/tmp/faiss_import.log)
if [ "${faiss_gpus:-0}" -gt 0 ] 2>/dev/null; then
  part index 240 "$PY" benchmarks/index_search.py --gpu --n "$N" --out "$OUT" --name "gpu_${N}"
  part tests 90 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/index/test_build.py
else
  { echo "== index, tests: skipped, faiss sees no GPU (${faiss_gpus:-faiss did not load})"
    tail -2 /tmp/faiss_import.log; } | tee -a "$OUT/summary.log"
  part exact 150 "$PY" benchmarks/gpu_exact.py --n "$N" --out "$OUT"
fi
ls -la "$OUT"  # the device tool brings back at most 8 files: summary, 2 logs a part, 2 figures
