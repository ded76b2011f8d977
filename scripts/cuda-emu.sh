#!/usr/bin/env bash
# Builds the CUDA driver + NCCL stand-in (tests/cuda-emu, release) and prints
# the folder that holds its libcuda.so and libnccl.so, for LD_LIBRARY_PATH:
#
#   export LD_LIBRARY_PATH="$(scripts/cuda-emu.sh):$(scripts/install-nvrtc.sh)"
#   cfg selftest --device cuda        # every kernel runs on the CPU, checked
#
# libnccl.so is a link to libcuda.so: one library, one process-wide state
# (the dynamic loader maps a file once, whatever name it is opened by).
# The folder defaults to target/cuda-emu; set CFG_CUDA_EMU_DIR to move it.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${CFG_CUDA_EMU_DIR:-$root/target/cuda-emu}"

(cd "$root" && cargo build --release --locked -p cuda-emu --lib >&2)
target="$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
mkdir -p "$dest"
cp -f "$target/release/libcuda_emu.so" "$dest/libcuda.so.tmp"
mv -f "$dest/libcuda.so.tmp" "$dest/libcuda.so"
ln -sfn libcuda.so "$dest/libnccl.so"
echo "$dest"
