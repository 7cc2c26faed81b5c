"""Process groups: start named local processes, wait for them, signal, restart and stop them.

Generic on purpose (any argv, env, health URL): the reference deployment and a real local
Dynamo both use it. Each role has its own log file (run_dir/logs/<role>.log, stdout and stderr)
and PID file (run_dir/pids/<role>.pid). Only PIDs this group started are ever signalled.
When this process has a guardian (`ftlocust.guardian.active()`), each process is held by it from
its start to its stop: a driver that dies, SIGKILL included, leaves no process of the group behind.

Works unchanged under gevent monkey-patching (Locust): no threads, only subprocess.Popen,
blocking HTTP on sockets and polling with time.sleep, all of which gevent makes cooperative.
"""

from __future__ import annotations

import http.client
import os
import signal as _signal
import subprocess
import time
import urllib.parse
import weakref
from dataclasses import dataclass
from typing import Callable, Union

from ftlocust.errors import ConfigError
from ftlocust.processes import group_members, process_identity

HealthUrl = Union[str, Callable[[], Union[str, None]], None]

_POLL_S = 0.05


@dataclass
class ProcessSpec:
    """How to start one role.

    health_url: GET it until 200 to call the process ready. A callable is asked each poll and
    may return None while the URL is not known yet (e.g. the process reports an OS-assigned
    port in a file). None: ready as soon as the process is running.
    """

    role: str
    argv: list[str]
    env: dict[str, str] | None = None
    health_url: HealthUrl = None
    startup_timeout_s: float = 60
    cwd: str | None = None


