"""Tensors in and out: torch tensors and NumPy arrays described for the
native module (data address, dtype, shape, byte strides, device), and
outputs allocated once, of the same kind as the inputs.

Nothing here copies a tensor: the native module reads predictions where
they are and writes into the outputs allocated here. The caller keeps every
described object alive until the native call returns (they are locals of
the calling frame).
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

Desc = Tuple[int, str, list, list, str]


def is_torch(x: Any) -> bool:
    """Whether `x` is a torch tensor (without importing torch)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def describe(x: Any) -> Desc:
    """The native descriptor of a torch tensor or NumPy array."""
    if is_torch(x):
        size = x.element_size()
        dtype = str(x.dtype).removeprefix("torch.")
        return (x.data_ptr(), dtype, list(x.shape), [s * size for s in x.stride()], str(x.device))
    if isinstance(x, np.ndarray):
        return (x.__array_interface__["data"][0], x.dtype.name, list(x.shape), list(x.strides), "cpu")
    raise TypeError(f"expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


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
