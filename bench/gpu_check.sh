#!/usr/bin/env bash
# One pass over everything that needs a GPU, for a lent machine (H100/H200, torch + triton
# + nvcc + pytest preinstalled, no internet), sized for ONE device call:
#
#     OUT=/some/dir bash bench/gpu_check.sh           # default OUT=./gpu_out
#     BUDGET_S=300 bash bench/gpu_check.sh            # a shorter call (default 540 s)
#     ONLY="versions install pytest_cuda" bash bench/gpu_check.sh   # a subset, in STEPS order
#
# Steps run in priority order (STEPS below). Each runs under `timeout` with the smaller of
# its own limit and what is left of BUDGET_S (wall clock from the start of the script);
# a step that would get less than MIN_STEP_S is skipped and marked so. The run keeps going
# when a step fails, and exits non-zero at the end if any step failed or was skipped.
#
# What comes back is at most 8 files (all a device call returns), rewritten after every
# step so that a call killed mid-way still returns what finished:
#   $OUT/summary.txt        one line per step: rc, seconds, ok / FAILED / SKIPPED
#   $OUT/summary.json       the same, machine-readable, plus the budget
#   $OUT/gpu_check.tar.gz   every step's log and every bench's JSON and Markdown table
#   $OUT/bench_*.json       each bench's JSON rows (bench/README.md has the columns)
#   $OUT/_C.*.so            the extension the install step built (REUSE_EXT=1 reuses it)
#
# To add a step: write a `step_<name>` function and add "<name> <timeout_s>" to STEPS.
# Bench outputs go to $WORK/<name>.json; a step's log is $WORK/<name>.log.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
BUDGET_S="${BUDGET_S:-540}"
MIN_STEP_S="${MIN_STEP_S:-20}"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
export OUT PYTHON WORK
export PYTHONUNBUFFERED=1

step_versions() {
  "$PYTHON" - <<'EOF'
import platform, sys
import torch
print("python", sys.version.replace("\n", " "), platform.platform())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
try:
    import triton
    print("triton", triton.__version__)
except ImportError as e:
    print("triton missing:", e)
EOF
  local rc=$?
  # what a build here links with (a static libstdc++ once came from this environment)
  "$PYTHON" -c 'import sysconfig as s; print("LDSHARED", s.get_config_var("LDSHARED")); print("CXX", s.get_config_var("CXX"))'
  env | grep -E '^(CC|CXX|CFLAGS|CXXFLAGS|CPPFLAGS|LDFLAGS|LDSHARED|TORCH_CUDA_ARCH_LIST)=' || true
  command -v c++ >/dev/null && c++ --version | head -1
  command -v nvcc >/dev/null && nvcc --version
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  git rev-parse --short HEAD 2>/dev/null || echo "commit: unknown"
  return $rc
}

step_install() {
  # The CUDA kernels are wanted here: fail loudly rather than build CPU-only. Only this
  # GPU's architecture (halves the nvcc time), every core for ninja.
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST="$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')" || return 1
    export TORCH_CUDA_ARCH_LIST
  fi
  export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
  local knob=MIXEMB_FORCE_CUDA
  if [ "${REUSE_EXT:-0}" = 1 ] && ls mixemb/_C*.so >/dev/null 2>&1; then
    # a second call on a fresh machine: the extension built by the first (carried back
    # from $OUT into mixemb/) is kept, and only the Python package is installed
    knob=MIXEMB_SKIP_EXT
    echo "REUSE_EXT=1: keeping $(ls mixemb/_C*.so)"
  fi
  # -v: the compile and link lines go to the log
  env "$knob=1" "$PYTHON" -m pip install -v --no-build-isolation --no-deps -e . &&
    "$PYTHON" -c 'import sys, mixemb._ext as e; print(e.describe()); sys.exit(0 if e.HAS_CUDA_KERNELS else 1)' ||
    return 1
  # how it was linked: one C++ runtime (the process's), OpenMP
  "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_ops_ragged.py \
    -k "built_with_openmp or shared_cpp_runtime" || return 1
  # the built extension comes back too (when small enough), so that a second call can
  # skip the build: copy it into mixemb/, carry it, and set REUSE_EXT=1
  local so
  for so in mixemb/_C*.so; do
    [ "$(stat -c %s "$so")" -lt $((16 * 1024 * 1024)) ] && cp "$so" "$OUT/"
  done
  return 0
}

