"""Commands in a container over the API's exec WebSocket (no local process is started).

The kinds send exactly three commands, all through the container's `sh` (POSIX, with cat, sed,
tr and head; busybox will do):
- `PROCESS_LIST`: every process the container sees, `pid<TAB>starttime<TAB>comm<TAB>argv0`;
- `kill_command`: `kill -s NAME PID`, only if PID still has the start time seen when it was
  listed (a pid reused by another process between the listing and the fault is not signalled);
- `append_line_command`: one line appended to a file (`gpu-xid` from an agent pod: /dev/kmsg).
A container without `sh` (distroless) cannot be signalled this way.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from ftlocust.k8s.client import Kube, KubeError, api_error
from ftlocust.processes import name_matches

ERROR_CHANNEL, STDOUT_CHANNEL, STDERR_CHANNEL = 3, 1, 2

# The start time (field 22 of /proc/PID/stat, in clock ticks since boot) of $1's process, as $st.
# The stat line is "pid (comm) state ..."; comm may hold spaces and ")", so everything up to the
# last ") " goes first, and the start time is then the 20th field.
_START_TIME = "s=$(sed 's/.*) //' \"/proc/$1/stat\" 2>/dev/null) || exit 3; set -- $s; st=${20}"

# pid, start time, comm and argv[0] of every process in the container's pid namespace, one per line.
PROCESS_LIST = (
    "for d in /proc/[0-9]*; do "
    "n=$(cat \"$d/comm\" 2>/dev/null) || continue; "
    "s=$(sed 's/.*) //' \"$d/stat\" 2>/dev/null) || continue; "
    "a=$(tr '\\000' '\\n' < \"$d/cmdline\" 2>/dev/null | head -n 1); "
    "set -- $s; "
    "printf '%s\\t%s\\t%s\\t%s\\n' \"${d#/proc/}\" \"${20}\" \"$n\" \"$a\"; "
    "done"
)
SIGNAL_NAMES = ("KILL", "TERM", "INT", "STOP", "CONT", "HUP", "QUIT", "USR1", "USR2")
NOT_THAT_PROCESS = 3  # kill_command's exit code when PID is gone or is another process now


def kill_command(pid: int, signal_name: str, start_time: int | None = None) -> list[str]:
    """`sh -c` argv sending NAME to PID; with `start_time`, only if PID still is that process
    (else exit NOT_THAT_PROCESS, nothing sent)."""
    name = signal_name.upper().removeprefix("SIG")
    if name not in SIGNAL_NAMES or not isinstance(pid, int) or pid < 1:
        raise ValueError(f"kill -s {signal_name} {pid}: expected a signal of {', '.join(SIGNAL_NAMES)} and a pid >= 1")
    if start_time is None:
        return ["sh", "-c", f"kill -s {name} {pid}"]
    check = _START_TIME.replace("$1", str(pid))
    return ["sh", "-c", f'{check}; [ "$st" = {int(start_time)} ] || exit {NOT_THAT_PROCESS}; kill -s {name} {pid}']


def append_line_command(line: str, path: str) -> list[str]:
    """`sh -c` argv appending one line to `path` (a kernel log: /dev/kmsg in a privileged agent
    pod). The line travels as an argument, never through the shell's parser."""
    if "\n" in line or not path.startswith("/"):
        raise ValueError(f"append to {path!r}: expected one line and an absolute path")
    return ["sh", "-c", 'printf \'%s\\n\' "$1" >> "$2"', "sh", line, path]


