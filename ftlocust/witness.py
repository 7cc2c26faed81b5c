"""An independent witness of process deaths and stops, outside the driver.

    python -m ftlocust.witness --pid N[:START] [--pid M ...] --out FILE [--max-seconds S]

A small standalone process, started before a fault, that records for each watched process when
it exited (a pidfd held on it becomes readable — it need not be our child, so no waitid) and
when it entered and left the stopped state (SIGSTOP / SIGCONT: state `T` in /proc/<pid>/stat,
polled every `--poll-ms`, 1 ms by default, only while a watched process is alive). It writes
one JSON line per observation to FILE, each one write() of one line, stamped with time.time():

    {"event": "ready", "ts": ..., "witness_pid": ..., "pids": [{"pid": N, "start_time": T, "state": "S"}]}
    {"event": "stopped" | "continued" | "exited", "pid": N, "ts": ...}
    {"event": "end", "ts": ..., "reason": "all_exited" | "max_seconds" | "signal", "cpu_s": ..., "wall_s": ...}

`ready` comes once a pidfd is held on every watched process: wait for it before the fault.
Processes are identities: the start time (field 22 of /proc/<pid>/stat, clock ticks since
boot) is read after the pidfd is opened and checked while the pidfd says the process still
runs, so a reused PID is never watched. `N:START` insists on START; a mismatch, a process that
is gone or a zombie is refused: one line on stderr, a `refused` line in FILE, exit 2, nothing
watched. The witness exits by itself when every watched process exited or after --max-seconds
(default 600); SIGTERM / SIGINT end it early.

Python API: `Witness.start(pids, out_path)` (pids: ints or (pid, start_time) pairs; returns
once `ready`, raises WitnessError otherwise) → `.events()`, `.stop()`; `read_events(path)`.
`PidWatch` is the reusable part (pidfds on identified processes, wait for exits): a guardian
that lifts faults when the driver dies can hold one on the driver's PID.

Linux only (pidfd_open: kernel 5.3, Python 3.9). Imports nothing from ftlocust.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time

from ftlocust.jsonl import read_jsonl

STOPPED_STATES = ("T", "t")  # SIGSTOP / job control stop, tracing stop


class WitnessError(Exception):
    """One line: why a process cannot be watched or the witness did not come up."""


# -- /proc ---------------------------------------------------------------------------------------

def _parse_stat(raw: bytes) -> tuple[str, int]:
    """(state, start time in clock ticks) from the text of /proc/<pid>/stat."""
    fields = raw[raw.rindex(b")") + 2:].split()  # comm may hold spaces and parentheses
    return fields[0].decode(), int(fields[19])  # field 3 and field 22


def process_start_time(pid: int) -> int | None:
    """Start time of pid (clock ticks since boot, /proc/<pid>/stat field 22); None if no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return _parse_stat(f.read())[1]
    except (OSError, ValueError, IndexError):
        return None


# -- the reusable part: pidfds on identified processes --------------------------------------------

