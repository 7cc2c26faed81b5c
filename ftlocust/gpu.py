"""GPUs through NVML: one access layer (`Nvml`) and what it reads (`GpuSample`).

The NVML module is `pynvml` (shipped by the nvidia-ml-py package) unless FTLOCUST_NVML_MODULE
names another module with the same API. The tests' fake NVML (tests/support/fake_nvml.py) is
one: every process ftlocust starts (the guardian, the GPU helpers) inherits the variable, so
the driver, the guardian and the helpers all see the same (fake) GPUs.

Without NVML, a driver or a GPU, `Nvml()` raises `GpuUnavailable`: one line naming what is
missing, for a kind's preflight to pass on.

GPUs are named by index (`0`), UUID (`GPU-…`) or PCI bus id (`00000000:3B:00.0`); `resolve`
turns any of them into the index.
"""

from __future__ import annotations

import importlib
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ftlocust.errors import ConfigError

NVML_MODULE_ENV = "FTLOCUST_NVML_MODULE"
DEFAULT_NVML_MODULE = "pynvml"

# NVML's clock event ("throttle") reasons, by bit, in the names nvidia-smi prints.
THROTTLE_REASONS: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks_setting"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal_slowdown"),
    (0x040, "hw_thermal_slowdown"),
    (0x080, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)

# NVML return codes worth a sentence (nvml.h).
_NVML_ERRORS = {
    2: "an invalid argument",
    3: "not supported on this GPU",
    4: "no permission (setting clocks or power limits needs root)",
    6: "not found",
    9: "the NVIDIA driver is not loaded",
    12: "libnvidia-ml.so.1 not found (no NVIDIA driver on this machine)",
    15: "the GPU has fallen off the bus or is otherwise inaccessible",
}


class GpuUnavailable(ConfigError):
    """No NVML module, no driver, no GPU, or no such GPU: one line naming what is missing."""


def load_nvml_module() -> Any:
    name = os.environ.get(NVML_MODULE_ENV, DEFAULT_NVML_MODULE)
    try:
        return importlib.import_module(name)
    except ImportError as e:
        if name == DEFAULT_NVML_MODULE:
            raise GpuUnavailable("NVML: the pynvml module is not installed (pip install nvidia-ml-py)") from None
        raise GpuUnavailable(f"NVML: {NVML_MODULE_ENV}={name} cannot be imported ({e})") from None


def describe_error(e: BaseException) -> str:
    code = getattr(e, "value", None)
    return _NVML_ERRORS.get(code, str(e) or type(e).__name__) if isinstance(code, int) else (str(e) or type(e).__name__)


def throttle_names(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS if mask & bit]


