#!/usr/bin/env bash
# MAD-AD on a lent GPU machine (issue 11): train both stages on the cohort pack, calibrate on
# its validation split, evaluate on a synthetic T1 pack, and bring back the figures, and the
# bundle when it is small enough to ship (the default config: about 2 MB; the paper config's
# weights stay there). Run from the repository root with, in .device/: ixi_2mm.npz (`neuroad
# pack CACHE`) and synthetic_t1.npz (`neuroad pack BENCH/synthetic/cases.csv --contrast t1`);
# the monai wheel in .whl/. Knobs: CONFIG (default|paper, default: default), STEPS (UNet
# steps), AE_STEPS (autoencoder steps), DEVICE (cuda), OUT.
#   CONFIG=default STEPS=40000 AE_STEPS=10000 bash benchmarks/device/train_mad_ad.sh
set -euo pipefail
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
config=${CONFIG:-default} && device=${DEVICE:-cuda}
if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
fi
work=${WORK:-/tmp/neuroad} && bundle="$work/mad-ad-ixi-2mm" && mkdir -p "$work/models"
neuroad() { python3 -m NeuroADLib.cli "$@"; }
steps=()
[ -n "${STEPS:-}" ] && steps+=(--steps "$STEPS")
[ -n "${AE_STEPS:-}" ] && steps+=(--autoencoder-steps "$AE_STEPS")

neuroad train mad_ad --cohort .device/ixi_2mm.npz --config "$config" "${steps[@]}" \
    --out "$bundle" --device "$device" 2>&1 | tee "$OUT/train_mad_ad.log"
cp "$bundle/manifest.json" "$OUT/mad_ad_manifest.json"
if [ "$config" = default ]; then  # first, so that a later time-out keeps it
    tar czf "$OUT/mad_ad_bundle.tgz" --exclude=checkpoint -C "$work" mad-ad-ixi-2mm
fi
ln -sfn "$bundle" "$work/models/mad_ad"
neuroad evaluate --methods mad_ad --models "$work/models" --cases .device/synthetic_t1.npz \
    --device "$device" --quiet --out "$work/results" > "$OUT/evaluate_mad_ad.log" 2>&1
cp "$work/results/summary.json" "$OUT/mad_ad_synthetic_summary.json"
