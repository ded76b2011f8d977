"""Finds NVRTC for the CUDA kernels, which are compiled at first use.

The native module opens `libnvrtc.so.13` (or `.12`) by name. A pip-installed
NVRTC (the `nvidia-cuda-nvrtc` wheel, which torch's CUDA build depends on)
is not on the loader's path, so its library is loaded here once, globally,
before the first CUDA call: a later open by the same name then finds it.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys

_done = False


def preload() -> None:
    """Loads the first pip-installed libnvrtc found on `sys.path` (newest CUDA first)."""
    global _done
    if _done:
        return
    _done = True
    candidates = []
    for root in sys.path:
        for pattern in ("nvidia/cu13/lib/libnvrtc.so.13", "nvidia/cuda_nvrtc/lib/libnvrtc.so.1[23]", "nvidia/cu12/lib/libnvrtc.so.12"):
            candidates += glob.glob(os.path.join(root, pattern))
    for path in sorted(candidates, key=lambda p: p.rsplit(".", 1)[-1], reverse=True):
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            return
        except OSError:
            continue