class PidWatch:
    """pidfds held on processes identified by (pid, start time).

    add() opens the pidfd first, then reads /proc/<pid>/stat through its own fd, then checks the
    pidfd is not readable yet (the process still runs): a PID cannot be reused while its process
    lives, so the start time read belongs to the process the pidfd holds. wait() returns the
    watched PIDs that exited since (and forgets them); state() reads the current state letter.
    """

    def __init__(self) -> None:
        self._poller = select.poll()
        self._pidfd: dict[int, int] = {}
        self._statfd: dict[int, int] = {}
        self._by_fd: dict[int, int] = {}
        self.start_times: dict[int, int] = {}

    def add(self, pid: int, start_time: int | None = None) -> tuple[int, str]:
        """Watch pid; return (start time, state). Raises WitnessError (one line) if refused."""
        if pid in self._pidfd:
            return self.start_times[pid], self.state(pid) or "?"
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise WitnessError(f"pid {pid}: no such process") from None
        except OSError as e:
            raise WitnessError(f"pid {pid}: cannot hold a pidfd: {e.strerror or e}") from None
        statfd = -1
        try:
            try:
                statfd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
                state, actual = _parse_stat(os.pread(statfd, 4096, 0))
            except (OSError, ValueError, IndexError):
                raise WitnessError(f"pid {pid}: no such process") from None
            if start_time is not None and actual != start_time:
                raise WitnessError(f"pid {pid}: start time {actual} does not match the expected {start_time} "
                                   f"(another process reuses the PID): refused")
            if state in ("Z", "X") or _readable(pidfd):
                raise WitnessError(f"pid {pid}: not running (state {state}): refused")
        except BaseException:
            os.close(pidfd)
            if statfd >= 0:
                os.close(statfd)
            raise
        self._pidfd[pid], self._statfd[pid], self._by_fd[pidfd] = pidfd, statfd, pid
        self.start_times[pid] = actual
        self._poller.register(pidfd, select.POLLIN)
        return actual, state

    def pids(self) -> list[int]:
        """Watched processes not yet seen exiting."""
        return list(self._pidfd)

    def wait(self, timeout_s: float | None) -> list[int]:
        """Block up to timeout_s (None: forever) for exits; return the PIDs that exited, forgotten."""
        if not self._pidfd:
            return []
        ms = None if timeout_s is None else max(0, int(timeout_s * 1000 + 0.999))
        ready = self._poller.poll(ms)
        if not ready:
            return []
        exited = [self._by_fd[fd] for fd, _ in ready if fd in self._by_fd]
        for pid in exited:
            self.forget(pid)
        return exited

    def state(self, pid: int) -> str | None:
        """State letter of a watched process (R, S, D, T, Z, ...); None when it is gone."""
        fd = self._statfd.get(pid)
        if fd is None:
            return None
        try:
            raw = os.pread(fd, 4096, 0)
        except OSError:
            return None
        i = raw.rfind(b")") + 2
        return raw[i:i + 1].decode() if i > 1 else None

    def forget(self, pid: int) -> None:
        pidfd = self._pidfd.pop(pid, None)
        if pidfd is not None:
            self._poller.unregister(pidfd)
            self._by_fd.pop(pidfd, None)
            os.close(pidfd)
        statfd = self._statfd.pop(pid, None)
        if statfd is not None:
            os.close(statfd)

    def close(self) -> None:
        for pid in list(self._pidfd):
            self.forget(pid)


def _readable(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(0))


# -- the witness process ---------------------------------------------------------------------------

class _Out:
    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, event: str, ts: float | None = None, **fields) -> None:
        record = {"event": event, **fields, "ts": time.time() if ts is None else ts}
        os.write(self.fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())


def run(targets: list[tuple[int, int | None]], out_path: str, max_seconds: float = 600,
        poll_s: float = 0.001) -> int:
    """The witness loop (what `python -m ftlocust.witness` runs). Exit code: 0, or 2 if refused."""
    t0, deadline = time.monotonic(), time.monotonic() + max_seconds
    out = _Out(out_path)
    watch = PidWatch()
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    stopped: dict[int, bool] = {}
    ready = []
    for pid, start_time in targets:
        try:
            actual, state = watch.add(pid, start_time)
        except WitnessError as e:
            out.write("refused", pid=pid, reason=str(e))
            print(f"witness: {e}", file=sys.stderr, flush=True)
            watch.close()
            return 2
        stopped[pid] = state in STOPPED_STATES
        ready.append({"pid": pid, "start_time": actual, "state": state})
    out.write("ready", witness_pid=os.getpid(), pids=ready)
    reason = "all_exited"
    alive = watch.pids()
    monotonic, state_of = time.monotonic, watch.state  # the loop runs ~1000 times a second: keep it lean
    while alive:
        if stopping:
            reason = "signal"
            break
        remaining = deadline - monotonic()
        if remaining <= 0:
            reason = "max_seconds"
            break
        exited = watch.wait(poll_s if remaining > poll_s else remaining)
        if exited:
            for pid in exited:
                out.write("exited", pid=pid)
            alive = watch.pids()
        for pid in alive:
            state = state_of(pid)
            if state is None or state == "Z" or state == "X":
                continue  # dying: the pidfd reports it
            now = state in STOPPED_STATES
            if now is not stopped[pid]:
                stopped[pid] = now
                out.write("stopped" if now else "continued", pid=pid)
    watch.close()
    cpu = os.times()
    out.write("end", reason=reason, cpu_s=round(cpu.user + cpu.system, 4), wall_s=round(time.monotonic() - t0, 4))
    return 0


