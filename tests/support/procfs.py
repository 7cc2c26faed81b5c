"""Reading a process's state from /proc, and a bounded wait, for tests that watch processes."""
import time
from pathlib import Path


def state(pid: int) -> str | None:
    """The state letter (R, S, T, Z, …) of pid; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2]


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/pid/stat (clock ticks since boot); None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rindex(")") + 2:].split()[19])


def gone(pid: int) -> bool:
    return state(pid) in (None, "Z", "X")


def wait(predicate, timeout_s: float = 10.0, step: float = 0.005) -> bool:
    """Poll predicate until it holds or timeout_s passed; its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