def run_in_pod(kube: Kube, *, namespace: str, pod: str, container: str | None, argv: list[str],
               timeout_s: float = 30.0, where: str = "exec") -> tuple[int, str, str]:
    """Run `argv` in the container; (exit code, stdout, stderr). The exit status is read from
    the error channel (a Status: Success, or Failure with an ExitCode cause). KubeError when the
    exec could not run, did not finish within `timeout_s`, or ended without a status."""
    from kubernetes.stream import stream

    kwargs = {"container": container} if container else {}
    try:
        resp = stream(kube.exec_core.connect_get_namespaced_pod_exec, pod, namespace, command=argv,
                      stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False,
                      _request_timeout=timeout_s, **kwargs)
    except Exception as e:
        raise api_error(e, "create", "pods/exec", namespace, where) from None
    try:
        deadline = time.monotonic() + timeout_s
        while resp.is_open() and time.monotonic() < deadline:
            resp.update(timeout=max(0.0, deadline - time.monotonic()))
        if resp.is_open():
            raise KubeError(f"{where}: {' '.join(argv)[:80]!r} in pod {pod} did not finish within {timeout_s:g} s")
        out, err = resp.read_channel(STDOUT_CHANNEL), resp.read_channel(STDERR_CHANNEL)
        raw = resp.read_channel(ERROR_CHANNEL)
    except KubeError:
        raise
    except Exception as e:
        raise api_error(e, "create", "pods/exec", namespace, where) from None
    finally:
        resp.close()
    try:
        status = json.loads(raw)
    except ValueError:
        raise KubeError(f"{where}: exec in pod {pod} ended without an exit status (connection lost?)") from None
    if status.get("status") == "Success":
        return 0, out, err
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause["message"]), out, err
    raise KubeError(f"{where}: exec in pod {pod} failed: {' '.join(str(status.get('message', status)).split())}")


@dataclass(frozen=True)
class PodProcess:
    pid: int
    comm: str
    argv0: str
    start_time: int | None = None  # clock ticks since boot: with pid, the process's identity

    def describe(self) -> str:
        return f"pid {self.pid} {self.argv0 or '[' + self.comm + ']'}"


def list_processes(kube: Kube, *, namespace: str, pod: str, container: str | None, timeout_s: float = 30.0,
                   where: str = "exec") -> list[PodProcess]:
    """The processes the container sees (its pid namespace), by pid; one exec of `PROCESS_LIST`."""
    code, out, err = run_in_pod(kube, namespace=namespace, pod=pod, container=container,
                                argv=["sh", "-c", PROCESS_LIST], timeout_s=timeout_s, where=where)
    if code != 0:
        raise KubeError(f"{where}: listing processes in pod {pod} exited {code}: {' '.join(err.split())[:160]}")
    found = []
    for line in out.splitlines():
        pid, _, rest = line.partition("\t")
        start, _, rest = rest.partition("\t")
        comm, _, argv0 = rest.partition("\t")
        if pid.isdigit():
            found.append(PodProcess(int(pid), comm, argv0, int(start) if start.isdigit() else None))
    return sorted(found, key=lambda p: p.pid)


def find_processes(kube: Kube, *, namespace: str, pod: str, container: str | None, name: str,
                   timeout_s: float = 30.0, where: str = "exec") -> list[int]:
    """The pids of the container's processes named `name`: the rule of
    `ftlocust.processes.descendants_named` (first word of argv[0], or comm == name[:15])."""
    return [p.pid for p in list_processes(kube, namespace=namespace, pod=pod, container=container,
                                          timeout_s=timeout_s, where=where) if name_matches(p.argv0, p.comm, name)]


def signal_in_pod(kube: Kube, *, namespace: str, pod: str, container: str | None, pid: int, signal_name: str,
                  start_time: int | None = None, timeout_s: float = 30.0, where: str = "exec") -> None:
    """`kill -s NAME PID` in the container (its own pid numbers); with `start_time`, only if PID
    is still the process listed with it. KubeError when nothing was sent."""
    argv = kill_command(pid, signal_name, start_time)
    code, _, err = run_in_pod(kube, namespace=namespace, pod=pod, container=container, argv=argv,
                              timeout_s=timeout_s, where=where)
    if code == NOT_THAT_PROCESS and start_time is not None:
        raise KubeError(f"{where}: pid {pid} in pod {pod} is gone or is another process now (start time "
                        f"{start_time} no longer matches): not signalled")
    if code != 0:
        raise KubeError(f"{where}: kill -s {signal_name.upper().removeprefix('SIG')} {pid} in pod {pod} exited "
                        f"{code}: {' '.join(err.split())[:160]}")
