#!/usr/bin/env bash
# The Python package's tests (python/tests, pytest): creates a virtual
# environment under target/pyenv (ignored by git; delete it to start over),
# installs the pinned test requirements from PyPI (python/requirements-test.txt:
# torch, diffusers 0.42.1, numpy, pytest, maturin; no pip cache, as torch's
# wheels would take a second copy of several GB), builds and installs
# cfg_guidance with `pip install ./python` (maturin, release build in the
# workspace's target/), then runs the tests (arguments, if any, go to pytest in
# place of the folder). scripts/test.sh calls it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${CFG_PYENV:-$root/target/pyenv}"
python="${PYTHON:-python3}"
requirements="python/requirements-test.txt"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
# Reinstall the requirements when their list changes.
stamp="$venv/.requirements-$(sha256sum "$requirements" | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    # pip unpacks several GB of wheels: on the build disk (target/tmp), not in a small /tmp.
    mkdir -p "$root/target/tmp"
    TMPDIR="$root/target/tmp" "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir -r "$requirements"
    touch "$stamp"
fi
# maturin from the venv builds the extension (cargo reuses target/ between runs).
PATH="$venv/bin:$PATH" "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-build-isolation --no-deps --force-reinstall ./python
# From the root, so `import cfg_guidance` is the installed package, not python/cfg_guidance.
"$venv/bin/python" -m pytest -q -p no:cacheprovider -rs "${@:-python/tests}"
