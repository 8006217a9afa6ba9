#!/usr/bin/env bash
# CADD's bundle and benchmarks on a lent GPU machine: `neuroad train cadd` (validation KL
# percentiles and every variant's healthy calibration), then, side by side on the GPU (each
# process is bound by kernel launches, so several share it well): every variant on the
# synthetic and real T1 sets, the normative check (ages 30 years off), the respaced sampler,
# and the inference benchmark. Run from the repository root with, in .device/: the trained
# stages (autoencoder/, transformer/) and the packs validation.npz (neuroad pack CACHE
# --split validation), synthetic_t1.npz and real_t1.npz (neuroad pack cases.csv --contrast
# t1); the monai wheel in .whl/. Returns the bundle and the results as archives in $OUT.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
work=/tmp/neuroad && bundle="$work/cadd-ixi-2mm" && results="$work/results"
mkdir -p "$work/models" "$results"

python3 -m NeuroADLib.cli train cadd --cohort .device/validation.npz --autoencoder .device/autoencoder \
    --transformer .device/transformer --out "$bundle" --device cuda 2>&1 | tee "$OUT/bundle.log"
tar czf "$OUT/bundle.tgz" -C "$work" cadd-ixi-2mm  # first, so that a later time-out keeps it
variants="cadd cadd_nocov cadd_noinpaint ldm ldm_tavg"
for v in $variants; do ln -s "$bundle" "$work/models/$v"; done

evaluate() {  # NAME CASES [ARGS...]: one evaluation, its log in the results folder
    local name=$1 cases=$2 && shift 2
    timeout "${EVALUATE_LIMIT_S:-240}" python3 -m NeuroADLib.cli evaluate \
        --models "$work/models" --cases ".device/$cases.npz" --device cuda --quiet \
        --out "$results/$name" "$@" > "$results/$name.log" 2>&1 || echo "$name: exit $?"
}
for v in $variants; do
    (evaluate "synthetic_$v" synthetic_t1 --methods "$v"; evaluate "real_$v" real_t1 \
        --methods "$v") &
done
evaluate age_shift_30 synthetic_t1 --methods cadd,cadd_nocov --age-shift 30 &
for r in 5 10; do
    evaluate "synthetic_cadd_respacing$r" synthetic_t1 --methods cadd \
        --option "cadd.respacing=$r" &
done
wait
tar czf "$OUT/results.tgz" --exclude=maps -C "$work" results
timeout 90 python3 benchmarks/bench_cadd.py --bundle "$bundle" --cases .device/validation.npz \
    --device cuda --scans 3 --setting cadd --setting cadd:respacing=5 \
    --setting cadd:respacing=10 --setting ldm --setting cadd:t_int=1000 \
    --out "$OUT/bench_cadd_cuda.json" 2>&1 | tee "$OUT/bench.log" || true
