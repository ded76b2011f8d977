"""Tensors in and out: any DLPack producer (torch tensors, NumPy arrays, ...)
is handed to the native module as it is, which reads and writes it in
place; outputs are allocated here, of the same kind as the inputs.

The caller keeps every tensor alive until the native call returns (they are
locals of the calling frame).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _nvrtc


def is_torch(x: Any) -> bool:
    """Whether `x` is a torch tensor (without importing torch)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def stream_of(t: Any) -> Optional[int]:
    """The stream the native module orders its work on, for a call whose
    tensors are on `t`'s device: torch's current stream there (its raw
    handle) for a CUDA torch tensor; None otherwise (CPU tensors, or the
    legacy default stream for other CUDA producers). A call's tensors are
    all on one device (the native module checks), so one tells. Finds NVRTC
    when the call is on CUDA."""
    if is_torch(t):
        if not t.is_cuda:
            return None
        import torch

        _nvrtc.preload()
        return int(torch.cuda.current_stream(t.device).cuda_stream)
    device = getattr(t, "__dlpack_device__", None)
    if device is not None and device()[0] == 2:  # kDLCUDA
        _nvrtc.preload()
    return None


def empty_like(x: Any) -> Any:
    """A new contiguous tensor of `x`'s kind, shape, dtype and device."""
    if is_torch(x):
        import torch

        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if isinstance(x, np.ndarray):
        return np.empty(x.shape, dtype=x.dtype)
    raise TypeError(f"expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def dtype_name(dtype: Any) -> str:
    """`float32`, `float16` or `bfloat16` (others are refused by the native module)."""
    if isinstance(dtype, str):
        return dtype.removeprefix("torch.")
    if type(dtype).__module__.startswith("torch"):
        return str(dtype).removeprefix("torch.")
    return np.dtype(dtype).name
