#!/usr/bin/env bash
# Rebuild the shipped dense checkpoint of the built-in model (about 15 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/builtin-dense}
hiap train --config configs/builtin_dense.yaml --out "$out"
python -m hiap.checkpoint "$out/checkpoint.safetensors" hiap/assets/hiap_vit_fmnist_dense.safetensors
