#!/usr/bin/env bash
# Issue 16's GPU check, at most 8 minutes on one CUDA GPU: run it whenever a GPU machine is lent.
#
#   bash benchmarks/gpu_check.sh          # needs `make install`; writes $OUT/gpu_check.md (OUT defaults to ./gpu_check)
#
# 1. the machine: nvidia-smi, torch/CUDA/faiss versions (faiss GPU support or not);
# 2. tests/test_gpu.py: LRP on the GPU equals zennit's, the invariant kNN graph on the GPU finds the
#    CPU graph's neighbours, the demo audit on the GPU ranks its planted class first (60 s);
# 3. benchmarks/gpu_attribution.py: LRP images/s of ResNet-50, VGG-16 and EfficientNet-Lite0 at 224 px,
#    float32 and bfloat16, NCHW and channels-last, against zennit's hooks and a plain forward (120 s);
# 4. benchmarks/imagenet_scale.py: a generated folder with all 1,000 ImageNet wnids (8 JPEGs each, 256 px)
#    audited with configs/imagenet.yaml on the GPU up to the score stage: seconds and peak memory per
#    stage, attribute, distances and transfer included (300 s).
# Each step has its own time limit; a step that fails or runs out is reported and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-gpu_check}
mkdir -p "$OUT_DIR"
REPORT=$OUT_DIR/gpu_check.md
PY=${PYTHON:-.venv/bin/python}
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

step() {  # step TITLE SECONDS COMMAND...: run, append its output to the report
    local title=$1 limit=$2
    shift 2
    local t0=$SECONDS
    {
        echo "## $title"
        echo
        echo '```'
    } >>"$REPORT"
    timeout "$limit" "$@" >>"$REPORT" 2>"$SCRATCH/stderr"
    local rc=$?
    tail -n 20 "$SCRATCH/stderr" >>"$REPORT"
    {
        echo '```'
        echo
        echo "exit code $rc$( [ $rc -eq 124 ] && echo " (stopped at the ${limit} s limit)"), $((SECONDS - t0)) s"
        echo
    } >>"$REPORT"
}

{
    echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo
} >"$REPORT"
step "Machine" 30 bash -c "nvidia-smi; $PY -c 'import torch, faiss; print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, \"GPUs\", torch.cuda.device_count()); print(\"faiss\", faiss.__version__, \"GPU index:\", hasattr(faiss, \"StandardGpuResources\"))'"
step "GPU tests (tests/test_gpu.py)" 60 "$PY" -m pytest -q tests/test_gpu.py
step "LRP throughput (benchmarks/gpu_attribution.py)" 120 "$PY" benchmarks/gpu_attribution.py --device cuda
step "1,000 wnids on the GPU up to score (benchmarks/imagenet_scale.py)" 300 \
    "$PY" benchmarks/imagenet_scale.py --root "$SCRATCH/scale" --per-class 8 --side 256 --until score \
    --set compute.device=cuda --set compute.decode_threads=8
echo "wrote $REPORT"
cat "$REPORT"
