#!/usr/bin/env bash
# cDDPM's default network trained on a lent GPU machine for as long as its lease allows: the
# `neuroad train cddpm` command of a CPU run (resumed from that run's checkpoint when
# .device/checkpoint/ holds one) with as many steps as fit in BUDGET_S seconds at the step time
# measured there first (benchmarks/noise_bank_step.py). A SIGTERM at the deadline makes the
# loop checkpoint the step under way and stop, so no step done is lost. Brings back the bundle
# when its calibration ended in time, the checkpoint (to bundle or continue elsewhere with the
# same command and --steps N, as the shipped cddpm-ixi-2mm was: on an H200 the slices took 195 s
# to prepare in one process, before they were spread over its cores; the bank 23 s, a step
# 0.030-0.036 s) and the logs. Run from the repository root with, in .device/: ixi_2mm.npz (`neuroad pack CACHE`)
# and optionally checkpoint/ (a run's network/checkpoint); the monai wheel in .whl/.
# Knobs: BUDGET_S (seconds for the whole script, 540), MAX_STEPS (24000), TRAIN_ARGS (further
# `neuroad train cddpm` options, e.g. --noise-bank 4096), DEVICE (cuda), PROBE_REPEATS (40),
# RESERVE_S (seconds kept for preparing the slices, the bank and the calibration, 300).
#   TRAIN_ARGS="--noise-bank 4096" bash benchmarks/device/train_cddpm_within.sh
set -euo pipefail
began=$(date +%s)
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
device=${DEVICE:-cuda} && budget=${BUDGET_S:-540}
if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
fi
work=${WORK:-/tmp/neuroad} && bundle="$work/cddpm-ixi-2mm" && mkdir -p "$bundle/network"
if [ -d .device/checkpoint ]; then cp -r .device/checkpoint "$bundle/network/"; fi

# the step time here, and the bank drawn on this device against the CPU's
python3 benchmarks/noise_bank_step.py --device "$device" --threads 4 \
    --repeats "${PROBE_REPEATS:-40}" | tee "$OUT/probe.txt"
python3 - "$device" <<'EOF' | tee -a "$OUT/probe.txt"
import sys
from NeuroADLib.diffusion.noise import SimplexNoiseBank
here = SimplexNoiseBank.draw(64, 112, 96, seed=0, device=sys.argv[1]).fields
cpu = SimplexNoiseBank.draw(64, 112, 96, seed=0).fields
print(f"bank on {sys.argv[1]} against the CPU's: max |difference| {(here - cpu).abs().max():.2e}")
EOF
steps=$(python3 - "$OUT/probe.txt" "$bundle/network/checkpoint/state.json" "$began" "$budget" \
    "${RESERVE_S:-300}" "${MAX_STEPS:-24000}" <<'EOF'
import json, re, sys, time
from pathlib import Path
probe, state, began, budget, reserve, most = sys.argv[1:]
per_step = float(re.search(r"bank ([0-9.]+) s", Path(probe).read_text()).group(1))
start = json.loads(Path(state).read_text())["step"] if Path(state).is_file() else 0
left = float(budget) - (time.time() - float(began)) - float(reserve)
# a training step took 1.2-1.4x the probe's on an H200 (the batch gathered on the CPU)
print(min(int(most), start + int(left / (1.4 * per_step)) // 250 * 250))
EOF
)
echo "training to step $steps" | tee "$OUT/steps.txt"

stop_in=$(( budget - ($(date +%s) - began) - 15 ))
set +e
# shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
timeout -s TERM "$stop_in" python3 -m NeuroADLib.cli train cddpm --cohort .device/ixi_2mm.npz \
    --out "$bundle" --config default --steps "$steps" --device "$device" --threads 8 \
    ${TRAIN_ARGS:-} > "$OUT/train_cddpm.log" 2>&1
echo "train exit $?" | tee -a "$OUT/steps.txt"
set -e
mkdir -p "$OUT/checkpoint"
cp "$bundle"/network/checkpoint/{cddpm.safetensors,optimisers.pt,state.json} "$OUT/checkpoint/"
if [ -f "$bundle/manifest.json" ] && grep -q '"method": "cddpm"' "$bundle/manifest.json"; then
    tar czf "$OUT/cddpm_bundle.tgz" --exclude=checkpoint -C "$work" cddpm-ixi-2mm
fi
