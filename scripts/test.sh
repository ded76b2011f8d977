#!/usr/bin/env bash
# The project's test command: installs what the tests need (the NVRTC wheel, so
# every CUDA kernel is compiled to PTX even on a machine with no GPU), then runs
# the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# A kernel that does not compile must fail the tests, so NVRTC is required here
# (the PTX tests fail instead of skipping) unless CFG_SKIP_NVRTC=1 says otherwise.
if [ "${CFG_SKIP_NVRTC:-0}" = 1 ]; then
    echo "CFG_SKIP_NVRTC=1: the kernel compile tests will skip" >&2
elif nvrtc_dir=$(scripts/install-nvrtc.sh); then
    export LD_LIBRARY_PATH="${nvrtc_dir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export CFG_REQUIRE_NVRTC=1
else
    echo "error: NVRTC could not be installed (python3 -m pip and PyPI are needed);" >&2
    echo "       set CFG_SKIP_NVRTC=1 to run the tests without compiling the kernels" >&2
    exit 1
fi

cargo test --workspace --all-targets --locked
