#!/usr/bin/env bash
# One pass over everything that needs a GPU, for a lent machine (H100/H200, torch + triton
# + nvcc preinstalled, no internet). Run from anywhere:
#
#     OUT=/some/dir bash bench/gpu_check.sh        # default OUT=./gpu_out
#     ONLY="versions bench_reference" bash bench/gpu_check.sh   # a subset, in STEPS order
#
# Each step runs under `timeout`, logs to $OUT/<step>.log, and the run keeps going when a
# step fails; $OUT/summary.txt lists every step's exit code and seconds, and the script
# exits non-zero at the end if any step failed. The timeouts add up to about 17 minutes
# and a device call allows 10, so run it as two calls on the same warm machine:
#
#     ONLY="versions nvidia_smi install pytest_cuda bench_train" bash bench/gpu_check.sh
#     ONLY="bench_serve bench_reference bench_train_sweep" bash bench/gpu_check.sh
#
# To add a step: write a `step_<name>` function and add "<name> <timeout_s>" to STEPS.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
export OUT PYTHON

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
  command -v nvcc >/dev/null && nvcc --version
  git rev-parse --short HEAD 2>/dev/null || echo "commit: unknown"
  return $rc
}

step_nvidia_smi() {
  nvidia-smi
}

step_install() {
  # the CUDA kernels are wanted here: fail loudly rather than build CPU-only
  MIXEMB_FORCE_CUDA=1 "$PYTHON" -m pip install --no-build-isolation --no-deps -e .
}

step_pytest_cuda() {
  "$PYTHON" -m pytest -m cuda -q
  local rc=$?
  # 5 = no tests collected: the CUDA tests arrive with later issues.
  if [ "$rc" -eq 5 ]; then echo "no cuda tests collected (exit 5), not a failure"; return 0; fi
  return $rc
}

step_bench_serve() {
  "$PYTHON" bench/bench_serve.py --device cuda --shape full --sweep \
    --out "$OUT/bench_serve.json"
}

step_bench_train() {
  "$PYTHON" bench/bench_train.py --device cuda --shape full --out "$OUT/bench_train.json"
}

step_bench_train_sweep() {
  "$PYTHON" bench/bench_train.py --device cuda --shape full --sweep --sweep-only-fused \
    --ops fwd,alpha_step,weights_step,weights_step_sgd --warmup 3 --repeats 10 \
    --out "$OUT/bench_train_sweep.json"
}

step_bench_reference() {
  "$PYTHON" bench/bench_reference.py --device cuda --shape full \
    --out "$OUT/bench_reference.json"
}

# name timeout_s, run in order
STEPS=(
  "versions 30"
  "nvidia_smi 15"
  "install 200"
  "pytest_cuda 150"
  "bench_train 120"
  "bench_serve 120"
  "bench_reference 120"
  "bench_train_sweep 240"
)

for entry in "${STEPS[@]}"; do export -f "step_${entry%% *}"; done

failed=0
: >"$OUT/summary.txt"
for entry in "${STEPS[@]}"; do
  read -r name limit <<<"$entry"
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
  start=$SECONDS
  timeout --kill-after=10 "$limit" bash -c "step_$name" >"$OUT/$name.log" 2>&1
  rc=$?
  took=$((SECONDS - start))
  status=ok
  if [ "$rc" -ne 0 ]; then
    status=FAILED
    [ "$rc" -eq 124 ] && status="FAILED (timeout ${limit}s)"
    failed=1
  fi
  printf '%-16s rc=%-3s %4ss  %s\n' "$name" "$rc" "$took" "$status" | tee -a "$OUT/summary.txt"
done

exit $failed
