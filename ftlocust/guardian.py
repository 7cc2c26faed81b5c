"""The guardian: a small process that lifts every fault still in effect when ftlocust dies,
however it died (SIGKILL included), and ends every process ftlocust started.

    python -m ftlocust.guardian --parent PID:START --out DIR/guardian.jsonl   (Guardian.start does this)

Why a process: a driver that is SIGKILLed runs no `finally`, no atexit, no signal handler. A
SIGSTOPped worker would stay stopped, a partition would stay up, a local Dynamo would keep
serving. The guardian is started before load (`Guardian.start`), in its own session so a
terminal's Ctrl-C reaches only the driver, and it learns the driver is gone two ways at once:
its end of a pipe the driver writes to reaches EOF, and a pidfd it holds on the driver becomes
readable. Either wakes it at once; it then runs every rollback still held, newest first, and
leaves one line per rollback in `guardian.jsonl` (and a sentence in `guardian.log`) beside the
run's artifacts. It never acts while the driver lives.

The driver talks to it in JSON lines on the pipe, each one `write()` below PIPE_BUF, so a line is
either wholly in the pipe or not at all — a hold written just before the driver died is still
read:

    {"op": "hold", "id": N, "action": {...}}   before an effect is put in place (`hold`)
    {"op": "release", "id": N}                 after the driver undid it itself (`release`)
    {"op": "close"}                            the driver is done; nothing held: exit at once

`close` with rollbacks still held (the driver's own rollback failed) does not end the watch:
those are run once the driver exits.

Actions are plain data, `{"kind": ..., fields}`, run by the function registered for the kind
(`@action`). Built in: `signal` (a signal to a process by identity: SIGCONT for a SIGSTOP),
`stop-process` (SIGTERM to the process group of a process ftlocust started, SIGKILL after
`grace_s`), `netns-delete` (a network lab's namespaces), `rules-delete` (a partition's rules,
`ftlocust.netns`). A plugin's action names
the module that registers it (`"module": "my.plugin"`); the guardian imports it before running.

An action returns what it did ("SIGCONT to worker-1 (pid 123)") or None when there was nothing
to undo, and must be idempotent: the driver may have died after undoing the effect but before
writing `release`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from typing import Callable

from ftlocust.processes import group_members, stat_fields

log = logging.getLogger("ftlocust.guardian")

ACTIONS: dict[str, Callable[[dict], "str | None"]] = {}
# The driver gives the process up to this long to come up (a busy 2-core machine is slow to fork).
_START_TIMEOUT_S = 60.0


def action(kind: str):
    """Register the function that runs rollback actions of `kind` in the guardian process."""

    def register(fn):
        ACTIONS[kind] = fn
        return fn

    return register


class GuardianError(RuntimeError):
    """The guardian could not be started, or is gone: nothing would lift a fault."""


# -- /proc ----------------------------------------------------------------------------------------

def _start_ticks(pid: int) -> str | None:
    """Start time of a live, non-zombie process (clock ticks since boot), or None."""
    fields = stat_fields(pid)
    return None if fields is None or fields[0] in ("Z", "X") else fields[19]


# -- built-in actions -----------------------------------------------------------------------------

def process_action(kind: str, pid: int, label: str = "", **fields) -> dict:
    """An action on the live process `pid`, captured by identity now (pid + start time)."""
    ticks = _start_ticks(pid)
    if ticks is None:
        raise ProcessLookupError(f"pid {pid}: no such process")
    return {"kind": kind, "pid": pid, "start_ticks": ticks, "label": label or f"pid {pid}", **fields}


@action("signal")
def _signal(a: dict) -> str | None:
    pid, name = a["pid"], a["signal"]
    if _start_ticks(pid) != a["start_ticks"]:
        return None  # gone (or another process has the PID now): nothing to send
    os.kill(pid, getattr(signal, name))
    return f"{name} to {a['label']} (pid {pid})"


@action("stop-process")
def _stop_process(a: dict) -> str | None:
    """SIGTERM to the process group ftlocust started the process in (its children too), SIGKILL
    to whatever is left after `grace_s`."""
    pid, ticks = a["pid"], int(a["start_ticks"])
    members = group_members(pid, ticks)
    if not members:
        return None
    for sig, wait_s in ((signal.SIGTERM, float(a.get("grace_s", 1.0))), (signal.SIGKILL, 5.0)):
        for member in members:
            try:
                os.kill(member, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            members = group_members(pid, ticks)
            if not members:
                return f"stopped {a['label']} (pid {pid}) with {sig.name}"
            time.sleep(0.02)
    return f"SIGKILL to {a['label']} (pid {pid}): {len(members)} process(es) still exiting"


@action("netns-delete")
def _netns_delete(a: dict) -> str | None:
    from ftlocust import netns

    deleted = netns.delete_namespaces(a["names"])
    return f"deleted network namespaces {', '.join(deleted)}" if deleted else None


@action("rules-delete")
def _rules_delete(a: dict) -> str | None:
    from ftlocust import netlink

    deleted = netlink.delete_rules(a["netns"], a["rules"])
    return f"lifted {a.get('label') or 'partition'} ({deleted} rule(s) deleted)" if deleted else None


def run_action(a: dict) -> str | None:
    if a.get("module"):
        importlib.import_module(a["module"])
    try:
        fn = ACTIONS[a["kind"]]
    except KeyError:
        raise KeyError(f"no guardian action of kind {a['kind']!r} (known: {', '.join(sorted(ACTIONS))})") from None
    return fn(a)


# -- the driver's side ----------------------------------------------------------------------------

_ACTIVE: "Guardian | None" = None


def active() -> "Guardian | None":
    """This process's running guardian, if one was started."""
    return _ACTIVE if _ACTIVE is not None and not _ACTIVE.closed else None


