"""Processes named by identity, never by name pattern: a PID plus its start time.

A PID can be reused by an unrelated process after the one we meant exits. Capturing the
command line and the start time (`/proc/<pid>/stat` field 22, clock ticks since boot) when the
target is resolved, and re-checking both before every signal, makes sure ftlocust only ever
signals the process the dry run showed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ftlocust.errors import ConfigError


def process_identity(pid: int) -> tuple[str, str] | None:
    """(command line, start time in clock ticks) of a live process; None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return cmdline, fields[19]


def pid_from_target(target: str, where: str) -> int:
    """The PID a `pid:N` or `pidfile:PATH` target names (the pid file is read now)."""
    kind, _, value = target.partition(":")
    if kind == "pidfile":
        try:
            with open(value, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as e:
            raise ConfigError(f"{where}: cannot read pid file {value!r}: {e.strerror}") from None
    elif kind != "pid":
        raise ConfigError(f"{where}: expected pid:N or pidfile:PATH, got {target!r}")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{where}: expected a pid, got {value!r}") from None


def is_process_target(target: str) -> bool:
    return target.startswith(("pid:", "pidfile:"))


@dataclass
class ProcessRef:
    """One process captured by identity. `signal` refuses a process that is no longer it."""

    pid: int
    cmdline: str
    start_ticks: str

    @classmethod
    def capture(cls, pid: int, where: str) -> "ProcessRef":
        identity = process_identity(pid)
        if identity is None:
            raise ConfigError(f"{where}: no running process with pid {pid}")
        try:
            os.kill(pid, 0)
        except PermissionError:
            raise ConfigError(f"{where}: no permission to signal pid {pid} ({identity[0][:60]})") from None
        return cls(pid, *identity)

    @classmethod
    def from_target(cls, target: str, where: str) -> "ProcessRef":
        return cls.capture(pid_from_target(target, where), where)

    def is_same(self) -> bool:
        return process_identity(self.pid) == (self.cmdline, self.start_ticks)

    def alive(self) -> bool:
        return self.is_same()

    def signal(self, sig: int) -> int:
        if not self.is_same():
            raise ProcessLookupError(f"pid {self.pid} is no longer the process seen at preflight")
        os.kill(self.pid, sig)
        return self.pid

    def describe(self) -> str:
        return f"pid {self.pid}: {self.cmdline[:100]}"
