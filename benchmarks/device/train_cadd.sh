#!/usr/bin/env bash
# CADD's two training stages on a lent GPU machine (its python3 has torch but not monai): the
# exact `neuroad train` commands of the bundled model, with --device cuda. Run from the
# repository root with the cohort pack in .device/ (neuroad pack CACHE --out
# .device/ixi_2mm.npz) and the monai wheel in .whl/. Writes the trained folders and logs to
# $OUT (checkpoints stay on the machine).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
work=/tmp/neuroad && mkdir -p "$work" "$OUT/autoencoder" "$OUT/transformer"
neuroad() { python3 -m NeuroADLib.cli "$@"; }

neuroad train autoencoder --cohort .device/ixi_2mm.npz --out "$work/autoencoder" \
    --device cuda 2>&1 | tee "$OUT/autoencoder.log"
cp "$work"/autoencoder/{autoencoder.safetensors,manifest.json} "$OUT/autoencoder/"
neuroad train transformer --cohort .device/ixi_2mm.npz --autoencoder "$work/autoencoder" \
    --out "$work/transformer" --device cuda 2>&1 | tee "$OUT/transformer.log"
cp "$work"/transformer/transformer*.safetensors "$work"/transformer/manifest.json "$OUT/transformer/"
