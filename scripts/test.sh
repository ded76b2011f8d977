#!/usr/bin/env bash
# The project's test command: installs what the tests need (the NVRTC wheel, so
# every CUDA kernel is compiled to PTX even on a machine with no GPU), then runs
# the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."

if nvrtc_dir=$(scripts/install-nvrtc.sh); then
    export LD_LIBRARY_PATH="${nvrtc_dir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
    echo "warning: NVRTC could not be installed; kernel compile tests will skip" >&2
fi

cargo test --workspace --all-targets --locked
