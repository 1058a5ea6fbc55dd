#!/usr/bin/env bash
# The one prepared benchmark run for an accelerator host, sized for a window of minutes (about 7
# minutes of steps, under 8 in all on one H100-class GPU): VGG16 / ResNet-50 / ViT-B/16 beside
# Captum at batch 8/32/128, then bfloat16 and TF32 rows, then the older extras; each step in its
# own process with its own share of the time; rows kept as they come; OUT/table.md after every step.
# Usage: bash benchmarks/run_all.sh [--smoke] OUTDIR [--budget SECONDS] [--share STEP=SECONDS ...]
# (needs jaxplain installed; torch and captum for the peers; $PYTHON, default python3). The
# driver is benchmarks/run_all.py; --smoke runs every step at tiny sizes (a check for any CPU).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" -m benchmarks.run_all "$@"
