"""A fake NVML: the part of pynvml's API ftlocust uses, over GPUs described in a JSON file.

    FTLOCUST_NVML_MODULE=tests.support.fake_nvml   ftlocust uses this module instead of pynvml
    FAKE_NVML_STATE=PATH                           the GPUs (JSON, `write_state`); shared by every
                                                   process: driver, guardian, GPU helpers
    FAKE_NVML_CALLS=PATH                           every call appended as a JSON line
                                                   {"pid", "fn", "args", "t"} (`read_calls`)

It behaves like a GPU where a test can tell: memory used is `mem_base` plus what live
processes allocated (`allocate`, as the fake CUDA backend does; a dead process's memory is
free, as the driver frees it), utilisation is 100 % while a live process keeps it busy
(`set_busy`), locked clocks cap the SM clock and set the `applications_clocks_setting`
reason, a power limit under the draw caps the draw and sets `sw_power_cap`.
`fail` in the state makes calls fail: {"nvmlInit": 9} (driver not loaded), {"set": 4} (no
permission for every setter).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from types import SimpleNamespace

STATE_ENV = "FAKE_NVML_STATE"
CALLS_ENV = "FAKE_NVML_CALLS"

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9

nvmlClocksEventReasonGpuIdle = 0x001
nvmlClocksEventReasonApplicationsClocksSetting = 0x002
nvmlClocksEventReasonSwPowerCap = 0x004

MIB = 2**20


class NVMLError(Exception):
    def __init__(self, value: int):
        super().__init__(f"NVML error {value}")
        self.value = value


def gpu(index: int = 0, **over) -> dict:
    """One fake GPU's description (an H200-like card), with overrides."""
    g = {
        "uuid": f"GPU-fake-{index:04d}", "name": "Fake NVIDIA H200", "pci": f"00000000:{index + 0x19:02X}:00.0",
        "mem_total": 143771 * MIB, "mem_base": 512 * MIB, "util_base": 0, "temp_c": 31,
        "sm_clock_max": 1980, "sm_clock_idle": 345, "power_idle_w": 75.0, "power_busy_w": 690.0,
        "power_default_w": 700.0, "power_min_w": 200.0, "power_max_w": 700.0, "power_limit_w": 700.0,
        "locked": None,
    }
    g.update(over)
    return g


def write_state(path: str, gpus: list[dict], fail: dict | None = None) -> None:
    with open(path, "w") as f:
        json.dump({"gpus": gpus, "allocations": {}, "busy": {}, "fail": fail or {}}, f)


