#!/usr/bin/env bash
# The GPU checks, in one run, on a GPU machine with no Rust toolchain: the
# kernels against the CPU (`cfg selftest`), their speed against copy
# bandwidth (`cfg bench`), a CUDA sampling run against the CPU's bits, and,
# where torch sees the GPU, the Python package on torch CUDA tensors (bits
# against the CPU, timings against torch eager). Results go to $OUT (or
# target/device-out). Build the bundle first: scripts/device-bundle.sh.
#
#   bash scripts/device-check.sh [BUNDLE]          # BUNDLE: target/device
#
# CFG_SELFTEST_SIZE=small shortens the selftest (for a try on the CUDA stand-in).
set -uo pipefail
bundle="${1:-target/device}"
out="${OUT:-target/device-out}"
mkdir -p "$out"
cfg="$bundle/cfg"
python="${PYTHON:-python3}"

# NVRTC compiles the kernels at run time: a pip-installed one (torch's CUDA
# build brings it) when none is on the loader's path.
nvrtc="$("$python" - 2>/dev/null <<'PY'
import glob, os, sys
for root in sys.path:
    for lib in sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", "libnvrtc.so.1[23]")), reverse=True):
        print(os.path.dirname(lib))
        raise SystemExit
PY
)"
[ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$nvrtc${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

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
step selftest 240 "$cfg" selftest --device cuda --size "${CFG_SELFTEST_SIZE:-full}"
step bench 180 "$cfg" bench --device cuda --json
step sample-cpu 120 "$cfg" sample --model tokens --steps 8 --ranks 1 --no-plot --out "$out/cpu.safetensors"
step sample-cuda 120 "$cfg" sample --model tokens --steps 8 --ranks 1 --device cuda --no-plot --out "$out/cuda.safetensors"
if cmp -s "$out/cpu.safetensors" "$out/cuda.safetensors"; then
    echo "sample: the CUDA run's samples have the CPU run's bits" | tee "$out/sample-compare.txt"
else
    echo "sample: the CUDA run's samples DIFFER from the CPU run's" | tee "$out/sample-compare.txt"
    status=1
fi

wheel="$(ls "$bundle"/cfg_guidance-*.whl 2>/dev/null | head -n 1)"
if [ -n "$wheel" ] && "$python" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    site="$(mktemp -d)"
    "$python" -m pip install --quiet --no-deps --no-index --target "$site" "$wheel"
    step python-cuda 180 env PYTHONPATH="$site" CFG_REQUIRE_CUDA=1 "$python" -m pytest -q -p no:cacheprovider python/tests/test_cuda.py
    step python-bench 240 env PYTHONPATH="$site" "$python" scripts/bench-python.py
else
    echo "python: skipped (no wheel in $bundle, or torch does not see a GPU)" | tee "$out/python-bench.txt"
fi
exit "$status"