class Guardian:
    """The driver's handle on its guardian process. One per driver process (`ensure`)."""

    def __init__(self, proc: subprocess.Popen, write_fd: int, out_path: str):
        self.proc = proc
        self.out_path = out_path
        self._fd = write_fd
        self._next_id = 0
        self.held: dict[int, dict] = {}
        self.closed = False

    @classmethod
    def start(cls, out_dir: str) -> "Guardian":
        """Start the guardian process; return once it holds a pidfd on this process."""
        os.makedirs(out_dir, exist_ok=True)
        out_path = os.path.join(out_dir, "guardian.jsonl")
        me = os.getpid()
        read_fd, write_fd = os.pipe()  # both close-on-exec: no other child inherits the write end
        ready_r, ready_w = os.pipe()
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(os.path.join(out_dir, "guardian.log"), "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ftlocust.guardian", "--parent", f"{me}:{_start_ticks(me)}",
                 "--out", out_path, "--ready-fd", str(ready_w)],
                stdin=read_fd, stdout=subprocess.DEVNULL, stderr=err, pass_fds=(ready_w,),
                start_new_session=True, env=env, close_fds=True,
            )
        os.close(read_fd)
        os.close(ready_w)
        try:
            line = _read_line(ready_r, _START_TIMEOUT_S)
        finally:
            os.close(ready_r)
        if line.strip() != b"ready":
            proc.kill()
            proc.wait()
            os.close(write_fd)
            raise GuardianError(f"the guardian did not start (see {os.path.join(out_dir, 'guardian.log')}): "
                                f"{line.decode(errors='replace').strip() or 'no answer'}")
        log.info("guardian pid %d holds the rollbacks of this run (%s)", proc.pid, out_path)
        return cls(proc, write_fd, out_path)

    @classmethod
    def ensure(cls, out_dir: str) -> "Guardian":
        """This process's guardian, started now if there is none."""
        global _ACTIVE
        if active() is None or _ACTIVE.proc.poll() is not None:
            _ACTIVE = cls.start(out_dir)
        return _ACTIVE

    def _send(self, message: dict) -> None:
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        if len(data) > select.PIPE_BUF:
            raise GuardianError(f"guardian message of {len(data)} bytes is above PIPE_BUF ({select.PIPE_BUF})")
        try:
            os.write(self._fd, data)
        except OSError as e:  # BrokenPipe: the guardian died
            raise GuardianError(f"the guardian (pid {self.proc.pid}) is gone: {e.strerror or e}") from None

    def hold(self, action_: dict) -> int:
        """Hand a rollback to the guardian BEFORE the effect it undoes is put in place."""
        if self.closed:
            raise GuardianError("the guardian is closed")
        if self.proc.poll() is not None:
            raise GuardianError(f"the guardian (pid {self.proc.pid}) exited with code {self.proc.returncode}")
        self._next_id += 1
        self._send({"op": "hold", "id": self._next_id, "action": action_})
        self.held[self._next_id] = action_
        return self._next_id

    def release(self, hold_id: int) -> None:
        """The driver undid that effect itself: the guardian forgets it."""
        if self.held.pop(hold_id, None) is None or self.closed:
            return
        try:
            self._send({"op": "release", "id": hold_id})
        except GuardianError as e:
            log.warning("%s", e)

    def close(self, timeout_s: float = 5.0) -> None:
        """The driver is done. With nothing held the guardian exits now; what is still held it
        runs once this process exits."""
        global _ACTIVE
        if self.closed:
            return
        self.closed = True
        try:
            self._send({"op": "close"})
        except GuardianError as e:
            log.warning("%s", e)
        os.close(self._fd)
        if not self.held:
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("the guardian (pid %d) did not exit after close", self.proc.pid)
        if _ACTIVE is self:
            _ACTIVE = None


