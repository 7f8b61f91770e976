#!/usr/bin/env bash
# The GPU check, one command on a machine with one H100/H200 (about 7 minutes):
#
#     bash benchmarks/gpu-check.sh [OUT_DIR]
#
# It runs benchmarks/gpu_check.py (see its docstring; extra arguments go to it) with this checkout on
# PYTHONPATH. On a machine that cannot reach a package index, set WHEELS to a folder of wheels of what its
# Python lacks (ray, diffusers, pydantic and their needs): they are installed into /tmp/latentmill-site
# first. Results: OUT_DIR/gpu-check.{md,json} and OUT_DIR/compare/compare.{md,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench-results/gpu-check}"
python="${PYTHON:-python3}"
if [ -n "${WHEELS:-}" ]; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/latentmill-site "$WHEELS"/*.whl
    export PYTHONPATH="/tmp/latentmill-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export LATENTMILL_CACHE="${LATENTMILL_CACHE:-/tmp/latentmill-cache}" HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
shift || true
exec "$python" benchmarks/gpu_check.py --out "$out" "$@"
