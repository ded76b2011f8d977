#!/usr/bin/env bash
# Builds what a GPU check needs on a machine without Rust or network (the GPU
# machine a session may borrow): the `cfg` binary (release, stripped) and the
# cfg_guidance wheel (abi3: any CPython >= 3.9), into target/device (ignored
# by git), beside scripts/device-check.sh, which runs them there:
#
#   scripts/device-bundle.sh                       # here
#   bash scripts/device-check.sh target/device     # on the GPU machine (carry target/device)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dest="$root/target/device"
rm -rf "$dest" && mkdir -p "$dest"
cargo build --release --locked -p cfg-cli --bin cfg >&2
target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
cp "$target/release/cfg" "$dest/cfg"
strip "$dest/cfg"
venv="${CFG_PYENV:-$root/target/pyenv}"
if [ -x "$venv/bin/maturin" ]; then
    (cd python && PATH="$venv/bin:$PATH" maturin build --release --quiet --out "$dest" >&2)
else
    echo "device-bundle: no maturin in $venv (run scripts/test-python.sh once): the bundle has no wheel" >&2
fi
ls -l "$dest" >&2
du -sh "$dest" >&2
