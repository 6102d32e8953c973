#!/usr/bin/env bash
# Feature-map throughput of ntkal on one H100/H200 (chunked), plus probe-vs-exact PV Spearman.
#
# UNRUN: written without access to a GPU (no device in the session that wrote it); the same
# Python entry point (benchmarks/features.py) was run on CPU. Expect to fix small things.
#
# Usage (from anywhere):
#   bash benchmarks/gpu/run.sh --fetch-wheels   # on a machine with network: fills the wheel folder
#   bash benchmarks/gpu/run.sh                  # on the GPU machine
#
# The GPU machine (Python 3.12, jax CUDA, flax, optax, numpy, scipy preinstalled) lacks
# e3nn-jax, jraph and ase and cannot reach a registry. Put their pure-Python wheels (and
# attrs, sympy, mpmath, typing_extensions for safety) in benchmarks/gpu/wheels/ (or
# $NTKAL_WHEELS), carried with the working tree; they are unpacked with
# `python -m zipfile -e` into a private folder on PYTHONPATH (jraph cannot be imported from a
# zip on PYTHONPATH, and no pip is needed). Packages already importable are left alone.
#
# Stages (each bounded by `timeout`: 330 + 120 + 180 s at most, compiles included):
#   1. N=72 Cu/Pt slabs, 16 structures per chunk: energy, forces, energy-NTK, exact
#      force-NTK (vjp; FORMULATIONS="vjp jvp" adds jvp; one graph per lax.map step),
#      probe k=4/8/16, joint  -> str/s
#   2. N=72, one structure per call: energy-NTK, probe-8 and exact (the issue's baselines)
#   3. Spearman of probe-k vs exact force PV on 500 27-atom slabs (k = 4, 8, 16)
# Every stage prints the peak device memory (jax memory_stats) at its end.
# GPU float32 matmuls default to TF32 — fine for timings and rankings; run correctness
# checks (pytest) on CPU or with jax_default_matmul_precision=highest.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WHEELS="${NTKAL_WHEELS:-$ROOT/benchmarks/gpu/wheels}"
PY="${PYTHON:-python3}"

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  mkdir -p "$WHEELS"
  "$PY" -m pip download --no-deps --only-binary=:all: -d "$WHEELS" \
    e3nn-jax==0.21.0 jraph==0.0.6.dev0 ase==3.29.0 attrs sympy mpmath typing_extensions
  ls -l "$WHEELS"
  exit 0
fi

missing=$("$PY" - <<'PYEOF'
import importlib.util
print(" ".join(m for m in ("e3nn_jax", "jraph", "ase", "attr") if importlib.util.find_spec(m) is None))
PYEOF
)
if [[ -n "$missing" ]]; then
  shopt -s nullglob
  wheels=("$WHEELS"/*.whl)
  if (( ${#wheels[@]} == 0 )); then
    echo "missing Python packages: $missing, and no wheels in $WHEELS (run --fetch-wheels)" >&2
    exit 1
  fi
  SITE="${TMPDIR:-/tmp}/ntkal-gpu-site"
  mkdir -p "$SITE"
  for w in "${wheels[@]}"; do
    name=$(basename "$w")
    pkg=${name%%-*}
    # do not shadow a preinstalled package with a carried wheel unless it is missing
    if "$PY" -c "import importlib.util,sys; m={'e3nn_jax':'e3nn_jax','jraph':'jraph','ase':'ase','attrs':'attr','sympy':'sympy','mpmath':'mpmath','typing_extensions':'typing_extensions'}.get('$pkg','$pkg'); sys.exit(importlib.util.find_spec(m) is None)"; then
      continue
    fi
    "$PY" -m zipfile -e "$w" "$SITE"
  done
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import jax, e3nn_jax, jraph, ase; print('jax', jax.__version__, jax.devices())"

BENCH=("$PY" benchmarks/features.py --dtype float32 --sketch-dim 256 --direction-batch 64)

echo "== stage 1: N=72, 16 structures per chunk =="
# shellcheck disable=SC2086
timeout 330 "${BENCH[@]}" --atoms 72 --chunk-size 16 --exact-graph-batch 1 --repeats 3 \
  --formulations ${FORMULATIONS:-vjp} --probes 4 8 16 --spearman 0 \
  || echo "stage 1 failed or timed out ($?)"

echo "== stage 2: N=72, one structure per call =="
timeout 120 "${BENCH[@]}" --atoms 72 --chunk-size 1 --repeats 5 --formulations vjp \
  --probes 8 --spearman 0 || echo "stage 2 failed or timed out ($?)"

echo "== stage 3: Spearman, 500 structures =="
timeout 180 "${BENCH[@]}" --atoms 27 --skip-table --spearman 500 --spearman-train 32 \
  --spearman-atoms 27 --pv-chunk 16 --exact-graph-batch 1 --probes 4 8 16 \
  || echo "stage 3 failed or timed out ($?)"
