#!/usr/bin/env bash
# GPU checks of ntkal on one H100/H200: end-to-end `select` throughput (default) and
# feature-map throughput plus probe-vs-exact PV Spearman (`features`).
#
# Usage (from anywhere):
#   bash benchmarks/gpu/run.sh --fetch-wheels   # on a machine with network: fills the wheel folder
#   bash benchmarks/gpu/run.sh [select]         # on the GPU machine: 200k-candidate select
#   bash benchmarks/gpu/run.sh features         # on the GPU machine: feature-map stages
#
# The GPU machine (Python 3.12, jax CUDA, flax, optax, numpy, scipy, sympy, attrs preinstalled)
# lacks e3nn-jax, jraph, ase and vesin and cannot reach a registry. Put their wheels in .whl/
# at the repository root (or $NTKAL_WHEELS; git-ignored), carried with the working tree; they
# are installed with pip --no-index into a private folder on PYTHONPATH. Packages already
# importable are left alone. Logs and JSON go to $OUT (or ./gpu-out).
#
# select: benchmarks/select_scaling.py on 200,000 mixed-size OC20-like candidates (20–230
#   atoms), joint probe-8 d=512, PV shortlist 2000 + LCMD, chunks of 64, ≤ 6 size classes,
#   graphs on all host cores; pure featurisation measured on 20,000 of them.
# features: 1. N=72 Cu/Pt slabs, 16 per chunk: energy, forces, energy-NTK, exact force-NTK,
#   probe k=4/8/16, joint -> str/s; 2. N=72, one structure per call; 3. Spearman of probe-k
#   vs exact force PV on 500 27-atom slabs.
# GPU float32 matmuls default to TF32 — fine for timings and rankings; run correctness
# checks (pytest) on CPU or with jax_default_matmul_precision=highest.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WHEELS="${NTKAL_WHEELS:-$ROOT/.whl}"
MODE="${1:-select}"
OUTDIR="${OUT:-$ROOT/gpu-out}"
mkdir -p "$OUTDIR"
PY="${PYTHON:-python3}"

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  mkdir -p "$WHEELS"
  "$PY" -m pip download --no-deps --only-binary=:all: -d "$WHEELS" \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    e3nn-jax==0.21.0 jraph==0.0.6.dev0 ase==3.29.0 vesin==0.6.2
  ls -l "$WHEELS"
  exit 0
fi

missing=$("$PY" - <<'PYEOF'
import importlib.util
print(" ".join(m for m in ("e3nn_jax", "jraph", "ase", "vesin", "attr", "sympy") if importlib.util.find_spec(m) is None))
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
  todo=()
  for w in "${wheels[@]}"; do
    pkg=$(basename "$w"); pkg=${pkg%%-*}
    mod=$(case "$pkg" in attrs) echo attr;; *) echo "$pkg";; esac)
    # do not shadow a preinstalled package with a carried wheel unless it is missing
    if [[ " $missing " == *" $mod "* ]]; then todo+=("$w"); fi
  done
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "${todo[@]}"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import jax, e3nn_jax, jraph, ase; print('jax', jax.__version__, jax.devices())"

if [[ "$MODE" == "select" ]]; then
  echo "== select: 200,000 candidates end to end =="
  PYTHONUNBUFFERED=1 timeout "${SELECT_TIMEOUT:-480}" "$PY" benchmarks/select_scaling.py \
    --sizes ${SIZES:-200000} --chunk-size ${CHUNK:-64} --feat-subset ${FEAT_SUBSET:-20000} ${EXTRA:-} --json "$OUTDIR/select_gpu.json" \
    2>&1 | tee "$OUTDIR/select_gpu.log" || echo "select stage failed or timed out ($?)"
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
  exit 0
fi

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