def _read_line(fd: int, timeout_s: float) -> bytes:
    deadline = time.monotonic() + timeout_s
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 256)
        if not chunk:
            break
        buf += chunk
    return buf


def read_lines(path: str) -> list[dict]:
    """The guardian's journal (`guardian.jsonl`)."""
    from ftlocust.jsonl import read_jsonl

    return read_jsonl(path)


# -- the guardian process -------------------------------------------------------------------------

class _Journal:
    def __init__(self, path: str):
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, event: str, **fields) -> None:
        os.write(self._fd, (json.dumps({"event": event, "ts": time.time(), **fields}) + "\n").encode())


def _lift(held: dict[int, dict], journal: _Journal, why: str, died_at: float) -> int:
    """Run every held rollback, newest first; journal each. Returns how many failed."""
    failed = 0
    lifted = []
    for hold_id in sorted(held, reverse=True):
        a = held[hold_id]
        try:
            what = run_action(a)
        except Exception as e:
            failed += 1
            journal.write("lift_failed", id=hold_id, action=a, error=f"{type(e).__name__}: {e}")
            print(f"guardian: {why}; could not lift {a.get('label') or a['kind']}: {e}", file=sys.stderr, flush=True)
            continue
        journal.write("lifted", id=hold_id, kind=a["kind"], what=what, after_death_s=round(time.time() - died_at, 4))
        if what:
            lifted.append(what)
    print(f"guardian: {why}; lifted: {'; '.join(lifted) or 'nothing was still in effect'}", file=sys.stderr, flush=True)
    return failed


def serve(parent: int, parent_ticks: str | None, out_path: str, ready_fd: int | None) -> int:
    # Our own session already shields us from a terminal's signals; these are ignored too so
    # that nothing short of SIGKILL ends the watch while rollbacks are held.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    journal = _Journal(out_path)
    try:
        pidfd = os.pidfd_open(parent)
    except OSError as e:
        journal.write("refused", error=f"cannot hold a pidfd on pid {parent}: {e.strerror or e}")
        return 2
    if parent_ticks is not None and _start_ticks(parent) != parent_ticks:
        journal.write("refused", error=f"pid {parent} is not the driver that started us")
        return 2
    journal.write("ready", guardian_pid=os.getpid(), parent=parent)
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    held: dict[int, dict] = {}
    state = {"closed": False}
    buf = b""

    def take(chunk: bytes) -> None:
        nonlocal buf
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line.strip():
                msg = json.loads(line)
                if msg["op"] == "hold":
                    held[msg["id"]] = msg["action"]
                elif msg["op"] == "release":
                    held.pop(msg["id"], None)
                elif msg["op"] == "close":
                    state["closed"] = True

    poller = select.poll()
    poller.register(0, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    pipe_open = True
    while True:
        events = dict(poller.poll())
        if pipe_open and 0 in events:
            chunk = os.read(0, 65536)
            if chunk:
                take(chunk)
            else:
                pipe_open = False
                poller.unregister(0)
            if state["closed"] and not held:
                journal.write("end", reason="closed", held=0)
                return 0
        # The driver is gone when its pidfd says so, or when its end of the pipe closed without
        # `close` (a write end that leaked into another process cannot keep us waiting: pidfd).
        if pidfd in events or (not pipe_open and not state["closed"]):
            died_at = time.time()
            while pipe_open and select.select([0], [], [], 0)[0]:  # what it wrote just before dying
                chunk = os.read(0, 65536)
                if not chunk:
                    break
                take(chunk)
            why = f"ftlocust (pid {parent}) {'exited' if state['closed'] else 'died'}"
            journal.write("driver_gone", parent=parent, held=len(held), closed=state["closed"])
            failed = _lift(held, journal, why, died_at)
            journal.write("end", reason="driver_gone", held=len(held), failed=failed)
            return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftlocust.guardian")
    p.add_argument("--parent", required=True, help="PID[:START] of the driver to watch")
    p.add_argument("--out", required=True, help="journal file (JSON lines)")
    p.add_argument("--ready-fd", type=int, default=None, help="write 'ready' here once watching")
    args = p.parse_args(argv)
    pid, _, ticks = args.parent.partition(":")
    return serve(int(pid), ticks or None, args.out, args.ready_fd)


if __name__ == "__main__":
    # Run as `python -m ftlocust.guardian` this file is `__main__`; an action's module imports
    # `ftlocust.guardian` and registers there, so the guardian must run that module's code.
    from ftlocust import guardian as _registry

    sys.exit(_registry.main())
