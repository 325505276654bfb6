#!/usr/bin/env bash
# `make bench-gpu`: the GPU run of bench/gpu.py (OnnxT5 fp16 on CUDA with and without IO binding, torch bf16,
# CTranslate2 float16 / int8_float16, distillation steps per second), written to bench/results/gpu/.
#   bench/gpu.sh                         on a machine with torch (CUDA), onnxruntime-gpu and ctranslate2 (CUDA)
#   bench/gpu.sh --device cpu --limit    anywhere: a tiny model, one cell, five training steps
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
exec "$PY" -m bench.gpu "$@"
