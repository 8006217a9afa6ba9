#!/usr/bin/env bash
# MAD-AD's time and peak memory per scan on this machine (issue 11), with no trained model at
# hand: the cost of inference does not depend on the weights (every slice goes through all
# DDIM steps; the mask head only chooses which latent positions are updated), so a bundle of
# the DEFAULT config trained for 2 steps per stage on 6 IXI subjects (2 more to calibrate) measures it exactly.
#   IXI=../shared/data/ixi_t1_2mm WORK=/tmp/mad_ad_cost [THREADS=2] bash benchmarks/mad_ad_cost.sh
# Prints, per scan (an IXI scan, the bundled demo), wall seconds and peak resident memory of
# `neuroad run --method mad_ad` and of `--method zscore` beside it (/usr/bin/time -v), and
# the run's own timings from report.json.
set -euo pipefail
: "${IXI:?}" "${WORK:?}"
THREADS=${THREADS:-2}
mkdir -p "$WORK"
neuroad prepare-cohort "$IXI" --cache "$WORK/cohort" --limit 8 --validation-fraction 0.25 --workers 2 --quiet
neuroad train mad_ad --cohort "$WORK/cohort" --out "$WORK/train" --config default --steps 2 \
    --autoencoder-steps 2 --threads "$THREADS" > "$WORK/train.log" 2>&1
mkdir -p "$WORK/store"
rm -rf "$WORK/store/mad-ad-ixi-2mm"
cp -r "$WORK/train" "$WORK/store/mad-ad-ixi-2mm"
demo=$(python -c "import NeuroADLib, pathlib; print(next((pathlib.Path(NeuroADLib.__file__).parent / 'data' / 'demo').glob('*.nii.gz')))")
scan=$(ls "$IXI"/*.nii.gz | head -n 1)
for input in "$scan" "$demo"; do
    for method in mad_ad zscore; do
        out="$WORK/run-$method-$(basename "$input" .nii.gz)"
        rm -rf "$out"
        NEUROAD_MODELS="$WORK/store" /usr/bin/time -v neuroad run "$input" --age 50 --sex F \
            --method "$method" --device cpu --threads "$THREADS" --out "$out" \
            > "$out.log" 2> "$out.time"
        wall=$(grep "Elapsed (wall clock)" "$out.time" | awk '{print $NF}')
        peak=$(grep "Maximum resident set size" "$out.time" | awk '{print int($NF / 1024)}')
        timings=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['timings_s'])" \
            "$out/report.json")
        echo "$(basename "$input") $method: wall $wall, peak ${peak} MB, $timings"
    done
done
