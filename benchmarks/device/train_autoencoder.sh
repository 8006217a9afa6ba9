#!/usr/bin/env bash
# CADD's first stage on a lent GPU machine: the exact `neuroad train autoencoder` command of
# the bundled model with --device cuda (see train_cadd.sh for what travels in .device/).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
mkdir -p "$OUT/autoencoder"
python3 -m NeuroADLib.cli train autoencoder --cohort .device/ixi_2mm.npz \
    --out /tmp/neuroad/autoencoder --device cuda 2>&1 | tee "$OUT/autoencoder.log"
cp /tmp/neuroad/autoencoder/{autoencoder.safetensors,manifest.json} "$OUT/autoencoder/"