def _target(text: str) -> tuple[int, int | None]:
    pid, _, start = text.partition(":")
    try:
        value = (int(pid), int(start) if start else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PID or PID:START_TIME, got {text!r}") from None
    if value[0] <= 0:
        raise argparse.ArgumentTypeError(f"expected a PID > 0, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftlocust.witness", description=__doc__.splitlines()[0])
    p.add_argument("--pid", type=_target, action="append", required=True, metavar="PID[:START]",
                   help="process to watch; START: its expected start time (/proc/PID/stat field 22)")
    p.add_argument("--out", required=True, help="JSONL file to append observations to")
    p.add_argument("--max-seconds", type=float, default=600, help="exit after this long (default 600)")
    p.add_argument("--poll-ms", type=float, default=1.0, help="/proc state polling period (default 1 ms)")
    args = p.parse_args(argv)
    return run(args.pid, args.out, max_seconds=args.max_seconds, poll_s=args.poll_ms / 1000)


# -- Python API ------------------------------------------------------------------------------------

def read_events(path: str | os.PathLike) -> list[dict]:
    """Every line of a witness file, in order; a torn last line is skipped; [] if no file."""
    return read_jsonl(path)


class Witness:
    """A running witness process. Works under gevent (subprocess and time.sleep only)."""

    def __init__(self, proc: subprocess.Popen, out_path: str):
        self.proc = proc
        self.out_path = out_path
        self.ready: dict | None = None

    @classmethod
    def start(cls, pids, out_path: str | os.PathLike, max_seconds: float = 600, poll_ms: float = 1.0,
              ready_timeout_s: float = 10.0, python: str = sys.executable) -> "Witness":
        """Start the witness on pids (ints or (pid, start_time) pairs); return once it is ready.

        Raises WitnessError (one line) when a process is refused or the witness does not come up.
        """
        out_path = os.fspath(out_path)
        argv = [python, "-m", "ftlocust.witness", "--out", out_path, "--max-seconds", repr(float(max_seconds)),
                "--poll-ms", repr(float(poll_ms))]
        for item in pids:
            pid, start = (item, None) if isinstance(item, int) else item
            argv += ["--pid", f"{pid}" if start is None else f"{pid}:{start}"]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        seen = len(read_events(out_path))
        # Own session: a Ctrl-C meant for the driver does not silence its witness.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env, start_new_session=True)
        self = cls(proc, out_path)
        deadline = time.monotonic() + ready_timeout_s
        while True:
            for e in read_events(out_path)[seen:]:
                if e.get("event") == "ready":
                    self.ready = e
                    return self
                if e.get("event") == "refused":
                    self._end(timeout_s=1.0)
                    raise WitnessError(e.get("reason", "refused"))
            if proc.poll() is not None or time.monotonic() >= deadline:
                why = f"exited with code {proc.returncode}" if proc.poll() is not None else \
                    f"not ready after {ready_timeout_s:g} s"
                err = self._end(timeout_s=1.0)
                raise WitnessError(f"witness {why}: {err.splitlines()[-1] if err else 'no output'}")
            time.sleep(0.002)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> list[dict]:
        return read_events(self.out_path)

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout_s: float) -> int | None:
        """Wait up to timeout_s for the witness to exit by itself; its exit code, or None."""
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.proc.poll()

    def stop(self, timeout_s: float = 5.0) -> list[dict]:
        """End the witness (SIGTERM, SIGKILL after timeout_s) if it still runs; return its events."""
        self._end(timeout_s)
        return self.events()

    def _end(self, timeout_s: float) -> str:
        """Stop the process if it runs; return what it wrote on stderr."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            if self.wait(timeout_s) is None:
                self.proc.kill()
                self.proc.wait(timeout=5)
        err = b""
        if self.proc.stderr is not None and not self.proc.stderr.closed:
            err = self.proc.stderr.read()
            self.proc.stderr.close()
        return err.decode(errors="replace").strip()

    def __enter__(self) -> "Witness":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
