#!/usr/bin/env bash
# PyTorch eager vs the cfg CPU evaluator, every library operator, interleaved
# row by row on the same inputs: scripts/bench-cpu.sh [op,op,...]
# Uses CFG_PYTHON if set, else the test environment's python (target/pyenv,
# made by scripts/test.sh) when it is there, else installs the tests' pinned
# torch from PyPI into target/torch on first use. CFG_BENCH_SIZES=262144,4792320 picks the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CFG_PYTHON:-}" ] && target/pyenv/bin/python -c "import torch" 2>/dev/null; then
    export CFG_PYTHON=target/pyenv/bin/python
fi
py=${CFG_PYTHON:-python3}
if [ -z "${CFG_PYTHON:-}" ] && ! PYTHONPATH=target/torch python3 -c "import torch" 2>/dev/null; then
    # The torch the Python tests pin (PyPI's build, as most users install it), so that
    # the baseline stays the same between runs. The table's header names its version.
    torch=$(grep '^torch==' python/requirements-test.txt)
    python3 -m pip install --quiet --target target/torch "$torch"
fi
bins=$(cargo bench -p cfg-core --bench ops --bench ops_mimalloc --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] in ("ops", "ops_mimalloc") and m.get("executable"):
        print(m["target"]["name"], m["executable"])')
system=$(echo "$bins" | awk '$1 == "ops" {print $2}')
mimalloc=$(echo "$bins" | awk '$1 == "ops_mimalloc" {print $2}')
# target/torch only when it is the torch in use (it would shadow CFG_PYTHON's own).
if [ -z "${CFG_PYTHON:-}" ]; then
    export PYTHONPATH=target/torch
fi
exec "$py" scripts/bench_torch.py "$system" "$mimalloc" "${1:-}"
