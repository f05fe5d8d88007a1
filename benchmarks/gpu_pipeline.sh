#!/usr/bin/env bash
# The GPU figures in one call of a lent GPU machine: the demo-size pipeline stage by stage (fp32 and bf16) and the
# 1000-class few-shot scale benchmark, on CUDA; logs to benchmarks/results/ (and to $OUT when it is set).
#
# The GPU machine's image has Python 3.12 with torch, numpy, pyarrow, Pillow, fsspec and PyYAML, and nothing can be
# downloaded there. What coderflow needs beyond that for these stages travels as wheels in .whl/ (in .gitignore):
#
#   bash benchmarks/gpu_pipeline.sh --prepare      # here, once: downloads the wheels into .whl/ (a few MiB)
#   bash benchmarks/gpu_pipeline.sh                # there, in one call that carries .whl: installs, runs, logs
#   DEVICE=cpu PYTHON=.venv/bin/python bash benchmarks/gpu_pipeline.sh --small   # the same path on this CPU
#
# Prefect, DuckDB and polars are too large to carry (hundreds of MiB), so the pipeline part calls the stages'
# functions directly (benchmarks/gpu_stages.py); the flows' own overhead is measured on CPU (benchmarks/end_to_end.py).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(open_clip_torch ftfy wcwidth pydantic pydantic_core annotated_types typing_inspection)
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}

if [[ "${1:-}" == "--prepare" ]]; then
  for name in "${WHEELS[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$name"
  done
  ls -l .whl
  exit 0
fi

SMALL=0
[[ "${1:-}" == "--small" ]] && SMALL=1
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site .
  export PYTHONPATH=/tmp/site
fi

results=benchmarks/results
mkdir -p "$results"
stages_log=$results/gpu_pipeline_stages.log
fewshot_log=$results/gpu_fewshot_scale.log
if [[ $SMALL == 1 ]]; then
  stages_args=(--images-per-class 5 --model ViT-S-32-alt --precision fp32)
  fewshot_args=(--tiny)
  stages_log=/tmp/gpu_pipeline_stages.log
  fewshot_log=/tmp/gpu_fewshot_scale.log
else
  stages_args=(--images-per-class 500 --model ViT-B-32 --precision fp32,bf16)
  fewshot_args=(--classes 1000)
fi

{
  echo "# $(date -u +%FT%TZ) $(uname -srm)"
  [[ $DEVICE == cuda* ]] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/gpu_stages.py --device "$DEVICE" "${stages_args[@]}"
} 2>&1 | tee "$stages_log"
PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/fewshot_scale.py --device "$DEVICE" "${fewshot_args[@]}" 2>&1 | tee "$fewshot_log"

if [[ -n "${OUT:-}" ]]; then
  cp "$stages_log" "$fewshot_log" "$OUT"/
fi
