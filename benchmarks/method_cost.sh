#!/usr/bin/env bash
# A method's time and peak memory per scan on this machine (issues 11 and 13): `neuroad run`
# of METHOD and of zscore beside it, on an IXI scan and the bundled demo.
#   METHOD=cddpm MODEL=models/cddpm IXI=../shared/data/ixi_t1_2mm WORK=/tmp/cost \
#     [THREADS=2] bash benchmarks/method_cost.sh
# TRAINER is what `neuroad train` builds the stand-in bundle with (default: METHOD; thor and
# autoddpm: ddpm).
# MODEL is a trained bundle folder. Without one, a bundle of the default config trained for 2
# steps (per stage) on 6 IXI subjects (2 more to calibrate) stands in: the cost of MAD-AD's and
# cDDPM's, THOR's and AutoDDPM's inference does not depend on the weights (every slice goes through every step).
# Prints, per scan, wall seconds and peak resident memory (/usr/bin/time -v) and the run's own
# timings from report.json.
set -euo pipefail
: "${METHOD:?}" "${IXI:?}" "${WORK:?}"
THREADS=${THREADS:-2}
TRAINER=${TRAINER:-$METHOD}
mkdir -p "$WORK/store"
bundle="$WORK/store/$METHOD"
rm -rf "$bundle"
if [ -n "${MODEL:-}" ]; then
    cp -r "$MODEL" "$bundle"
else
    neuroad prepare-cohort "$IXI" --cache "$WORK/cohort" --limit 8 --validation-fraction 0.25 \
        --workers 2 --quiet
    extra=()
    [ "$METHOD" = mad_ad ] && extra=(--autoencoder-steps 2)
    neuroad train "$TRAINER" --cohort "$WORK/cohort" --out "$WORK/train-$METHOD" \
        --config default --steps 2 "${extra[@]}" --threads "$THREADS" > "$WORK/train.log" 2>&1
    cp -r "$WORK/train-$METHOD" "$bundle"
fi
rm -rf "$bundle/checkpoint" "$bundle"/*/checkpoint
demo=$(python -c "import NeuroADLib, pathlib; print(next((pathlib.Path(NeuroADLib.__file__).parent / 'data' / 'demo').glob('*.nii.gz')))")
scan=$(ls "$IXI"/*.nii.gz | head -n 1)
for input in "$scan" "$demo"; do
    for method in "$METHOD" zscore; do
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
