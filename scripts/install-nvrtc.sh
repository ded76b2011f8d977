#!/usr/bin/env bash
# Installs NVIDIA's NVRTC 13.0 wheel into a project-local folder (no GPU needed)
# and prints the folder that holds libnvrtc.so.13, for LD_LIBRARY_PATH:
#
#   export LD_LIBRARY_PATH="$(scripts/install-nvrtc.sh):$LD_LIBRARY_PATH"
#   cargo test -p cfg-runtime --test cuda_ptx
#
# The folder defaults to target/nvrtc (ignored by git); set CFG_NVRTC_DIR to move it.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${CFG_NVRTC_DIR:-$root/target/nvrtc}"
python="${PYTHON:-python3}"
lib="$dest/nvidia/cu13/lib"

if [ ! -e "$lib/libnvrtc.so.13" ]; then
    "$python" -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$dest" "nvidia-cuda-nvrtc==13.0.88" >&2
fi
if [ ! -e "$lib/libnvrtc.so.13" ]; then
    echo "install-nvrtc: libnvrtc.so.13 not found under $lib" >&2
    exit 1
fi
echo "$lib"
