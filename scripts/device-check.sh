#!/usr/bin/env bash
# The GPU checks, in one run, on a GPU machine with no Rust toolchain: the
# kernels against the CPU (`cfg selftest`), a CUDA sampling run against the
# CPU's bits, where torch sees the GPU the Python package on torch CUDA
# tensors (bits against the CPU, timings against torch eager), and the
# kernels' speed against copy bandwidth (`cfg bench`). Results go to $OUT (or
# target/device-out). Build the bundle first: scripts/device-bundle.sh.
#
#   bash scripts/device-check.sh [BUNDLE [STEP...]]   # BUNDLE: target/device
#
# STEPs: selftest sample python bench (the default: all four) and sanitize
# (compute-sanitizer's memcheck and racecheck on the small selftest; slow).
# CFG_SELFTEST_SIZE=small shortens the selftest (for a try on the CUDA stand-in).
set -uo pipefail
bundle="${1:-target/device}"
shift || true
steps=" ${*:-selftest sample python bench} "
out="${OUT:-target/device-out}"
mkdir -p "$out"
cfg="$bundle/cfg"
python="${PYTHON:-python3}"
source "$(dirname "${BASH_SOURCE[0]}")/device-env.sh"
wants() { [[ "$steps" == *" $1 "* ]]; }

status=0
step() { # step NAME LIMIT_S COMMAND...: output to $out/NAME.txt, its tail shown
    local name="$1" limit="$2"
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    echo "rc $rc" >>"$out/$name.txt"
    tail -n 25 "$out/$name.txt"
    [ "$rc" = 0 ] || status=1
}

(nvidia-smi -L || true) | tee "$out/gpu.txt"
wants selftest && step selftest 240 "$cfg" selftest --device cuda --size "${CFG_SELFTEST_SIZE:-full}"
if wants sample; then
    samples="$(mktemp -d)" # not in $out: only eight files come back from there
    step sample-cpu 120 "$cfg" sample --model tokens --steps 8 --ranks 1 --no-plot --out "$samples/cpu.safetensors"
    step sample-cuda 120 "$cfg" sample --model tokens --steps 8 --ranks 1 --device cuda --no-plot --out "$samples/cuda.safetensors"
    if cmp -s "$samples/cpu.safetensors" "$samples/cuda.safetensors"; then
        echo "sample: the CUDA run's samples have the CPU run's bits" | tee "$out/sample-compare.txt"
    else
        echo "sample: the CUDA run's samples DIFFER from the CPU run's" | tee "$out/sample-compare.txt"
        status=1
    fi
fi
if wants sanitize; then
    for tool in memcheck racecheck; do
        step "sanitize-$tool" 120 compute-sanitizer --tool "$tool" --error-exitcode 3 --print-limit 20 \
            "$cfg" selftest --device cuda --size small
    done
fi

wheel="$(ls "$bundle"/cfg_guidance-*.whl 2>/dev/null | head -n 1)"
site=""
if wants python && [ -n "$wheel" ] && "$python" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    site="$(mktemp -d)"
    "$python" -m pip install --quiet --no-deps --no-index --target "$site" "$wheel"
    step python-cuda 180 env PYTHONPATH="$site" CFG_REQUIRE_CUDA=1 "$python" -m pytest -q -p no:cacheprovider python/tests/test_cuda.py
fi
# Speed last: the correctness checks above come back even if these run out of time.
wants bench && step bench 180 "$cfg" bench --device cuda --json
if [ -n "$site" ]; then
    step python-bench 240 env PYTHONPATH="$site" "$python" scripts/bench-python.py
elif wants python; then
    echo "python: skipped (no wheel in $bundle, or torch does not see a GPU)" | tee "$out/python-bench.txt"
fi
exit "$status"
