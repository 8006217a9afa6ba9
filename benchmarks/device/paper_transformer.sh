#!/usr/bin/env bash
# The paper-size CADD backbone (Latte, 28 blocks, hidden 1024, 16 heads) on a lent GPU, on top
# of the bundled default autoencoder: train STEPS steps, calibrate the `cadd` variant on the
# healthy validation split, evaluate it on a synthetic T1 pack and time it. Its weights are far
# over what the package ships (about 0.8 GB in float16), so only its figures come back. Run from
# the repository root with STEPS set and, in .device/: ixi_2mm.npz (the cohort pack),
# autoencoder/ (the bundled default stage one) and synthetic_small.npz; the monai wheel in .whl/.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
work=/tmp/neuroad && bundle="$work/cadd-paper" && mkdir -p "$work/models"
neuroad() { python3 -m NeuroADLib.cli "$@"; }

neuroad train transformer --cohort .device/ixi_2mm.npz --autoencoder .device/autoencoder \
    --config paper --steps "$STEPS" --out "$work/transformer" --device cuda 2>&1 \
    | tee "$OUT/transformer_paper.log"
cp "$work/transformer/manifest.json" "$OUT/transformer_paper_manifest.json"
neuroad train cadd --cohort .device/ixi_2mm.npz --autoencoder .device/autoencoder \
    --transformer "$work/transformer" --variants cadd --out "$bundle" --device cuda 2>&1 \
    | tee "$OUT/bundle_paper.log"
cp "$bundle/manifest.json" "$OUT/bundle_paper_manifest.json"
ln -s "$bundle" "$work/models/cadd"
neuroad evaluate --methods cadd --models "$work/models" --cases .device/synthetic_small.npz \
    --device cuda --quiet --out "$work/results" > "$OUT/evaluate_paper.log" 2>&1
cp "$work/results/summary.json" "$OUT/summary_paper.json"
python3 benchmarks/bench_cadd.py --bundle "$bundle" --cases .device/synthetic_small.npz \
    --device cuda --scans 3 --setting cadd --out "$OUT/bench_paper.json"
