#!/usr/bin/env bash
# The Python package's tests (python/tests, pytest): creates a virtual
# environment under target/pyenv (ignored by git; delete it to start over),
# installs the pinned test requirements from PyPI (python/requirements-test.txt:
# torch, diffusers 0.42.1, numpy, pytest, maturin; no pip cache, as torch's
# wheels would take a second copy of several GB), builds and installs
# cfg_guidance with `pip install ./python` (maturin, release build in the
# workspace's target/), then runs the tests (arguments, if any, go to pytest in
# place of the folder).
#
# scripts/test.sh calls it with CFG_PYTHON_EXTENSION set to the extension it
# built with its test build's profile and features (python/ is a workspace
# member): the package is then put together from python/cfg_guidance and that
# library in target/pytest-package, which pytest imports first (PYTHONPATH), and
# maturin compiles nothing (a release build of the workspace takes minutes).
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
if [ -n "${CFG_PYTHON_EXTENSION:-}" ]; then
    # The layout maturin installs: the Python sources, the stubs and the
    # extension as cfg_guidance/_native.abi3.so (built as a stable-ABI module).
    package="$root/target/pytest-package"
    rm -rf "$package"
    mkdir -p "$package"
    cp -r python/cfg_guidance "$package/"
    cp "$CFG_PYTHON_EXTENSION" "$package/cfg_guidance/_native.abi3.so"
    export PYTHONPATH="$package${PYTHONPATH:+:$PYTHONPATH}"
else
    # maturin from the venv builds the extension (cargo reuses target/ between runs).
    PATH="$venv/bin:$PATH" "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-build-isolation --no-deps --force-reinstall ./python
fi
# From the root, so `import cfg_guidance` is the installed package, not python/cfg_guidance.
"$venv/bin/python" -m pytest -q -p no:cacheprovider -rs "${@:-python/tests}"
