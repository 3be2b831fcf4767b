#!/usr/bin/env bash
# One prepared GPU session (issue 23), at most 12 minutes, torch only (the GPU machines have
# torch, torchvision, numpy, scipy, pyarrow, fsspec, tensorboard; no Ray, OmegaConf, webdataset):
#   1. benchmarks/gpu_throughput.py: training img/s per GPU, fp32 / bf16 × eager / compiled ×
#      batch 32 / 64 / 128, GENESIS-V2 and GENESIS at 64 px (rows not started after 150 s are
#      marked skipped; eager rows and bf16 come first);
#   2. benchmarks/gpu_recipe.py: the papers' recipe (published GENESIS-V2, 64 px, K = 5, batch 32,
#      lr 1e-4, GECO, no curriculum) for 8 minutes on Multi-dSprites generated in memory, printing
#      held-out ARI-FG of both mask sets beside the one-slot and colour answers, ELBO and img/s
#      every minute.
# Raw JSON of both and the whole log go to $OUT when set (the device tool's output folder),
# else benchmarks/results/.
#
#   bash benchmarks/gpu_session.sh            # on a GPU machine, from anywhere
#   bash benchmarks/gpu_session.sh --smoke    # seconds on a CPU: checks that it runs (tests/test_gpu_session.py)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export GENESIS_BENCH_RESULTS="${OUT:-$PWD/benchmarks/results}"
mkdir -p "$GENESIS_BENCH_RESULTS"
log="$GENESIS_BENCH_RESULTS/gpu_session-$(date -u +%Y%m%dT%H%M%SZ).log"

if [[ "${1:-}" == "--smoke" ]]; then
  throughput=(--device cpu --models genesis_v2 --modes eager --batches 2 --steps 1 --warmup 1)
  recipe=(--smoke --device cpu)
  throughput_limit=600 recipe_limit=600
else
  throughput=(--budget-s 150)
  recipe=(--minutes 8)
  throughput_limit=200 recipe_limit=520  # 12 minutes in all
fi

{
  status=0
  echo "[gpu_session] $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "[gpu_session] no nvidia-smi"
  "$PYTHON" -c "import torch; print('[gpu_session] torch', torch.__version__, 'CUDA', torch.version.cuda, \
'GPUs', torch.cuda.device_count())"
  timeout "$throughput_limit" "$PYTHON" benchmarks/gpu_throughput.py --markdown "${throughput[@]}" \
    || { status=$?; echo "[gpu_session] gpu_throughput.py exited with status $status"; }
  timeout "$recipe_limit" "$PYTHON" benchmarks/gpu_recipe.py "${recipe[@]}" \
    || { status=$?; echo "[gpu_session] gpu_recipe.py exited with status $status"; }
  exit "$status"
} 2>&1 | tee "$log"
