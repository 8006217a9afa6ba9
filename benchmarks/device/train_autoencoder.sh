#!/usr/bin/env bash
# CADD's and cond_ldm's first stage on a lent GPU machine: `neuroad train autoencoder` with
# --device cuda (see train_cadd.sh for what travels in .device/), then its quality on the
# validation scans next to the references of benchmarks/first_stage_quality.py. CONFIG names
# the architecture (default, latent16 or half; default: default), STEPS the training steps
# (default: the trainer's),
# COPIES the acquisition-augmented copies per training scan (default: the trainer's, 1).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
mkdir -p "$OUT/autoencoder"
python3 -m NeuroADLib.cli train autoencoder --cohort .device/ixi_2mm.npz \
    --out /tmp/neuroad/autoencoder --device cuda --config "${CONFIG:-default}" \
    ${STEPS:+--steps "$STEPS"} ${COPIES:+--acquisition-copies "$COPIES"} \
    2>&1 | tee "$OUT/autoencoder.log"
cp /tmp/neuroad/autoencoder/{autoencoder.safetensors,manifest.json} "$OUT/autoencoder/"
cp /tmp/neuroad/autoencoder/intensity_standard.* "$OUT/autoencoder/" 2>/dev/null || true
python3 benchmarks/first_stage_quality.py --cohort .device/ixi_2mm.npz --subjects 25 \
    --autoencoder new=/tmp/neuroad/autoencoder --harmonise /tmp/neuroad/autoencoder --json "$OUT/first_stage_quality.json" \
    2>&1 | tee "$OUT/first_stage_quality.log"