def read_calls(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def _locked(write: bool):
    path = os.environ[STATE_ENV]
    with open(path, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
        state = json.load(f)
        yield state
        if write:
            f.seek(0)
            f.truncate()
            json.dump(state, f)


def _live(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False


def _record(fn: str, *args) -> None:
    path = os.environ.get(CALLS_ENV)
    if path:
        line = json.dumps({"pid": os.getpid(), "fn": fn, "args": list(args), "t": time.time()})
        with open(path, "a") as f:
            f.write(line + "\n")


def _call(fn: str, *args, write: bool = False):
    """Record the call, apply `fail`, hand back the state (locked) to read or change."""
    _record(fn, *args)
    return _Call(fn, write)


class _Call:
    def __init__(self, fn: str, write: bool):
        self.fn, self.write = fn, write

    def __enter__(self):
        self._cm = _locked(self.write)
        state = self._cm.__enter__()
        fail = state.get("fail") or {}
        code = fail.get(self.fn) or (fail.get("set") if self.fn.startswith(("nvmlDeviceSet", "nvmlDeviceReset")) else None)
        if code:
            self._cm.__exit__(None, None, None)
            raise NVMLError(int(code))
        return state

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def _gpu(state: dict, handle) -> dict:
    return state["gpus"][handle.index]


def _used(state: dict, index: int) -> int:
    g = state["gpus"][index]
    held = sum(a["bytes"] for a in state["allocations"].values() if a["gpu"] == index and _live(a["pid"]))
    return min(g["mem_total"], g["mem_base"] + held)


def _busy(state: dict, index: int) -> bool:
    return any(int(i) == index and _live(int(pid)) for pid, i in state["busy"].items())


# -- the pynvml API -----------------------------------------------------------------------------

def nvmlInit():
    with _call("nvmlInit"):
        pass


def nvmlShutdown():
    _record("nvmlShutdown")


def nvmlDeviceGetCount():
    with _call("nvmlDeviceGetCount") as s:
        return len(s["gpus"])


def nvmlDeviceGetHandleByIndex(index):
    with _call("nvmlDeviceGetHandleByIndex", index) as s:
        if not 0 <= index < len(s["gpus"]):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return SimpleNamespace(index=index)


def nvmlDeviceGetUUID(h):
    with _call("nvmlDeviceGetUUID", h.index) as s:
        return _gpu(s, h)["uuid"]


def nvmlDeviceGetName(h):
    with _call("nvmlDeviceGetName", h.index) as s:
        return _gpu(s, h)["name"]


def nvmlDeviceGetPciInfo(h):
    with _call("nvmlDeviceGetPciInfo", h.index) as s:
        return SimpleNamespace(busId=_gpu(s, h)["pci"])


def nvmlDeviceGetUtilizationRates(h):
    with _call("nvmlDeviceGetUtilizationRates", h.index) as s:
        busy = _busy(s, h.index)
        return SimpleNamespace(gpu=100 if busy else _gpu(s, h)["util_base"], memory=60 if busy else 0)


def nvmlDeviceGetMemoryInfo(h, version=None):
    with _call("nvmlDeviceGetMemoryInfo", h.index) as s:
        total, used = _gpu(s, h)["mem_total"], _used(s, h.index)
        return SimpleNamespace(total=total, used=used, free=total - used)


def nvmlDeviceGetTemperature(h, sensor):
    with _call("nvmlDeviceGetTemperature", h.index, sensor) as s:
        g = _gpu(s, h)
        return g["temp_c"] + (40 if _busy(s, h.index) else 0)


def _power_draw(s: dict, h) -> float:
    g = _gpu(s, h)
    want = g["power_busy_w"] if _busy(s, h.index) else g["power_idle_w"]
    return min(want, g["power_limit_w"])


def nvmlDeviceGetClockInfo(h, clock):
    with _call("nvmlDeviceGetClockInfo", h.index, clock) as s:
        g = _gpu(s, h)
        clk = g["sm_clock_max"] if _busy(s, h.index) else g["sm_clock_idle"]
        if g["locked"]:
            clk = min(max(clk, g["locked"][0]), g["locked"][1])
        want = g["power_busy_w"] if _busy(s, h.index) else g["power_idle_w"]
        if want > g["power_limit_w"]:  # capped draw: the clock comes down in proportion
            clk = int(clk * g["power_limit_w"] / want)
        return clk


def nvmlDeviceGetMaxClockInfo(h, clock):
    with _call("nvmlDeviceGetMaxClockInfo", h.index, clock) as s:
        return _gpu(s, h)["sm_clock_max"]


def nvmlDeviceGetPowerUsage(h):
    with _call("nvmlDeviceGetPowerUsage", h.index) as s:
        return int(_power_draw(s, h) * 1000)


def nvmlDeviceGetPowerManagementLimit(h):
    with _call("nvmlDeviceGetPowerManagementLimit", h.index) as s:
        return int(_gpu(s, h)["power_limit_w"] * 1000)


def nvmlDeviceGetPowerManagementDefaultLimit(h):
    with _call("nvmlDeviceGetPowerManagementDefaultLimit", h.index) as s:
        return int(_gpu(s, h)["power_default_w"] * 1000)


def nvmlDeviceGetPowerManagementLimitConstraints(h):
    with _call("nvmlDeviceGetPowerManagementLimitConstraints", h.index) as s:
        g = _gpu(s, h)
        return int(g["power_min_w"] * 1000), int(g["power_max_w"] * 1000)


def nvmlDeviceGetCurrentClocksEventReasons(h):
    with _call("nvmlDeviceGetCurrentClocksEventReasons", h.index) as s:
        g, mask = _gpu(s, h), 0
        busy = _busy(s, h.index)
        if not busy:
            mask |= nvmlClocksEventReasonGpuIdle
        if g["locked"] and g["locked"][1] < g["sm_clock_max"]:
            mask |= nvmlClocksEventReasonApplicationsClocksSetting
        if (g["power_busy_w"] if busy else g["power_idle_w"]) > g["power_limit_w"]:
            mask |= nvmlClocksEventReasonSwPowerCap
        return mask


def nvmlDeviceSetGpuLockedClocks(h, min_mhz, max_mhz):
    with _call("nvmlDeviceSetGpuLockedClocks", h.index, min_mhz, max_mhz, write=True) as s:
        _gpu(s, h)["locked"] = [int(min_mhz), int(max_mhz)]


def nvmlDeviceResetGpuLockedClocks(h):
    with _call("nvmlDeviceResetGpuLockedClocks", h.index, write=True) as s:
        _gpu(s, h)["locked"] = None


def nvmlDeviceSetPowerManagementLimit(h, limit_mw):
    with _call("nvmlDeviceSetPowerManagementLimit", h.index, limit_mw, write=True) as s:
        g = _gpu(s, h)
        if not g["power_min_w"] * 1000 <= limit_mw <= g["power_max_w"] * 1000:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        g["power_limit_w"] = limit_mw / 1000.0


# -- what a process does on the fake GPU (the fake CUDA backend calls these) --------------------

def allocate(index: int, nbytes: int, pid: int | None = None) -> None:
    """`pid` (default: this process) holds nbytes more on GPU `index` while it lives."""
    pid = os.getpid() if pid is None else pid
    with _locked(write=True) as s:
        key = str(pid)
        a = s["allocations"].setdefault(key, {"pid": pid, "gpu": index, "bytes": 0})
        a["bytes"] += int(nbytes)


def set_busy(index: int, busy: bool = True, pid: int | None = None) -> None:
    pid = os.getpid() if pid is None else pid
    with _locked(write=True) as s:
        if busy:
            s["busy"][str(pid)] = index
        else:
            s["busy"].pop(str(pid), None)


def state() -> dict:
    """The GPUs as they are now, for a test's assertions (locked clocks, power limit)."""
    with _locked(write=False) as s:
        return s


def install(monkeypatch, tmp_path, gpus: int = 2, fail: dict | None = None) -> dict:
    """Point this process (and every process it starts) at `gpus` fake GPUs; the env it set."""
    state, calls = str(tmp_path / "fake-nvml.json"), str(tmp_path / "fake-nvml-calls.jsonl")
    write_state(state, [gpu(i) for i in range(gpus)], fail)
    env = {"FTLOCUST_NVML_MODULE": __name__, STATE_ENV: state, CALLS_ENV: calls}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
