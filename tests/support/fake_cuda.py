"""A fake GPU helper backend over the fake NVML (tests/support/fake_nvml.py), with the API of
`ftlocust.cuda_driver`:

    FTLOCUST_GPU_BACKEND=tests.support.fake_cuda   the helper uses this module
    FAKE_CUDA_OPEN_ERROR=TEXT                      open() fails with TEXT ("CUDA: libcuda.so.1 not found")
    FAKE_CUDA_HOLD_ERROR=TEXT                      hold_memory() fails with TEXT (after allocating nothing)
    FAKE_CUDA_HOLD_SCALE=X                         NVML shows X times what was asked (a driver that
                                                   allocated less than it said: 0 shows nothing)

What the helper allocates is held by the helper's pid in the fake NVML state, so every reader
(the driver, the test) sees it in NVML used memory, and it is free again once the helper is dead.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from ftlocust.cuda_driver import CudaError
from tests.support import fake_nvml

OPEN_ERROR_ENV = "FAKE_CUDA_OPEN_ERROR"
HOLD_ERROR_ENV = "FAKE_CUDA_HOLD_ERROR"
HOLD_SCALE_ENV = "FAKE_CUDA_HOLD_SCALE"


class Device:
    def __init__(self, index: int, pci_bus_id: str):
        gpus = fake_nvml.state()["gpus"]
        if not 0 <= index < len(gpus) or gpus[index]["pci"] != pci_bus_id:
            raise CudaError(f"CUDA: cuDeviceGetByPCIBusId: not found ({pci_bus_id})")
        self.index = index
        self.gpu = gpus[index]

    def describe(self) -> str:
        return f"{self.gpu['name']} at {self.gpu['pci']}"

    def hold_memory(self, nbytes: int) -> int:
        if os.environ.get(HOLD_ERROR_ENV):
            raise CudaError(os.environ[HOLD_ERROR_ENV])
        fake_nvml.allocate(self.index, int(nbytes * float(os.environ.get(HOLD_SCALE_ENV, "1"))))
        return nbytes

    def keep_busy(self, started: Callable[[], None], stop: Callable[[], bool]) -> None:
        fake_nvml.set_busy(self.index)
        started()
        while not stop():
            time.sleep(0.05)


def open(index: int, pci_bus_id: str) -> Device:  # noqa: A001 (the backend interface's name)
    if os.environ.get(OPEN_ERROR_ENV):
        raise CudaError(os.environ[OPEN_ERROR_ENV])
    return Device(index, pci_bus_id)
