"""A minimal CUDA array for the tests: device memory from the CUDA driver
API (ctypes), exported through DLPack as a CUDA tensor, as torch exports
its CUDA tensors. On a machine without a GPU the driver is the project's
CUDA stand-in (scripts/cuda-emu.sh on LD_LIBRARY_PATH), so the package's
CUDA path (DLPack import of device memory, the kernels, stream ordering)
runs in CI without torch's CUDA build.
"""

from __future__ import annotations

import ctypes
from typing import List, Optional, Tuple

import numpy as np

# DLPack ABI (dlpack.h): device type 2 is CUDA; type codes 2 float, 4 bfloat.
KDL_CUDA = 2
CODES = {"float32": (2, 32), "float16": (2, 16), "bfloat16": (4, 16)}


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class DLManagedTensor(ctypes.Structure):
    pass


DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor))
DLManagedTensor._fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", DELETER)]

_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_CAPSULE_NAME = b"dltensor"


@DELETER
def _keep(_managed):
    """The memory belongs to the CudaArray: a consumer's release frees nothing."""


class Driver:
    """The CUDA driver API calls the tests need."""

    def __init__(self) -> None:
        lib = None
        errors = []
        for name in ("libcuda.so.1", "libcuda.so"):
            try:
                lib = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
                break
            except OSError as e:
                errors.append(str(e))
        if lib is None:
            raise OSError("no CUDA driver: " + "; ".join(errors))
        self.lib = lib
        self.check(lib.cuInit(0), "cuInit")
        count = ctypes.c_int(0)
        self.check(lib.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
        self.count = count.value
        self.contexts = {}

    @staticmethod
    def check(rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what} failed with CUDA error {rc}")

    def use(self, ordinal: int) -> None:
        """Makes device `ordinal`'s primary context current (the one torch and cfg_guidance use)."""
        if ordinal not in self.contexts:
            dev, ctx = ctypes.c_int(0), ctypes.c_void_p(0)
            self.check(self.lib.cuDeviceGet(ctypes.byref(dev), ordinal), "cuDeviceGet")
            self.check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
            self.contexts[ordinal] = ctx
        self.check(self.lib.cuCtxSetCurrent(self.contexts[ordinal]), "cuCtxSetCurrent")

    def alloc(self, ordinal: int, nbytes: int) -> int:
        self.use(ordinal)
        ptr = ctypes.c_uint64(0)
        self.check(self.lib.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cuMemAlloc")
        return ptr.value

    def free(self, ordinal: int, ptr: int) -> None:
        self.use(ordinal)
        self.lib.cuMemFree_v2(ctypes.c_uint64(ptr))

    def upload(self, ordinal: int, ptr: int, host: np.ndarray) -> None:
        self.use(ordinal)
        host = np.ascontiguousarray(host)
        rc = self.lib.cuMemcpyHtoD_v2(ctypes.c_uint64(ptr), host.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(host.nbytes))
        self.check(rc, "cuMemcpyHtoD")

    def download(self, ordinal: int, ptr: int, host: np.ndarray) -> None:
        self.use(ordinal)
        self.check(self.lib.cuCtxSynchronize(), "cuCtxSynchronize")
        rc = self.lib.cuMemcpyDtoH_v2(host.ctypes.data_as(ctypes.c_void_p), ctypes.c_uint64(ptr), ctypes.c_size_t(host.nbytes))
        self.check(rc, "cuMemcpyDtoH")


class CudaArray:
    """Device memory holding a tensor of `shape` and `dtype` (float32,
    float16 or bfloat16), a DLPack producer on CUDA device `device`.
    `strides` (in elements) describes a non-contiguous view when given."""

    def __init__(self, driver: Driver, shape, dtype: str, device: int = 0, strides: Optional[Tuple[int, ...]] = None):
        self.driver, self.shape, self.dtype, self.device = driver, tuple(shape), dtype, device
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * CODES[dtype][1] // 8
        if strides is not None:
            self.nbytes = (sum((n - 1) * s for n, s in zip(self.shape, strides)) + 1) * CODES[dtype][1] // 8
        self.ptr = driver.alloc(device, self.nbytes)
        self.strides = strides
        self.streams: List[object] = []  # the `stream` of each __dlpack__ call
        self._alive: list = []

    @classmethod
    def upload(cls, driver: Driver, values: np.ndarray, dtype: str, device: int = 0) -> "CudaArray":
        """A device copy of `values` (float32), rounded to `dtype` as torch rounds."""
        a = cls(driver, values.shape, dtype, device)
        driver.upload(device, a.ptr, host_bits(values, dtype))
        return a

    def bits(self) -> np.ndarray:
        """The raw element bits (uint32 or uint16), copied back."""
        host = np.empty(self.shape, dtype=np.uint32 if self.dtype == "float32" else np.uint16)
        self.driver.download(self.device, self.ptr, host)
        return host

    def __dlpack_device__(self):
        return (KDL_CUDA, self.device)

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        self.streams.append(stream)
        ndim = len(self.shape)
        shape = (ctypes.c_int64 * max(ndim, 1))(*self.shape)
        strides = (ctypes.c_int64 * max(ndim, 1))(*self.strides) if self.strides is not None else None
        code, bits = CODES[self.dtype]
        managed = DLManagedTensor()
        managed.dl_tensor = DLTensor(
            ctypes.c_void_p(self.ptr),
            DLDevice(KDL_CUDA, self.device),
            ndim,
            DLDataType(code, bits, 1),
            shape,
            strides if strides is not None else ctypes.POINTER(ctypes.c_int64)(),
            0,
        )
        managed.deleter = _keep
        self._alive.append((managed, shape, strides))  # the header outlives the capsule
        return _capsule_new(ctypes.addressof(managed), _CAPSULE_NAME, None)

    def __del__(self):
        try:
            self.driver.free(self.device, self.ptr)
        except Exception:
            pass


def host_bits(values: np.ndarray, dtype: str) -> np.ndarray:
    """`values` rounded to `dtype` (nearest even, as torch rounds), as raw bits."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(getattr(torch, dtype))
    if dtype == "float32":
        return t.numpy().view(np.uint32)
    return t.view(torch.int16).numpy().view(np.uint16)


def cpu_tensor(values: np.ndarray, dtype: str):
    """The same rounded values as a CPU torch tensor (the reference run's input)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(getattr(torch, dtype))


def tensor_bits(t) -> np.ndarray:
    """A CPU torch tensor's raw element bits."""
    import torch

    if t.dtype == torch.float32:
        return t.numpy().view(np.uint32)
    return t.view(torch.int16).numpy().view(np.uint16)