step_pytest_cuda() {
  # Every test marked cuda: the CUDA cases of the shared `device` fixture (every kernel
  # variant of the ragged ops among them) and the GPU-only tests. pytest-xdist, where
  # present, spreads the Triton compiles over 4 processes.
  local par=()
  "$PYTHON" -c 'import xdist' 2>/dev/null && par=(-n 4)
  "$PYTHON" -m pytest -m cuda -q -p no:cacheprovider "${par[@]}" --junitxml="$WORK/pytest_cuda.xml"
}

step_bench_serve() {
  # every kernel variant side by side (bench_serve.VARIANTS, op arguments)
  "$PYTHON" bench/bench_serve.py --device cuda --shape full --sweep --variants \
    --out "$WORK/bench_serve.json"
}

step_bench_train() {
  "$PYTHON" bench/bench_train.py --device cuda --shape full --out "$WORK/bench_train.json"
}

step_sanitize_ragged() {
  # The CUDA ragged kernels' edge-case tests (every kernel variant, chosen by op argument;
  # every group size, bad ids, malformed offsets, unaligned out=) under compute-sanitizer's
  # memcheck: an out-of-bounds or misaligned access fails the step even where the results
  # came out right.
  local cs
  cs="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
  "$cs" --tool memcheck --error-exitcode 97 --print-limit 20 \
    "$PYTHON" -m pytest tests/test_ops_ragged.py -m cuda -q -p no:cacheprovider \
    -k "every_row or bag_variants or out_of_range or malformed or alignment or inconsistent"
}

step_sanitize_fuzz() {
  # The property test of the serving ops on random and corrupt tables, on the GPU, under
  # memcheck (its cases run in a child Python, which compute-sanitizer follows)
  local cs
  cs="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
  MIXEMB_FUZZ_DEVICE=cuda "$cs" --tool memcheck --error-exitcode 97 --print-limit 20 \
    "$PYTHON" -m pytest tests/test_ops_ragged_fuzz.py -q -p no:cacheprovider
}

step_bench_reference() {
  "$PYTHON" bench/bench_reference.py --device cuda --shape full --out "$WORK/bench_reference.json"
}

step_bench_train_sweep() {
  # hot L2 only: the sweep is about scaling over K, lookups and ids; cold doubles its rows
  "$PYTHON" bench/bench_train.py --device cuda --shape full --sweep --sweep-only-fused \
    --ops fwd,alpha_step,weights_step,weights_step_sgd --warmup 3 --repeats 10 --l2 hot \
    --out "$WORK/bench_train_sweep.json"
}

# name timeout_s, in priority order: what a short call must not miss comes first
STEPS=(
  "versions 30"
  "install 200"
  "pytest_cuda 180"
  "bench_serve 120"
  "bench_train 120"
  "sanitize_ragged 120"
  "sanitize_fuzz 120"
  "bench_reference 90"
  "bench_train_sweep 240"
)

for entry in "${STEPS[@]}"; do export -f "step_${entry%% *}"; done

# Packs what exists so far into $OUT (called after every step).
publish() {
  tar -czf "$OUT/gpu_check.tar.gz.tmp" -C "$WORK" . && mv "$OUT/gpu_check.tar.gz.tmp" "$OUT/gpu_check.tar.gz"
  for f in "$WORK"/bench_*.json; do [ -e "$f" ] && cp "$f" "$OUT/"; done
  {
    printf '{"budget_s": %s, "elapsed_s": %s, "steps": [' "$BUDGET_S" "$SECONDS"
    local sep=""
    for row in "${ROWS[@]}"; do printf '%s%s' "$sep" "$row"; sep=", "; done
    printf ']}\n'
  } >"$OUT/summary.json.tmp" && mv "$OUT/summary.json.tmp" "$OUT/summary.json"
}

failed=0
ROWS=()
: >"$OUT/summary.txt"
SECONDS=0
for entry in "${STEPS[@]}"; do
  read -r name limit <<<"$entry"
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
  left=$((BUDGET_S - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt "$MIN_STEP_S" ]; then
    rc=-1 took=0 status="SKIPPED (budget: ${left}s left)"
    failed=1
  else
    start=$SECONDS
    timeout --kill-after=10 "$limit" bash -c "step_$name" >"$WORK/$name.log" 2>&1
    rc=$?
    took=$((SECONDS - start))
    status=ok
    if [ "$rc" -ne 0 ]; then
      status=FAILED
      [ "$rc" -eq 124 ] && status="FAILED (timeout ${limit}s)"
      failed=1
    fi
  fi
  printf '%-18s rc=%-3s %4ss  %s\n' "$name" "$rc" "$took" "$status" | tee -a "$OUT/summary.txt"
  ROWS+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $took, \"status\": \"$status\"}")
  publish
done
publish
rm -rf "$WORK"

exit $failed
