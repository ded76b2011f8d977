#!/usr/bin/env bash
# The project's test command: installs what the tests need (the NVRTC wheel, so
# every CUDA kernel is compiled to PTX even on a machine with no GPU), runs the
# whole workspace's tests, the Python package's (scripts/test-python.sh), then
# runs the CUDA tests again on a CUDA device: the
# CUDA stand-in (tests/cuda-emu, our PTX run on the CPU with checked memory and
# NCCL across threads), or the real driver where a GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
# A run builds everything once: incremental caches would only take disk in
# target/. Set CARGO_INCREMENTAL=1 to keep them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# A kernel that does not compile must fail the tests, so NVRTC is required here
# (the PTX tests fail instead of skipping) unless CFG_SKIP_NVRTC=1 says otherwise.
if [ "${CFG_SKIP_NVRTC:-0}" = 1 ]; then
    echo "CFG_SKIP_NVRTC=1: the kernel compile tests and the CUDA run will skip" >&2
elif nvrtc_dir=$(scripts/install-nvrtc.sh); then
    export LD_LIBRARY_PATH="${nvrtc_dir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export CFG_REQUIRE_NVRTC=1
else
    echo "error: NVRTC could not be installed (python3 -m pip and PyPI are needed);" >&2
    echo "       set CFG_SKIP_NVRTC=1 to run the tests without compiling the kernels" >&2
    exit 1
fi

# Kernels compiled by NVRTC are kept in target/ptx-cache (a clean clone starts
# empty, so the first compile of each kernel is a real one); later processes
# (the CUDA run below, the CLI tests) read them instead of compiling for ~18 s each.
export CFG_PTX_CACHE="${CFG_PTX_CACHE:-$PWD/target/ptx-cache}"

# The Python extension (python/, a workspace member) is built as maturin builds
# it: an extension module, not linked to libpython. Set for every cargo command
# here, so that none of them builds PyO3 again.
export PYO3_BUILD_EXTENSION_MODULE=1

# 1. Everything, as a machine without a GPU sees it (the no-driver paths run).
cargo test --workspace --all-targets --locked

# 2. The Python package (python/), tested with pytest against diffusers' own
#    guiders and torch.distributed (gloo) in target/pyenv. It needs PyPI;
#    CFG_SKIP_PYTHON=1 skips it. Its extension is built in step 1's profile and
#    features, so that only the extension itself is compiled (seconds), where a
#    release build of the workspace (`pip install ./python`, which
#    scripts/test-python.sh runs when called alone) takes minutes.
if [ "${CFG_SKIP_PYTHON:-0}" = 1 ]; then
    echo "CFG_SKIP_PYTHON=1: the Python package's tests are skipped" >&2
else
    cargo build --workspace --all-targets --profile test --locked
    export CFG_PYTHON_EXTENSION="${CARGO_TARGET_DIR:-target}/debug/lib_native.so"
    scripts/test-python.sh
fi

[ "${CFG_SKIP_NVRTC:-0}" = 1 ] && exit 0

# 3. The CUDA tests on a CUDA device: the real one where a GPU is present
#    (nvidia-smi lists one), else the stand-in with 4 emulated GPUs of 2
#    multiprocessors each (small shapes then reach every grid-size limit).
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "== CUDA tests on the real driver ($(nvidia-smi -L | head -n 1))" >&2
else
    emu_dir=$(scripts/cuda-emu.sh)
    export LD_LIBRARY_PATH="${emu_dir}:${LD_LIBRARY_PATH}"
    export CFG_EMU_DEVICES=4 CFG_EMU_SMS=2
    echo "== CUDA tests on the CUDA stand-in ($emu_dir, $CFG_EMU_DEVICES emulated GPUs)" >&2
fi
export CFG_REQUIRE_CUDA=1
# `--workspace` keeps stage 1's feature set, so nothing is compiled again.
cargo test --workspace --locked --test cuda_nccl --test cuda_ptx --test steady_state
# One test at a time: they share the emulated GPUs and the stand-in's copy counters.
cargo test --workspace --locked --test runtime_cuda -- --test-threads=1
cargo test --workspace --locked --test cli_cuda -- --nocapture
# The Python package on CUDA memory (DLPack import, the kernels in place).
if [ "${CFG_SKIP_PYTHON:-0}" != 1 ]; then
    scripts/test-python.sh python/tests/test_cuda.py
fi
