"""The GPU helper's real backend: the CUDA driver API (libcuda.so.1) through ctypes.

No CUDA toolkit, no PyTorch: the driver library every machine with an NVIDIA driver has. A
backend module (`ftlocust.gpu_helper` picks it from FTLOCUST_GPU_BACKEND) has one function,

    open(index, pci_bus_id) -> device    the GPU NVML names `index`, found by its PCI bus id
                                         (CUDA's own device order is not NVML's)

and the device has `describe()`, `hold_memory(nbytes) -> bytes held` and
`keep_busy(started, stop)` (kernels back to back until `stop()`; `started()` once the first one
is queued). Every failure is a `CudaError` whose message is one line ("CUDA: out of memory …").

Memory is allocated in 1 GiB chunks (cuMemAlloc) and each chunk written once (cuMemsetD8), so
the pages are really backed. Compute is a PTX kernel spinning on the SM clock with an FMA chain
in the loop, launched over several blocks per SM; the PTX targets sm_52 (the driver JIT-compiles
it for any newer GPU), with the GPU's own target as a fallback for a driver that refuses sm_52.
"""

from __future__ import annotations

import ctypes
from typing import Callable

from ftlocust.gpu import pci_key

LIBRARY = "libcuda.so.1"
CHUNK_BYTES = 1 << 30
KERNEL_NAME = "ftlocust_spin"
KERNEL_SECONDS = 0.2  # one launch: short enough that the loop sees stop() often
BLOCKS_PER_SM = 8
THREADS_PER_BLOCK = 256

# CUresult codes worth a sentence (cuda.h); others get the driver's own cuGetErrorString.
ERRORS = {
    1: "invalid value",
    2: "out of memory",
    3: "the driver is not initialised",
    4: "the driver is shutting down",
    34: "libcuda.so.1 is a stub library (no NVIDIA driver installed)",
    35: "the NVIDIA driver is older than this CUDA driver API needs",
    46: "the GPU is busy or unavailable (exclusive-process compute mode?)",
    100: "no CUDA-capable GPU is visible (CUDA_VISIBLE_DEVICES?)",
    101: "invalid device",
    200: "the kernel image is invalid",
    201: "invalid context",
    209: "no kernel image for this GPU",
    218: "the PTX could not be compiled for this GPU",
    221: "the PTX JIT compiler is not available",
    222: "the driver does not support this PTX version",
    304: "an operating-system call failed",
    500: "not found (no GPU with that PCI bus id visible to CUDA; CUDA_VISIBLE_DEVICES?)",
    700: "an illegal memory access",
    701: "a launch with too many resources",
    702: "the kernel ran too long (display watchdog)",
    719: "the kernel launch failed",
    802: "the system is not ready (fabric manager not running?)",
    803: "the driver and the kernel module versions do not match",
    999: "an unknown error",
}

# cuDeviceGetAttribute attributes (CUdevice_attribute)
_ATTR_CLOCK_RATE_KHZ = 13
_ATTR_MULTIPROCESSOR_COUNT = 16
_ATTR_CC_MAJOR = 75
_ATTR_CC_MINOR = 76

# The kernel: spin until `cycles` SM clock ticks have passed, four dependent FMAs per turn
# (ALU work, not only a clock poll); the result is stored so the FMAs are not optimised away.
PTX_TEMPLATE = """\
.version {version}
.target {target}
.address_size 64

.visible .entry {name}(
    .param .u64 cycles,
    .param .u64 out
)
{{
    .reg .pred %p;
    .reg .b64 %limit, %start, %now, %elapsed, %dst;
    .reg .f32 %a, %b, %c;

    ld.param.u64 %limit, [cycles];
    ld.param.u64 %dst, [out];
    cvta.to.global.u64 %dst, %dst;
    mov.f32 %a, 0f3F800000;
    mov.f32 %b, 0f3F7FFFFE;
    mov.f32 %c, 0f33D6BF95;
    mov.u64 %start, %clock64;
SPIN:
    fma.rn.f32 %a, %a, %b, %c;
    fma.rn.f32 %a, %a, %b, %c;
    fma.rn.f32 %a, %a, %b, %c;
    fma.rn.f32 %a, %a, %b, %c;
    mov.u64 %now, %clock64;
    sub.s64 %elapsed, %now, %start;
    setp.lt.s64 %p, %elapsed, %limit;
    @%p bra SPIN;
    st.global.f32 [%dst], %a;
    ret;
}}
"""


class CudaError(RuntimeError):
    """A CUDA driver call failed: one line, "CUDA: <what>"."""


def ptx(target: str = "sm_52", version: str = "6.0") -> str:
    return PTX_TEMPLATE.format(version=version, target=target, name=KERNEL_NAME)


def ptx_candidates(cc_major: int, cc_minor: int) -> list[str]:
    """The PTX to try, in order: sm_52 (any GPU by JIT), then the GPU's own target with the
    oldest PTX ISA versions that know it (a driver that dropped old targets)."""
    own = f"sm_{cc_major}{cc_minor}"
    versions = ["7.8", "8.0"] if cc_major < 10 else ["8.6", "8.7", "8.8", "9.0"]
    return [ptx()] + [ptx(own, v) for v in versions]


def error_text(code: int, lib=None) -> str:
    """A CUresult as a short sentence."""
    if code in ERRORS:
        return ERRORS[code]
    if lib is not None:
        text = ctypes.c_char_p()
        try:
            if lib.cuGetErrorString(code, ctypes.byref(text)) == 0 and text.value:
                return text.value.decode(errors="replace")
        except (AttributeError, OSError):
            pass
    return f"error {code}"


