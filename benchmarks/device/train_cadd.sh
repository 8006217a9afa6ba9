#!/usr/bin/env bash
# CADD's two training stages on a lent GPU machine (its python3 has torch but not monai): the
# `neuroad train` commands of CADD with --device cuda (the bundled model's stages ran them
# before harmonised scans and augmented copies became their defaults). Run from the
# repository root with the cohort pack in .device/ (neuroad pack CACHE --out
# .device/ixi_2mm.npz) and the monai wheel in .whl/. Writes the trained folders and logs to
# $OUT (checkpoints stay on the machine). AE_CONFIG names the first stage's architecture
# (default: default).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
work=/tmp/neuroad && mkdir -p "$work" "$OUT/autoencoder" "$OUT/transformer"
neuroad() { python3 -m NeuroADLib.cli "$@"; }

neuroad train autoencoder --cohort .device/ixi_2mm.npz --out "$work/autoencoder" \
    --device cuda --config "${AE_CONFIG:-default}" 2>&1 | tee "$OUT/autoencoder.log"
cp "$work"/autoencoder/{autoencoder.safetensors,manifest.json} "$OUT/autoencoder/"
cp "$work"/autoencoder/intensity_standard.* "$OUT/autoencoder/"  # harmonised first stage
neuroad train transformer --cohort .device/ixi_2mm.npz --autoencoder "$work/autoencoder" \
    --out "$work/transformer" --device cuda 2>&1 | tee "$OUT/transformer.log"
cp "$work"/transformer/transformer*.safetensors "$work"/transformer/manifest.json "$OUT/transformer/"
