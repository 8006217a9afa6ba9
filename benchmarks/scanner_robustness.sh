#!/usr/bin/env bash
# The scanner-robustness figures of the README, before (the models as they were, OLD) and after
# (the models in the package), on 2 CPU cores:
#   CACHE=~/neuroad-cache/ixi_2mm BENCH=~/neuroad-cache/benchmarks OLD=old-models \
#   RESULTS=results/scanner bash benchmarks/scanner_robustness.sh
# OLD holds one folder per method (zscore, cadd) with the earlier bundles (e.g. from git:
# `git archive ca89ff4 NeuroADLib/models/bundled | tar -x`). BENCH is `neuroad make-benchmarks`
# output (real, synthetic, clinical). CADD runs on the first CADD_CASES clinical-acquisition
# cases, the demo and the real cases (about 20 s a scan); zscore on everything. CADD_NEW (default:
# the bundled CADD) is the CADD bundle of the "after" side.
set -euo pipefail
: "${CACHE:?}" "${BENCH:?}" "${OLD:?}" "${RESULTS:?}"
CADD_CASES=${CADD_CASES:-10}
new="$RESULTS/new-models" && mkdir -p "$new"
ln -sfn "$(realpath NeuroADLib/models/bundled/zscore-ixi-2mm)" "$new/zscore"
ln -sfn "$(realpath "${CADD_NEW:-NeuroADLib/models/bundled/cadd-ixi-2mm}")" "$new/cadd"

# the CADD subset: the first clinical-acquisition cases and the demo
subset="$BENCH/clinical/cases_cadd.csv"
{ head -n 1 "$BENCH/clinical/cases.csv"
  grep ',clinical_acquisition,' "$BENCH/clinical/cases.csv" | head -n "$CADD_CASES"
  grep ',clinical_demo,' "$BENCH/clinical/cases.csv"; } > "$subset"

evaluate() {  # NAME MODELS METHOD CASES
    echo "$(date +%T) $1"
    neuroad evaluate --models "$2" --methods "$3" --cases "$4" --device cpu --quiet \
        --out "$RESULTS/$1" > "$RESULTS/$1.log" 2>&1 || echo "$1: exit $?"
}
for side in old new; do
    models=$OLD && [ "$side" = new ] && models=$new
    evaluate "${side}_zscore_synthetic" "$models" zscore "$BENCH/synthetic/cases.csv"
    evaluate "${side}_zscore_clinical" "$models" zscore "$BENCH/clinical/cases.csv"
    evaluate "${side}_zscore_real" "$models" zscore "$BENCH/real/cases.csv"
    evaluate "${side}_cadd_clinical" "$models" cadd "$subset"
    evaluate "${side}_cadd_real" "$models" cadd "$BENCH/real/cases.csv"
done
python benchmarks/scanner_shift.py --cohort "$CACHE" --real "$BENCH/real" \
    --demo "$BENCH/clinical/clinical_demo" --model "before=$OLD/zscore" \
    --model "after=$new/zscore" --subjects 10 --json "$RESULTS/scanner_shift.json" \
    > "$RESULTS/scanner_shift.md"
