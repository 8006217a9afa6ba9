#!/usr/bin/env bash
# A 2D slice method (METHOD: mad_ad, issue 11, cddpm or ddpm, issue 13, sdm, issue 15) on a lent
# GPU machine: train it on the cohort pack, calibrate on its validation split, evaluate on a synthetic T1 pack, and
# bring back the figures, and the bundle when it is small enough to ship (the default configs:
# about 2 MB; the paper configs' weights stay there). Run from the repository root with, in .device/: ixi_2mm.npz (`neuroad
# pack CACHE`) and synthetic_t1.npz (`neuroad pack BENCH/synthetic/cases.csv --contrast t1`);
# the monai wheel in .whl/. Knobs: METHOD, CONFIG (default|paper, default: default), STEPS
# (UNet steps), AE_STEPS (MAD-AD's autoencoder steps), DEVICE (cuda), OUT, EVAL_METHODS (the
# methods the bundle serves, comma-separated; default: METHOD; ddpm: thor,autoddpm).
#   METHOD=mad_ad CONFIG=default STEPS=40000 AE_STEPS=10000 bash benchmarks/device/train_slice_method.sh
#   METHOD=cddpm CONFIG=paper STEPS=20000 bash benchmarks/device/train_slice_method.sh
#   METHOD=ddpm EVAL_METHODS=thor,autoddpm STEPS=40000 bash benchmarks/device/train_slice_method.sh
#   METHOD=sdm EVAL_METHODS=sdm,sdm_fam CONFIG=paper STEPS=20000 bash benchmarks/device/train_slice_method.sh
set -euo pipefail
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
: "${METHOD:?}"
config=${CONFIG:-default} && device=${DEVICE:-cuda}
if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
fi
name="${METHOD//_/-}-ixi-2mm"
work=${WORK:-/tmp/neuroad} && bundle="$work/$name" && mkdir -p "$work/models"
neuroad() { python3 -m NeuroADLib.cli "$@"; }
steps=()
[ -n "${STEPS:-}" ] && steps+=(--steps "$STEPS")
[ -n "${AE_STEPS:-}" ] && steps+=(--autoencoder-steps "$AE_STEPS")

neuroad train "$METHOD" --cohort .device/ixi_2mm.npz --config "$config" "${steps[@]}" \
    --out "$bundle" --device "$device" 2>&1 | tee "$OUT/train_$METHOD.log"
cp "$bundle/manifest.json" "$OUT/${METHOD}_manifest.json"
if [ "$config" = default ]; then  # first, so that a later time-out keeps it
    tar czf "$OUT/${METHOD}_bundle.tgz" --exclude=checkpoint -C "$work" "$name"
fi
methods=${EVAL_METHODS:-$METHOD}
for method in ${methods//,/ }; do ln -sfn "$bundle" "$work/models/$method"; done
neuroad evaluate --methods "$methods" --models "$work/models" --cases .device/synthetic_t1.npz \
    --device "$device" --quiet --out "$work/results" > "$OUT/evaluate_$METHOD.log" 2>&1
cp "$work/results/summary.json" "$OUT/${METHOD}_synthetic_summary.json"
