#!/usr/bin/env bash
# One method's benchmark figures (issue 11): `neuroad evaluate` on the synthetic benchmark (the
# 25 healthy validation subjects and their lesioned copies), the real cases and the
# clinical-acquisition set, then its raw against its normative maps:
#   METHOD=mad_ad BENCH=~/neuroad-cache/benchmarks RESULTS=results/mad_ad \
#     [MODELS=folder-with-one-folder-per-method] [CLINICAL_CASES=10] [SYNTHETIC_SUBJECTS=10] \
#     [OPTIONS="cadd.against_reconstruction=1 ..."] bash benchmarks/method_figures.sh
# BENCH is `neuroad make-benchmarks --acquisitions` output. CLINICAL_CASES limits the
# clinical-acquisition cases (the demo always runs) and SYNTHETIC_SUBJECTS the synthetic set to
# its first subjects (healthy and lesioned), for the slow methods; run zscore with the same
# limits to compare. OPTIONS are method options for every evaluation. The evaluations save raw
# maps (`--map raw`), from which normative_maps.py makes both. Every evaluation resumes from the
# maps it saved.
set -euo pipefail
: "${METHOD:?}" "${BENCH:?}" "${RESULTS:?}"
mkdir -p "$RESULTS"
extra=()
[ -n "${MODELS:-}" ] && extra=(--models "$MODELS")
for option in ${OPTIONS:-}; do extra+=(--option "$option"); done
clinical="$BENCH/clinical/cases.csv"
if [ -n "${CLINICAL_CASES:-}" ]; then
    clinical="$BENCH/clinical/cases_$METHOD.csv"  # beside the cases: paths are relative
    { head -n 1 "$BENCH/clinical/cases.csv"
      grep -m "$CLINICAL_CASES" ',clinical_acquisition,' "$BENCH/clinical/cases.csv"
      grep ',clinical_demo,' "$BENCH/clinical/cases.csv"; } > "$clinical.$$"
    mv "$clinical.$$" "$clinical"  # whole, for a run beside it that reads the same file
fi
synthetic="$BENCH/synthetic/cases.csv"
if [ -n "${SYNTHETIC_SUBJECTS:-}" ]; then
    synthetic="$BENCH/synthetic/cases_${SYNTHETIC_SUBJECTS}_subjects.csv"
    python - "$BENCH/synthetic/cases.csv" "$SYNTHETIC_SUBJECTS" > "$synthetic.$$" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
subjects = list(dict.fromkeys(row["subject"] for row in rows))[:int(sys.argv[2])]
writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
writer.writeheader()
writer.writerows(row for row in rows if row["subject"] in subjects)
PY
    mv "$synthetic.$$" "$synthetic"
fi
for set in synthetic real clinical; do
    cases="$BENCH/$set/cases.csv"
    [ "$set" = clinical ] && cases=$clinical
    [ "$set" = synthetic ] && cases=$synthetic
    echo "$(date +%T) $METHOD $set"
    neuroad evaluate --methods "$METHOD" "${extra[@]}" --cases "$cases" --device cpu --map raw --quiet \
        --out "$RESULTS/$set" > "$RESULTS/$set.log" 2>&1
done
python benchmarks/normative_maps.py --method "$METHOD=$RESULTS/synthetic" \
    --real-results "$METHOD=$RESULTS/real" --synthetic "$synthetic" \
    --real "$BENCH/real/cases.csv" --clinical-results "$METHOD=$RESULTS/clinical" \
    --clinical "$clinical" --json "$RESULTS/normative.json" > "$RESULTS/normative.md"
echo "$(date +%T) done"