@dataclass
class GpuSample:
    """One reading of one GPU. A field the GPU does not report is None."""

    t: float  # wall clock (time.time()), the run's one time axis
    index: int
    uuid: str
    util_pct: float | None = None
    mem_used_mib: float | None = None
    mem_total_mib: float | None = None
    temp_c: float | None = None
    sm_clock_mhz: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    throttle: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class Nvml:
    """NVML, initialised once per instance; `close()` shuts it down."""

    def __init__(self, module: Any = None):
        self.m = module if module is not None else load_nvml_module()
        try:
            self.m.nvmlInit()
        except Exception as e:  # NVMLError, or OSError from a missing library
            raise GpuUnavailable(f"NVML: cannot initialise: {describe_error(e)}") from None
        self._handles: dict[int, Any] = {}

    def close(self) -> None:
        try:
            self.m.nvmlShutdown()
        except Exception:
            pass

    def __enter__(self) -> "Nvml":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- which GPUs ---------------------------------------------------------------------------

    def count(self) -> int:
        return int(self.m.nvmlDeviceGetCount())

    def handle(self, index: int) -> Any:
        if index not in self._handles:
            self._handles[index] = self.m.nvmlDeviceGetHandleByIndex(index)
        return self._handles[index]

    def uuid(self, index: int) -> str:
        return _text(self.m.nvmlDeviceGetUUID(self.handle(index)))

    def name(self, index: int) -> str:
        return _text(self.m.nvmlDeviceGetName(self.handle(index)))

    def pci_bus_id(self, index: int) -> str:
        info = self.m.nvmlDeviceGetPciInfo(self.handle(index))
        return _text(getattr(info, "busId", None) or info.busIdLegacy)

    def resolve(self, gpu: Any, where: str) -> int:
        """A GPU by index, UUID or PCI bus id → its index. GpuUnavailable (one line) if none."""
        n = self.count()
        if n == 0:
            raise GpuUnavailable(f"{where}: NVML sees no GPU on this machine")
        if isinstance(gpu, bool):
            raise ConfigError(f"{where}: expected a GPU index (0..{n - 1}), UUID or PCI bus id, got {gpu!r}")
        if isinstance(gpu, int) or (isinstance(gpu, str) and gpu.isdigit()):
            index = int(gpu)
            if not 0 <= index < n:
                raise GpuUnavailable(f"{where}: expected a GPU index in 0..{n - 1}, got {index}")
            return index
        text, key = str(gpu).strip().lower(), pci_key(str(gpu))
        for index in range(n):
            if text == self.uuid(index).lower() or (key is not None and key == pci_key(self.pci_bus_id(index))):
                return index
        raise GpuUnavailable(f"{where}: no GPU with UUID or PCI bus id {gpu!r} (GPUs: "
                             f"{', '.join(f'{i} {self.uuid(i)}' for i in range(n))})")

    # -- reading --------------------------------------------------------------------------------

    def sample(self, index: int) -> GpuSample:
        m, h = self.m, self.handle(index)
        s = GpuSample(t=time.time(), index=index, uuid=self.uuid(index))
        util = _read(lambda: m.nvmlDeviceGetUtilizationRates(h))
        s.util_pct = None if util is None else float(util.gpu)
        mem = _read(lambda: m.nvmlDeviceGetMemoryInfo(h))
        if mem is not None:
            s.mem_used_mib, s.mem_total_mib = mem.used / 2**20, mem.total / 2**20
        s.temp_c = _num(_read(lambda: m.nvmlDeviceGetTemperature(h, m.NVML_TEMPERATURE_GPU)))
        s.sm_clock_mhz = _num(_read(lambda: m.nvmlDeviceGetClockInfo(h, m.NVML_CLOCK_SM)))
        power = _read(lambda: m.nvmlDeviceGetPowerUsage(h))
        s.power_w = None if power is None else power / 1000.0
        limit = _read(lambda: m.nvmlDeviceGetPowerManagementLimit(h))
        s.power_limit_w = None if limit is None else limit / 1000.0
        reasons = _read(lambda: self._event_reasons(h))
        s.throttle = throttle_names(int(reasons)) if reasons is not None else []
        return s

    def _event_reasons(self, h: Any) -> int:
        fn = getattr(self.m, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            self.m.nvmlDeviceGetCurrentClocksThrottleReasons
        return fn(h)

    def max_sm_clock_mhz(self, index: int) -> int:
        return int(self.m.nvmlDeviceGetMaxClockInfo(self.handle(index), self.m.NVML_CLOCK_SM))

    def power_limit_constraints_w(self, index: int) -> tuple[float, float]:
        lo, hi = self.m.nvmlDeviceGetPowerManagementLimitConstraints(self.handle(index))
        return lo / 1000.0, hi / 1000.0

    def power_limit_w(self, index: int) -> float:
        return self.m.nvmlDeviceGetPowerManagementLimit(self.handle(index)) / 1000.0

    def default_power_limit_w(self, index: int) -> float:
        return self.m.nvmlDeviceGetPowerManagementDefaultLimit(self.handle(index)) / 1000.0

    # -- changing (THROTTLE only; never on a shared machine) ------------------------------------

    def lock_sm_clocks(self, index: int, min_mhz: int, max_mhz: int) -> None:
        self.m.nvmlDeviceSetGpuLockedClocks(self.handle(index), int(min_mhz), int(max_mhz))

    def reset_sm_clocks(self, index: int) -> None:
        self.m.nvmlDeviceResetGpuLockedClocks(self.handle(index))

    def set_power_limit_w(self, index: int, watts: float) -> None:
        self.m.nvmlDeviceSetPowerManagementLimit(self.handle(index), int(round(watts * 1000)))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def pci_key(bus_id: str) -> tuple[int, int, int] | None:
    """(domain, bus, device) of a PCI address in any of the spellings NVML and the kernel use:
    `00000000:3B:00.0` (NVML), `0000:3b:00.0`, `0000:3b:00` (an XID line). None if not one."""
    parts = bus_id.strip().split(":")
    if len(parts) != 3:
        return None
    try:
        return int(parts[0], 16), int(parts[1], 16), int(parts[2].split(".")[0], 16)
    except ValueError:
        return None


def xid_pci(bus_id: str) -> str:
    """The address as the NVIDIA driver writes it in an XID line: `0000:3b:00`."""
    key = pci_key(bus_id)
    if key is None:
        raise ValueError(f"not a PCI bus id: {bus_id!r}")
    return f"{key[0]:04x}:{key[1]:02x}:{key[2]:02x}"


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _read(fn) -> Any:
    """One NVML reading; None when this GPU does not report it (NOT_SUPPORTED and the like)."""
    try:
        return fn()
    except Exception:
        return None
