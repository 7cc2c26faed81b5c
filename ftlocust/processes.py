"""Processes named by identity, never by name pattern: a PID plus its start time.

A PID can be reused by an unrelated process after the one we meant exits. Capturing the
command line and the start time (`/proc/<pid>/stat` field 22, clock ticks since boot) when the
target is resolved, and re-checking both before every signal, makes sure ftlocust only ever
signals the process the dry run showed.

A process name is used in one place only: to find the children of a process already known by
identity (`descendants_named`: vLLM's `VLLM::EngineCore` under its worker), which are then
captured by identity like any other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ftlocust.errors import ConfigError


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (fields[0] is field 3, the state;
    fields[1] the ppid, fields[2] the process group, fields[19] the start time); None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()  # the name may hold spaces and parentheses


def group_members(pgid: int, not_before_ticks: int) -> list[int]:
    """Live processes in process group pgid started no earlier than its leader (so a reused
    group id cannot make us signal strangers)."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = stat_fields(int(name))
        if fields is None or fields[0] in ("Z", "X"):
            continue
        if int(fields[2]) == pgid and int(fields[19]) >= not_before_ticks:
            members.append(int(name))
    return members


def process_identity(pid: int) -> tuple[str, str] | None:
    """(command line, start time in clock ticks) of a live process; None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    fields = stat_fields(pid)
    if fields is None or fields[0] == "Z":
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


# --- descendants by process name ---------------------------------------------------------------

COMM_LEN = 15  # /proc/<pid>/comm keeps at most 15 characters (TASK_COMM_LEN - 1)


def _stat(pid: int) -> tuple[int, str] | None:
    """(ppid, state); None when gone."""
    fields = stat_fields(pid)
    return None if fields is None else (int(fields[1]), fields[0])


def process_name_matches(pid: int, name: str) -> bool:
    """Whether the process is named `name` (see `descendants_named`)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
        with open(f"/proc/{pid}/comm", "rb") as f:
            comm = f.read().decode(errors="replace").rstrip("\n")
    except OSError:
        return False
    return name_matches(raw.split(b"\0", 1)[0].decode(errors="replace"), comm, name)


def name_matches(argv0: str, comm: str, name: str) -> bool:
    """The naming rule of `descendants_named` on a process's argv[0] and comm as read (here from
    /proc, or from a container by `ftlocust.k8s.exec.list_processes`)."""
    word = argv0.split(" ", 1)[0]
    if word == name:
        return True
    # comm: a process that renamed itself with prctl(PR_SET_NAME) only, or a name longer than
    # comm holds. When argv[0] is the longer, untruncated form of a full comm, argv[0] is the
    # name, and it is not `name` ("VLLM::EngineCore_DP0" is not "VLLM::EngineCore", though both
    # have comm "VLLM::EngineCor").
    truncated = len(comm) == COMM_LEN and len(word) > COMM_LEN and word.startswith(comm)
    return comm == name[:COMM_LEN] and not truncated


def descendants_named(pid: int, name: str) -> list[ProcessRef]:
    """The live descendants of `pid` (children, grandchildren, ...; by the ppid of
    /proc/<n>/stat) named `name`, by identity, in pid order. Reads /proc only, starts nothing.

    A process is named `name` when the first word of its argv[0] (the command line up to the
    first NUL or space: what setproctitle writes, what `pgrep -f '^name'` matches) is exactly
    `name`; or when its /proc/<n>/comm is `name[:15]` (the kernel cuts comm to 15 characters,
    so `pgrep -x VLLM::EngineCore` finds nothing) and its argv[0] is not a longer name of which
    that comm is the cut (`VLLM::EngineCore_DP0`). `pid` itself is never included; zombies
    are not.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        if st is not None and st[1] != "Z":
            children.setdefault(st[0], []).append(int(entry))
    found: list[ProcessRef] = []
    todo = list(children.get(pid, ()))
    seen = {pid}
    while todo:
        child = todo.pop()
        if child in seen:
            continue
        seen.add(child)
        todo.extend(children.get(child, ()))
        if process_name_matches(child, name):
            identity = process_identity(child)
            if identity is not None:  # gone (or a zombie) since the scan
                found.append(ProcessRef(child, *identity))
    return sorted(found, key=lambda ref: ref.pid)
