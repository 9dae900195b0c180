#!/usr/bin/env bash
# The GPU run: `bash .gpu/run.sh` from the checkout, with .gpu carried (make gpu-kit builds it).
# Unpacks the kit's ptxas/nvlink and kernel cache, runs from the source tree (no install, no
# network), forces the PTX backend, then runs the stages in order of value under one budget
# (GPUKIT_BUDGET seconds, default the kit's), re-packing everything into $OUT after each stage.
set -u
cd "$(dirname "$0")/.." || exit 2
KIT="$PWD/.gpu"
export OUT="${OUT:-/tmp/gpukit-out}"
mkdir -p "$OUT"
T0=$(date +%s)
echo "gpukit: run.sh started $(date -u +%FT%TZ) in $PWD" | tee -a "$OUT/log.txt"
PY="$(command -v python3)"
WORK="${GPUKIT_WORK:-/tmp/gpukit}"
mkdir -p "$WORK"
# missing pure-Python packages travel as wheels in .gpu/whl (none are needed on the H200 image)
if ls "$KIT"/whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
    "$KIT"/whl/*.whl 2>&1 | tee -a "$OUT/log.txt"
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
exec "$PY" -m tools.gpukit run --kit "$KIT" --out "$OUT" --work "$WORK" --started "$T0" \
  ${GPUKIT_BUDGET:+--budget "$GPUKIT_BUDGET"} ${GPUKIT_STAGES:+--stages $GPUKIT_STAGES} "$@"
