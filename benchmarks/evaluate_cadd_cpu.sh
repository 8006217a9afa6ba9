#!/usr/bin/env bash
# CADD's detection figures on a CPU, in order of importance, each evaluation resumable:
#   BUNDLE=path/to/cadd-ixi-2mm PACKS=folder RESULTS=folder bash benchmarks/evaluate_cadd_cpu.sh
# PACKS holds grid packs built with `neuroad pack` from the benchmark manifests:
#   synthetic_50.npz   every validation subject healthy and with its first synthetic lesion
#   synthetic_16.npz   the first 8 of those subjects (the ablation subset)
#   healthy_25.npz     the healthy validation cases alone (the normative check)
#   real_t1.npz        the real T1 lesion cases
# At about 18 s per scan and variant on 2 cores this takes about 45 minutes.
set -euo pipefail
: "${BUNDLE:?}" "${PACKS:?}" "${RESULTS:?}"
models="$RESULTS/models" && mkdir -p "$models"
for v in cadd cadd_nocov cadd_noinpaint ldm ldm_tavg; do ln -sfn "$(realpath "$BUNDLE")" "$models/$v"; done
ln -sfn "$(realpath "${ZSCORE:-NeuroADLib/models/bundled/zscore-ixi-2mm}")" "$models/zscore"

evaluate() {  # NAME CASES [ARGS...]
    local name=$1 cases=$2 && shift 2
    echo "$(date +%T) $name"
    neuroad evaluate --models "$models" --cases "$PACKS/$cases.npz" --device cpu --quiet \
        --out "$RESULTS/$name" "$@" > "$RESULTS/$name.log" 2>&1 || echo "$name: exit $?"
}
evaluate synthetic50_zscore synthetic_50 --methods zscore
evaluate real_zscore real_t1 --methods zscore
evaluate synthetic50_cadd synthetic_50 --methods cadd
evaluate real_cadd real_t1 --methods cadd
evaluate age30_cadd healthy_25 --methods cadd --age-shift 30
evaluate age30_zscore healthy_25 --methods zscore --age-shift 30
for v in cadd_nocov cadd_noinpaint ldm ldm_tavg; do
    evaluate "synthetic16_$v" synthetic_16 --methods "$v"
    evaluate "real_$v" real_t1 --methods "$v"
done
for r in 5 10; do
    evaluate "synthetic16_cadd_respacing$r" synthetic_16 --methods cadd --option "cadd.respacing=$r"
done
# the paper's setting for noisy clinical scans (T_int = 1000), respaced to stay affordable
evaluate synthetic16_cadd_tint1000_respacing10 synthetic_16 --methods cadd \
    --option cadd.t_int=1000 --option cadd.respacing=10
echo "$(date +%T) done"
