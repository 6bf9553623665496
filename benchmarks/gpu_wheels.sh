#!/usr/bin/env bash
# The wheels a lent GPU machine lacks for benchmarks/gpu_check.sh, fetched here (where PyPI can
# be reached) into .whl/ (git-ignored), for that machine's Python: 3.12 on x86-64. Its image
# holds torch, Lightning, numpy, pyarrow and pytest already (../.library/device/KINDS.md); the
# check needs the training CLI's argument parser, the shard reader and faiss besides.
#
#   bash benchmarks/gpu_wheels.sh          # then: device run, carry [".whl"]
#
# Two sets, because one device call carries at most 64 MiB: `train` (the parser and the shard
# reader, well under 1 MiB) and `faiss` (faiss-gpu-cu12, ~48 MB, and the CUDA 12 runtime it
# links; cuBLAS 12 is ~400 MB and cannot travel, so the check borrows the image's cuBLAS 13
# under the name faiss asks for, and says so if faiss will not load that way).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SET=${1:-all}
TRAIN=(jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0
       importlib-resources==6.5.2 webdataset==1.0.2 braceexpand==0.1.7)
FAISS=(faiss-gpu-cu12==1.14.1.post1 nvidia-cuda-runtime-cu12==12.9.79)
case "$SET" in
  train) WANT=("${TRAIN[@]}") ;;
  faiss) WANT=("${FAISS[@]}") ;;
  all) WANT=("${TRAIN[@]}" "${FAISS[@]}") ;;
  *) echo "usage: $0 [train|faiss|all]" >&2; exit 2 ;;
esac
rm -rf .whl && mkdir -p .whl
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${WANT[@]}"
du -sh .whl
ls .whl