def load_library(name: str = LIBRARY):
    try:
        return ctypes.CDLL(name)
    except OSError:
        raise CudaError(f"CUDA: {name} not found (no NVIDIA driver on this machine)") from None


class Driver:
    """The few driver API calls the helper makes, each checked."""

    def __init__(self, lib):
        self.lib = lib

    def call(self, fn: str, *args) -> None:
        try:
            f = getattr(self.lib, fn)
        except AttributeError:
            raise CudaError(f"CUDA: {fn} is missing from {LIBRARY} (driver too old?)") from None
        code = f(*args)
        if code != 0:
            raise CudaError(f"CUDA: {fn}: {error_text(code, self.lib)}")


class Device:
    def __init__(self, driver: Driver, index: int, pci_bus_id: str):
        self.d = driver
        self.index = index
        self.pci_bus_id = pci_bus_id
        self.dev = ctypes.c_int()
        self.ctx = ctypes.c_void_p()
        self.held: list[ctypes.c_uint64] = []
        d = self.d
        d.call("cuInit", ctypes.c_uint(0))
        d.call("cuDeviceGetByPCIBusId", ctypes.byref(self.dev), pci_bus_id.encode())
        # the primary context (the one the CUDA runtime uses): the same on every driver version
        d.call("cuDevicePrimaryCtxRetain", ctypes.byref(self.ctx), self.dev)
        d.call("cuCtxSetCurrent", self.ctx)
        name = ctypes.create_string_buffer(256)
        d.call("cuDeviceGetName", name, ctypes.c_int(len(name)), self.dev)
        self.name = name.value.decode(errors="replace")

    def attribute(self, attr: int) -> int:
        value = ctypes.c_int()
        self.d.call("cuDeviceGetAttribute", ctypes.byref(value), ctypes.c_int(attr), self.dev)
        return value.value

    def memory(self) -> tuple[int, int]:
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self.d.call("cuMemGetInfo_v2", ctypes.byref(free), ctypes.byref(total))
        return free.value, total.value

    def describe(self) -> str:
        free, total = self.memory()
        return f"{self.name} at {self.pci_bus_id}: {free >> 20} of {total >> 20} MiB free"

    def hold_memory(self, nbytes: int) -> int:
        left = nbytes
        while left > 0:
            size = min(CHUNK_BYTES, left)
            ptr = ctypes.c_uint64()
            try:
                self.d.call("cuMemAlloc_v2", ctypes.byref(ptr), ctypes.c_size_t(size))
            except CudaError as e:
                raise CudaError(f"{e} after {(nbytes - left) >> 20} of {nbytes >> 20} MiB") from None
            self.held.append(ptr)
            self.d.call("cuMemsetD8_v2", ptr, ctypes.c_ubyte(0xA5), ctypes.c_size_t(size))  # back the pages
            left -= size
        self.d.call("cuCtxSynchronize")
        return nbytes

    def _load_kernel(self) -> ctypes.c_void_p:
        module, func = ctypes.c_void_p(), ctypes.c_void_p()
        errors = []
        for text in ptx_candidates(self.attribute(_ATTR_CC_MAJOR), self.attribute(_ATTR_CC_MINOR)):
            try:
                self.d.call("cuModuleLoadData", ctypes.byref(module), ctypes.c_char_p(text.encode()))
                break
            except CudaError as e:
                errors.append(str(e))
        else:
            raise CudaError(errors[-1] if len(set(errors)) == 1 else "; ".join(dict.fromkeys(errors)))
        self.d.call("cuModuleGetFunction", ctypes.byref(func), module, KERNEL_NAME.encode())
        return func

    def keep_busy(self, started: Callable[[], None], stop: Callable[[], bool]) -> None:
        func = self._load_kernel()
        out = ctypes.c_uint64()
        self.d.call("cuMemAlloc_v2", ctypes.byref(out), ctypes.c_size_t(4))
        cycles = ctypes.c_uint64(int(self.attribute(_ATTR_CLOCK_RATE_KHZ) * 1000 * KERNEL_SECONDS))
        params = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.byref(cycles), ctypes.c_void_p),
                                       ctypes.cast(ctypes.byref(out), ctypes.c_void_p))
        blocks = self.attribute(_ATTR_MULTIPROCESSOR_COUNT) * BLOCKS_PER_SM
        first = True
        while first or not stop():
            self.d.call("cuLaunchKernel", func, ctypes.c_uint(blocks), ctypes.c_uint(1), ctypes.c_uint(1),
                        ctypes.c_uint(THREADS_PER_BLOCK), ctypes.c_uint(1), ctypes.c_uint(1),
                        ctypes.c_uint(0), ctypes.c_void_p(None), params, ctypes.c_void_p(None))
            if first:
                started()
                first = False
            self.d.call("cuCtxSynchronize")


def cuda_pci_bus_id(bus_id: str) -> str:
    """NVML's `00000000:3B:00.0` in the spelling cuDeviceGetByPCIBusId documents: `0000:3b:00.0`."""
    key = pci_key(bus_id)
    if key is None:
        raise CudaError(f"CUDA: not a PCI bus id: {bus_id!r}")
    return f"{key[0]:04x}:{key[1]:02x}:{key[2]:02x}.0"


def open(index: int, pci_bus_id: str) -> Device:  # noqa: A001 (the backend interface's name)
    return Device(Driver(load_library()), index, cuda_pci_bus_id(pci_bus_id))