def http_get_status(url: str, timeout_s: float = 1.0) -> int | None:
    """Status of GET url, or None if it cannot be reached. No proxies (loopback services)."""
    parts = urllib.parse.urlsplit(url)
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname, parts.port, timeout=timeout_s)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else "") or "/")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def last_line(path: str, max_bytes: int = 8192) -> str:
    """Last non-empty line of a text file ("" if none), for one-line error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


class ProcessGroup:
    """Named processes started by this object. Context manager: stop() on exit."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = os.path.abspath(os.fspath(run_dir))
        self.logs_dir = os.path.join(self.run_dir, "logs")
        self.pids_dir = os.path.join(self.run_dir, "pids")  # both made at the first start (a dry run makes none)
        self.specs: dict[str, ProcessSpec] = {}
        self.started_at: dict[str, float] = {}
        self.ready_at: dict[str, float] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._order: list[str] = []  # start order; stop(None) walks it backwards
        self._guardian_holds: dict[str, tuple] = {}  # role -> (guardian, hold id)
        self._start_ticks: dict[int, int] = {}  # leader pid -> its start time, for its group's leftovers
        # every process started, in order: (role, process, stopped by this group)
        self._history: list[list] = []
        # A driver that exits without stop() must not leave processes behind (finalize runs at
        # interpreter exit too).
        self._finalizer = weakref.finalize(self, _kill_all, self._procs)

    # -- starting -----------------------------------------------------------------------------

    def start(self, spec: ProcessSpec, wait: bool = True) -> int:
        """Start spec.role (which must not be running); return its PID. wait: wait_ready too."""
        os.makedirs(self.logs_dir, exist_ok=True)
        os.makedirs(self.pids_dir, exist_ok=True)
        if not spec.role or "/" in spec.role:
            raise ConfigError(f"process role {spec.role!r}: expected a non-empty name without '/'")
        if self.alive(spec.role):
            raise ConfigError(f"process {spec.role} is already running (pid {self.pid(spec.role)})")
        log_path = self.log_path(spec.role)
        if os.path.exists(log_path) and os.path.getsize(log_path) > 0:
            os.replace(log_path, self.previous_log_path(spec.role))
        env = None
        if spec.env is not None:
            env = dict(os.environ)
            env.update(spec.env)
        with open(log_path, "wb") as log:
            try:
                proc = subprocess.Popen(
                    spec.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=spec.cwd,
                    # Own session: a terminal's Ctrl-C reaches only the driver, which then stops
                    # the group in order.
                    start_new_session=True,
                )
            except OSError as e:
                raise ConfigError(f"process {spec.role}: cannot start {spec.argv[0]!r}: {e.strerror or e}") from None
        self.specs[spec.role] = spec
        self._procs[spec.role] = proc
        self._history.append([spec.role, proc, False])
        identity = process_identity(proc.pid)
        if identity is not None:
            self._start_ticks[proc.pid] = int(identity[1])
        self._hold(spec.role, proc.pid)
        self.started_at[spec.role] = time.time()
        self.ready_at.pop(spec.role, None)
        if spec.role in self._order:
            self._order.remove(spec.role)
        self._order.append(spec.role)
        with open(self.pid_path(spec.role), "w") as f:
            f.write(f"{proc.pid}\n")
        if wait:
            self.wait_ready(spec.role)
        return proc.pid

    def wait_ready(self, role: str, timeout_s: float | None = None) -> float:
        """Block until role's health URL answers 200; return ready_at[role] (wall clock).

        Raises ConfigError (one line: role, log file, its last line) if the process exits first
        or the timeout passes.
        """
        spec = self._spec(role)
        proc = self._procs[role]
        timeout = spec.startup_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise ConfigError(
                    f"process {role} exited with code {code} before it was ready "
                    f"(log: {self.log_path(role)}): {last_line(self.log_path(role)) or 'no output'}"
                )
            url = spec.health_url() if callable(spec.health_url) else spec.health_url
            if spec.health_url is None or (url and http_get_status(url, timeout_s=1.0) == 200):
                self.ready_at[role] = time.time()
                return self.ready_at[role]
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"process {role} not ready after {timeout:g} s (health {url or 'unknown'}; "
                    f"log: {self.log_path(role)}): {last_line(self.log_path(role)) or 'no output'}"
                )
            time.sleep(_POLL_S)

    # -- observing ----------------------------------------------------------------------------

    def roles(self) -> list[str]:
        """Roles started by this group, in start order."""
        return list(self._order)

    def pid(self, role: str) -> int | None:
        proc = self._procs.get(role)
        return proc.pid if proc is not None else None

    def alive(self, role: str) -> bool:
        proc = self._procs.get(role)
        return proc is not None and proc.poll() is None

    def returncode(self, role: str) -> int | None:
        proc = self._procs.get(role)
        return proc.poll() if proc is not None else None

    def exits(self) -> list[dict]:
        """Every process of this group that ended on its own (or by a fault), in start order:
        `{role, pid, exit_code, signal}` (one of the two set; a SIGKILL is `signal: SIGKILL`).
        Processes this group stopped itself (teardown, a restart) are left out."""
        out = []
        for role, proc, stopped_here in self._history:
            code = proc.poll()
            if code is None or stopped_here:
                continue
            sig = _signal.Signals(-code).name if code < 0 and -code in _signal.valid_signals() else None
            out.append({"role": role, "pid": proc.pid, "exit_code": code if code >= 0 else None, "signal": sig})
        return out

    def log_path(self, role: str) -> str:
        return os.path.join(self.logs_dir, f"{role}.log")

    def previous_log_path(self, role: str) -> str:
        return os.path.join(self.logs_dir, f"{role}.previous.log")

    def pid_path(self, role: str) -> str:
        return os.path.join(self.pids_dir, f"{role}.pid")

    # -- acting -------------------------------------------------------------------------------

    def signal(self, role: str, sig: int) -> int:
        """Send sig to role's process (only if this group started it and it runs); return PID."""
        proc = self._procs.get(role)
        if proc is None:
            raise ConfigError(f"process {role}: not started by this group (roles: {', '.join(self._order) or 'none'})")
        if proc.poll() is not None:
            raise ConfigError(f"process {role} (pid {proc.pid}) is not running (exit code {proc.returncode})")
        os.kill(proc.pid, sig)
        return proc.pid

    def update_spec(self, spec: ProcessSpec) -> None:
        """Replace how an already started role is started by later restart() calls."""
        self._spec(spec.role)
        self.specs[spec.role] = spec

    def restart(self, role: str, grace_s: float = 10, wait: bool = True) -> int:
        """Stop role (if running), keep its log as logs/<role>.previous.log, start it again."""
        spec = self._spec(role)
        self.stop(role, grace_s=grace_s)
        return self.start(spec, wait=wait)

    def stop(self, role: str | None = None, grace_s: float = 10) -> None:
        """Stop one role, or every role in reverse start order: SIGTERM, SIGKILL after grace_s."""
        roles = [role] if role is not None else list(reversed(self._order))
        for r in roles:
            if r not in self._procs:
                if role is not None:
                    raise ConfigError(f"process {r}: not started by this group")
                continue
            proc = self._procs[r]
            for entry in self._history:  # its exit from here on is this group's doing, not a finding
                if entry[1] is proc and proc.poll() is None:
                    entry[2] = True
            _terminate(proc, grace_s)
            self._end_leftovers(proc.pid)
            self._release(r)
            try:
                os.unlink(self.pid_path(r))
            except FileNotFoundError:
                pass

    def _end_leftovers(self, pid: int) -> None:
        """SIGKILL what is left of the process group a stopped leader started in (its own
        session): children it orphaned, such as vLLM's engine processes after the API server
        exited, which would otherwise linger for seconds. Only processes started after the leader."""
        ticks = self._start_ticks.get(pid)
        if ticks is None:
            return
        for _ in range(100):  # bounded: SIGKILLed processes go within milliseconds
            members = group_members(pid, ticks)
            if not members:
                return
            for member in members:
                try:
                    os.kill(member, _signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(_POLL_S)

    def _hold(self, role: str, pid: int) -> None:
        """If the driver dies, the guardian ends this process (and its process group)."""
        from ftlocust import guardian

        self._release(role)
        g = guardian.active()
        if g is None:
            return
        try:
            action = guardian.process_action("stop-process", pid, label=role)
        except ProcessLookupError:
            return  # it exited at once: nothing to end (wait_ready says why)
        try:
            self._guardian_holds[role] = (g, g.hold(action))
        except guardian.GuardianError as e:
            _terminate(self._procs[role], 0)
            raise ConfigError(f"process {role}: not started, nothing would end it if ftlocust died: {e}") from None

    def _release(self, role: str) -> None:
        held = self._guardian_holds.pop(role, None)
        if held is not None:
            held[0].release(held[1])

    def _spec(self, role: str) -> ProcessSpec:
        try:
            return self.specs[role]
        except KeyError:
            raise ConfigError(
                f"process {role}: not started by this group (roles: {', '.join(self._order) or 'none'})"
            ) from None

    def __enter__(self) -> "ProcessGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _terminate(proc: subprocess.Popen, grace_s: float) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(_signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + max(0.0, grace_s)
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    if proc.poll() is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        # Bounded: SIGKILL cannot be ignored, only a process in uninterruptible I/O lingers.
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(_POLL_S)


def _kill_all(procs: dict) -> None:
    """Last resort at interpreter exit: children still running get SIGTERM, then SIGKILL."""
    running = [p for p in procs.values() if p.poll() is None]
    for p in running:
        try:
            p.send_signal(_signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 3
    while any(p.poll() is None for p in running) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    for p in running:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


class GroupProcesses:
    """The `Deployment` methods about processes, for deployments that run theirs in
    `self.group` (a `ProcessGroup`)."""

    group: ProcessGroup

    def __enter__(self):
        """`with Deployment(...) as d:` starts it, and stops what a failed start left."""
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def refresh_evidence(self) -> None:
        """Nothing to do: the processes write their log files themselves, as it happens."""

    def alive(self, role: str) -> bool:
        return self.group.alive(role)

    def exits(self) -> list[dict]:
        """How each process that ended during the run ended (`ProcessGroup.exits`)."""
        return self.group.exits()

    def pid(self, role: str) -> int | None:
        return self.group.pid(role)

    def process(self, role: str):
        """The process the role runs now, by identity (None when it is not running)."""
        from ftlocust.processes import ProcessRef

        pid = self.group.pid(role)
        return ProcessRef.capture(pid, role) if pid is not None and self.group.alive(role) else None


NETWORKS = ("loopback", "netns")  # `target.options.network` of a deployment of local processes


class NamespacedRoles:
    """`network: loopback | netns` for deployments of local processes (reference, dynamo).

    With netns each role runs in its own network namespace of a `ftlocust.netns.NetworkLab`
    (made in `_init_network`, created by `_make_network` at start, deleted by `_remove_network`
    at stop; the guardian deletes it if the driver dies): a role's argv starts with
    `_prefix(role)` and it binds and advertises `_host(role)`. The driver stays in the root
    namespace (the lab's role `client`). `_network_event` says what was made and removed: the
    reference deployment writes it to its events.jsonl, others log it."""

    network = "loopback"
    network_lab = None  # the ftlocust.netns.NetworkLab with network="netns"
    _lab_hold = None  # (guardian, hold ids) while the lab exists
    _lab_pending = False  # _make_network began and _remove_network has not run since

    def _init_network(self, network: str) -> None:
        """Once roles() is known: the lab for netns (nothing made yet: a dry run describes it)."""
        self.network = network
        self.network_lab = None
        self._lab_hold = None
        if network == "netns":
            from ftlocust.netns import NetworkLab

            self.network_lab = NetworkLab(self.roles())

    @property
    def partitioner(self):
        """The `Deployment` partitioner: the lab (None on loopback)."""
        return self.network_lab

    def _host(self, role: str) -> str:
        return self.network_lab.address(role) if self.network_lab is not None else "127.0.0.1"

    def _prefix(self, role: str) -> list[str]:
        """`ip netns exec NS` in netns mode: it execs, so the PID is still the program's."""
        return self.network_lab.exec_prefix(role) if self.network_lab is not None else []

    def _make_network(self) -> None:
        from ftlocust import guardian
        from ftlocust.netns import NetworkLab

        lab = self.network_lab
        self._lab_pending = True
        NetworkLab.preflight()
        g = guardian.active()
        if g is not None:  # before the namespaces exist: nothing outlives a killed driver
            self._lab_hold = (g, [g.hold(action) for action in lab.guardian_actions()])
        lab.create()
        self._network_event("network_created", lab=lab.lab_id, subnet=str(lab.subnet), namespaces=lab.namespace_names,
                            addresses={r: lab.address(r) for r in lab.roles})

    def _remove_network(self) -> None:
        lab = self.network_lab
        if lab is None or not self._lab_pending:
            return
        self._lab_pending = False
        lab.destroy()
        if self._lab_hold is not None:
            g, ids = self._lab_hold
            for hold_id in ids:
                g.release(hold_id)
            self._lab_hold = None
        self._network_event("network_removed", lab=lab.lab_id)

    def _network_event(self, event: str, **fields) -> None:
        import json
        import logging

        logging.getLogger("ftlocust.targets").info("%s %s", event, json.dumps(fields, separators=(",", ":")))
