"""ReferenceDeployment: start, observe and stop the embedded reference deployment from Python.

A frontend process and N worker processes (or prefill + decode workers) on 127.0.0.1, run by a
ProcessGroup under run_dir: logs/<role>.log, pids/<role>.pid, addr/<role>.json (where each
process listens: only the frontend port may be fixed, the rest are OS-assigned) and events.jsonl
(the ground-truth event log).

With `network="netns"` each role runs in its own network namespace of a `ftlocust.netns`
lab made at start() and deleted at stop() (the guardian deletes it if the driver dies): every
process listens on its namespace's address, all traffic between roles crosses the lab's router
namespace, where `partition` faults cut it. The driver (Locust) stays in the root namespace and
reaches the frontend through the lab's one route.

Each worker has a GPU identity (`gpus`, default synthetic PCI bus ids: worker-k on
`00000000:{0x18+k}:00.0`, the fake NVML's GPU k-1); with `kernel_log=True` every worker watches
`run_dir/kernel.log` (a stand-in for the kernel log, where a `gpu-xid` fault writes) for XID
lines naming its GPU. `asleep` starts workers in sleep mode; `engine_url(role)` is where their
sleep / wake endpoints are (`ftlocust.failover`).
"""

from __future__ import annotations

import json
import os
import signal as _signal
import sys
import time

import ftlocust
from ftlocust.errors import ConfigError
from ftlocust.gpu import pci_key
from ftlocust.targets.local import NETWORKS, GroupProcesses, NamespacedRoles, ProcessGroup, ProcessSpec, http_get_status
from ftlocust.targets.reference import client
from ftlocust.targets.reference.events import EventLog
from ftlocust.targets.reference.wire import AGGREGATED, DECODE, PREFILL

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(ftlocust.__file__)))


class ReferenceDeployment(NamespacedRoles, GroupProcesses):
    """The embedded default target. Knobs: README.md beside this file."""

    frontend_role = "frontend"
    started_here = True

    @classmethod
    def from_spec(cls, spec, run_dir: str, host: str | None = None) -> "ReferenceDeployment":
        """From a scenario's `target` (kind reference): workers, migration limit, options."""
        from ftlocust.targets import options_for

        options = options_for(cls, spec.options, "reference", {"workers", "migration_limit"})
        return cls(run_dir, workers=spec.workers, migration_limit=spec.migration_limit, **options)

    def __init__(
        self,
        run_dir: str | os.PathLike,
        workers: int = 2,
        port: int = 0,
        migration_limit: int = 3,
        disagg: bool = False,
        model: str = "ftlocust-ref",
        token_delay_s: float = 0.02,
        prefill_base_s: float = 0.005,
        prefill_per_token_s: float = 0.0001,
        kv_capacity: int = 65536,
        busy_threshold: float = 0.0,
        context_length: int = 8192,
        lease_ttl_s: float = 10.0,
        drain_timeout_s: float = 10.0,
        frontend_drain_timeout_s: float = 5.0,
        inhibit_s: float = 5.0,
        retry_after_s: int = 1,
        rejection_status: int = 503,
        prefill_workers: int = 1,
        engine_core: str | None = None,
        kernel_log: bool = False,
        gpus: list[str] | None = None,
        asleep: list[str] | None = None,
        wake_wait_s: float = 5.0,
        network: str = "loopback",
        startup_timeout_s: float = 60.0,
        stop_grace_s: float = 15.0,
        log_level: str = "INFO",
        python: str = sys.executable,
    ):
        _check(isinstance(workers, int) and workers >= 1, "workers", workers, "an integer >= 1")
        _check(isinstance(port, int) and 0 <= port <= 65535, "port", port, "an integer in 0..65535")
        _check(isinstance(migration_limit, int) and migration_limit >= 0, "migration_limit", migration_limit,
               "an integer >= 0 (0 disables migration)")
        _check(isinstance(model, str) and model.strip() == model and model, "model", model, "a non-empty name")
        for name, value in (("token_delay_s", token_delay_s), ("prefill_base_s", prefill_base_s),
                            ("prefill_per_token_s", prefill_per_token_s), ("busy_threshold", busy_threshold),
                            ("drain_timeout_s", drain_timeout_s), ("frontend_drain_timeout_s", frontend_drain_timeout_s),
                            ("inhibit_s", inhibit_s)):
            _check(isinstance(value, (int, float)) and value >= 0, name, value, "a number >= 0")
        _check(rejection_status in (503, 529), "rejection_status", rejection_status, "503 or 529")
        _check(isinstance(kv_capacity, int) and kv_capacity >= 1, "kv_capacity", kv_capacity, "an integer >= 1")
        _check(isinstance(context_length, int) and context_length >= 1, "context_length", context_length,
               "an integer >= 1")
        _check(isinstance(lease_ttl_s, (int, float)) and lease_ttl_s > 0, "lease_ttl_s", lease_ttl_s, "a number > 0")
        _check(isinstance(prefill_workers, int) and prefill_workers >= 0, "prefill_workers", prefill_workers,
               "an integer >= 0")
        _check(engine_core is None or (isinstance(engine_core, str) and engine_core != ""
                                       and not any(c.isspace() for c in engine_core)),
               "engine_core", engine_core, "null or a process name without whitespace (e.g. VLLM::EngineCore)")
        _check(network in NETWORKS, "network", network, " or ".join(NETWORKS))
        _check(isinstance(kernel_log, bool), "kernel_log", kernel_log, "true or false")
        _check(isinstance(wake_wait_s, (int, float)) and not isinstance(wake_wait_s, bool) and wake_wait_s >= 0,
               "wake_wait_s", wake_wait_s, "a number >= 0")
        self.run_dir = os.path.abspath(os.fspath(run_dir))
        self.workers = workers
        self.port = port
        self.migration_limit = migration_limit
        self.disagg = disagg
        self.model = model
        self.token_delay_s = float(token_delay_s)
        self.prefill_base_s = float(prefill_base_s)
        self.prefill_per_token_s = float(prefill_per_token_s)
        self.kv_capacity = kv_capacity
        self.busy_threshold = float(busy_threshold)
        self.context_length = context_length
        self.lease_ttl_s = float(lease_ttl_s)
        self.drain_timeout_s = float(drain_timeout_s)
        self.frontend_drain_timeout_s = float(frontend_drain_timeout_s)
        self.inhibit_s = float(inhibit_s)
        self.retry_after_s = int(retry_after_s)
        self.rejection_status = rejection_status
        self.prefill_workers = prefill_workers if disagg else 0
        self.engine_core = engine_core
        self.kernel_log = kernel_log
        self.wake_wait_s = float(wake_wait_s)
        self.gpus = self._check_gpus(gpus)
        self.asleep = self._check_asleep(asleep)
        self.startup_timeout_s = float(startup_timeout_s)
        self.stop_grace_s = float(stop_grace_s)
        self.log_level = log_level
        self.python = python
        self.group = ProcessGroup(self.run_dir)
        self.addr_dir = os.path.join(self.run_dir, "addr")
        self.events_path = os.path.join(self.run_dir, "events.jsonl")
        self.base_url: str | None = None
        self.startup_s: float | None = None
        self._events: EventLog | None = None
        self._started = False
        self._exits_recorded: set[int] = set()  # pids whose process_exited is in events.jsonl
        self._init_network(network)  # network_lab: a ftlocust.netns.NetworkLab with "netns" (made at start)

    # -- roles and addresses ------------------------------------------------------------------

    def worker_roles(self) -> list[str]:
        """Worker roles in start order: worker-1..N, or prefill-1..M then decode-1..N."""
        if self.disagg:
            return [f"prefill-{i}" for i in range(1, self.prefill_workers + 1)] + [
                f"decode-{i}" for i in range(1, self.workers + 1)
            ]
        return [f"worker-{i}" for i in range(1, self.workers + 1)]

    def roles(self) -> list[str]:
        return [self.frontend_role] + self.worker_roles()

    def _check_gpus(self, gpus) -> dict[str, str]:
        """role -> PCI bus id: one per worker role, in worker_roles() order; default synthetic."""
        roles = self.worker_roles()
        if gpus is None:
            return {role: f"00000000:{0x18 + k:02X}:00.0" for k, role in enumerate(roles, 1)}
        _check(isinstance(gpus, list) and all(isinstance(g, str) and pci_key(g) is not None for g in gpus),
               "gpus", gpus, "a list of PCI bus ids like 00000000:19:00.0")
        _check(len(gpus) == len(roles), "gpus", gpus, f"one PCI bus id per worker ({len(roles)}: {', '.join(roles)})")
        _check(len({pci_key(g) for g in gpus}) == len(gpus), "gpus", gpus, "distinct PCI bus ids")
        return dict(zip(roles, gpus))

    def _check_asleep(self, asleep) -> list[str]:
        roles = self.worker_roles()
        if asleep is None:
            return []
        _check(isinstance(asleep, list) and all(isinstance(r, str) for r in asleep), "asleep", asleep,
               "a list of worker roles")
        for role in asleep:
            _check(role in roles, "asleep", asleep, f"worker roles ({', '.join(roles)}), not {role!r}")
        serving = [r for r in roles if not r.startswith("prefill-")]
        _check(any(r not in asleep for r in serving), "asleep", asleep,
               "at least one serving worker awake (the start-up request needs one)")
        return list(asleep)

    def gpu_pci(self, role: str) -> str | None:
        """The PCI bus id of the GPU role runs on (None for the frontend)."""
        self._known_role(role)
        return self.gpus.get(role)

    def kernel_log_path(self) -> str | None:
        """The file the workers watch for XID lines (`kernel_log=True`), else None."""
        return os.path.join(self.run_dir, "kernel.log") if self.kernel_log else None

    def engine_url(self, role: str) -> str | None:
        """Base URL of role's engine-control endpoints (/engine/sleep, /engine/wake_up, ...):
        the worker's own port. None for the frontend or a worker not started yet."""
        self._known_role(role)
        if role == self.frontend_role:
            return None
        info = self._read_addr(role)
        return info["url"] if info else None

    def _addr_path(self, role: str) -> str:
        return os.path.join(self.addr_dir, f"{role}.json")

    def _read_addr(self, role: str, require_current_pid: bool = True) -> dict | None:
        try:
            with open(self._addr_path(role)) as f:
                info = json.load(f)
        except (OSError, ValueError):
            return None
        if require_current_pid and info.get("pid") != self.group.pid(role):
            return None  # left by a previous incarnation of the role
        return info

    def url(self, role: str) -> str:
        """Base URL (http://127.0.0.1:PORT) where role listens (its last known address)."""
        self._known_role(role)
        if role == self.frontend_role and self.base_url:
            return self.base_url
        info = self._read_addr(role, require_current_pid=False)
        if info is None:
            raise ConfigError(f"role {role}: address unknown (not started yet? see {self._addr_path(role)})")
        return info["url"]

    def address(self, role: str) -> str | None:
        try:
            return self.url(role).split("://", 1)[1]
        except ConfigError:
            return None

    def health_url(self, role: str) -> str:
        return self.url(role) + "/health"

    def metrics_url(self, role: str) -> str:
        return self.url(role) + "/metrics"

    def log_path(self, role: str) -> str:
        self._known_role(role)
        return self.group.log_path(role)

    def _known_role(self, role: str) -> None:
        if role not in self.roles():
            raise ConfigError(f"role {role!r}: not part of this deployment (roles: {', '.join(self.roles())})")

    # -- specs --------------------------------------------------------------------------------

    def _env(self) -> dict:
        path = os.environ.get("PYTHONPATH")
        return {"PYTHONPATH": _PROJECT_ROOT + (os.pathsep + path if path else ""), "PYTHONUNBUFFERED": "1"}

    def _health_callable(self, role: str):
        def health() -> str | None:
            info = self._read_addr(role)
            return info["url"] + "/health" if info else None

        return health

    def _frontend_spec(self, port: int) -> ProcessSpec:
        argv = [
            self.python, "-m", "ftlocust.targets.reference.frontend",
            "--host", self._host(self.frontend_role), "--port", str(port),
            "--addr-file", self._addr_path(self.frontend_role),
            "--events", self.events_path,
            "--migration-limit", str(self.migration_limit),
            "--context-length", str(self.context_length),
            "--busy-threshold", repr(self.busy_threshold),
            "--retry-after-s", str(self.retry_after_s),
            "--rejection-status", str(self.rejection_status),
            "--inhibit-s", repr(self.inhibit_s),
            "--lease-sweep-s", repr(min(0.1, self.lease_ttl_s / 10)),
            "--wake-wait-s", repr(self.wake_wait_s),
            "--drain-timeout-s", repr(self.frontend_drain_timeout_s),
            "--parent-pid", str(os.getpid()),
            "--log-level", self.log_level,
        ]
        return ProcessSpec(self.frontend_role, self._prefix(self.frontend_role) + argv, env=self._env(),
                           health_url=self._health_callable(self.frontend_role), startup_timeout_s=self.startup_timeout_s)

    def _worker_spec(self, role: str) -> ProcessSpec:
        kind = AGGREGATED if not self.disagg else (PREFILL if role.startswith("prefill-") else DECODE)
        argv = [
            self.python, "-m", "ftlocust.targets.reference.worker",
            "--name", role, "--kind", kind, "--model", self.model,
            "--host", self._host(role),
            "--frontend-url", self.base_url,
            "--addr-file", self._addr_path(role),
            "--token-delay-s", repr(self.token_delay_s),
            "--prefill-base-s", repr(self.prefill_base_s),
            "--prefill-per-token-s", repr(self.prefill_per_token_s),
            "--kv-capacity", str(self.kv_capacity),
            "--lease-ttl-s", repr(self.lease_ttl_s),
            "--drain-timeout-s", repr(self.drain_timeout_s),
            "--parent-pid", str(os.getpid()),
            "--log-level", self.log_level,
        ]
        if self.engine_core:
            argv += ["--engine-core", self.engine_core]
        argv += ["--gpu", self.gpus[role]]
        if self.kernel_log:
            argv += ["--kernel-log", self.kernel_log_path()]
        if role in self.asleep:
            argv += ["--asleep"]
        return ProcessSpec(role, self._prefix(role) + argv, env=self._env(), health_url=self._health_callable(role),
                           startup_timeout_s=self.startup_timeout_s)

    def registry_endpoint(self) -> tuple[str, int | None]:
        """Where workers register (role, port): their leases go to the frontend's port."""
        port = int(self.base_url.rsplit(":", 1)[1]) if self.base_url else (self.port or None)
        return self.frontend_role, port

    # -- lifecycle ----------------------------------------------------------------------------

    def _event(self, event: str, **fields) -> None:
        if self._events is not None:
            self._events.write(event, **fields)

    _network_event = _event  # network_created / network_removed go to events.jsonl

    def start(self) -> "ReferenceDeployment":
        """Start every process; return once the model is listed and one completion succeeded.

        Raises ConfigError (one line naming the process and its log file) and stops whatever it
        started if anything fails.
        """
        if self._started:
            raise ConfigError("reference deployment: already started")
        t0 = time.time()
        os.makedirs(self.addr_dir, exist_ok=True)
        for role in self.roles():
            try:
                os.unlink(self._addr_path(role))
            except FileNotFoundError:
                pass
        self._events = EventLog(self.events_path, "deployment")
        self._started = True
        if self.kernel_log:
            os.makedirs(self.run_dir, exist_ok=True)
            open(self.kernel_log_path(), "w").close()  # empty: a fresh deployment has no GPU history
        try:
            if self.network_lab is not None:
                self._make_network()
            self._start_role(self._frontend_spec(self.port))
            self.base_url = self._read_addr(self.frontend_role)["url"]
            # Restarts must come back on the same port: the workers know this URL.
            self.group.update_spec(self._frontend_spec(int(self.base_url.rsplit(":", 1)[1])))
            specs = [self._worker_spec(role) for role in self.worker_roles()]
            for spec in specs:  # start all, then wait: workers boot in parallel
                self.group.start(spec, wait=False)
                self._event("process_started", role=spec.role, pid=self.group.pid(spec.role))
            for spec in specs:
                self.group.wait_ready(spec.role)
                self._event("process_ready", role=spec.role, pid=self.group.pid(spec.role))
            self._wait_serving(deadline=t0 + self.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.time() - t0
        self._event("deployment_ready", base_url=self.base_url, startup_s=round(self.startup_s, 3),
                    pids={r: self.group.pid(r) for r in self.roles()})
        return self

    def _start_role(self, spec: ProcessSpec) -> None:
        self.group.start(spec, wait=False)
        self._event("process_started", role=spec.role, pid=self.group.pid(spec.role))
        self.group.wait_ready(spec.role)
        self._event("process_ready", role=spec.role, pid=self.group.pid(spec.role))

    def _wait_serving(self, deadline: float) -> None:
        """Model listed in /v1/models, then one real completion answered 200."""
        last = "no answer"
        while True:
            status, models = client.get_json(self.base_url, "/v1/models", timeout_s=2)
            if status == 200 and any(m.get("id") == self.model for m in models.get("data", [])):
                status, _, body = client.request(
                    self.base_url, "POST", "/v1/completions",
                    {"model": self.model, "prompt": "ftlocust readiness probe", "max_tokens": 1, "seed": 0},
                    timeout_s=10,
                )
                if status == 200:
                    return
                last = f"first completion answered {status}: {body[:200].decode('utf-8', 'replace')}"
            else:
                last = f"model {self.model} not listed in /v1/models"
            if time.time() >= deadline:
                raise ConfigError(
                    f"process frontend not serving after {self.startup_timeout_s:g} s: {last} "
                    f"(log: {self.group.log_path(self.frontend_role)})"
                )
            time.sleep(0.05)

    def signal(self, role: str, sig: int) -> int:
        """Send a signal to role's process (recorded in events.jsonl); return its PID."""
        self._known_role(role)
        pid = self.group.signal(role, sig)
        self._event("process_signalled", role=role, pid=pid, signal=_signal.Signals(sig).name)
        return pid

    def recovered(self, role: str) -> bool:
        """Server view after a fault on `role`: the frontend serves and routes only to live
        workers — a dead worker is gone from its instance list (lease expired or deregistered),
        a live (or restarted) one is listed again with its current PID and answers /health."""
        try:
            status, body = client.get_json(self.url(self.frontend_role), "/health", timeout_s=2)
        except OSError:
            return False
        if status != 200 or not isinstance(body, dict):
            return False
        listed = {i["name"]: i for i in body.get("instances", [])}
        awake = any(not i.get("asleep") for i in listed.values())  # a sleeping worker serves nothing
        if role == self.frontend_role:
            return awake
        if self.group.alive(role):  # restarted, resumed — or still dying: it must answer itself
            entry = listed.get(role)
            return (entry is not None and entry.get("pid") == self.group.pid(role)
                    and http_get_status(self.health_url(role), timeout_s=1.0) == 200)
        return awake and role not in listed

    def restart(self, role: str) -> int:
        """Stop role, start it again (previous log kept as logs/<role>.previous.log); return new PID.

        Returns when it is ready; for the frontend, when the model is listed and answers again.
        """
        self._known_role(role)
        old = self.group.pid(role)
        self.record_exit(role)
        self.group.restart(role, grace_s=self.stop_grace_s, wait=False)
        pid = self.group.pid(role)
        self._event("process_restarted", role=role, pid=pid, previous_pid=old)
        self.group.wait_ready(role)
        if role == self.frontend_role:
            self._wait_serving(deadline=time.time() + self.startup_timeout_s)
        self._event("process_ready", role=role, pid=pid)
        return pid

    def stop(self) -> None:
        """Stop every process this deployment started (workers first, then the frontend)."""
        if not self._started:
            return
        for role in reversed(self.group.roles()):
            pid = self.group.pid(role)
            was_alive = self.group.alive(role)
            if not was_alive:
                self.record_exit(role)
            self.group.stop(role, grace_s=self.stop_grace_s)
            if was_alive:
                self._event("process_stopped", role=role, pid=pid, returncode=self.group.returncode(role))
        try:
            self._remove_network()
        finally:
            self._event("deployment_stopped")
        if self._events is not None:
            self._events.close()
            self._events = None
        self._started = False

    def record_exit(self, role: str) -> int | None:
        """If role's process exited on its own or was killed (not stopped by `stop`/`restart`),
        write `process_exited` with its exit code to events.jsonl, once per pid, and return the
        code; else None. `restart` and `stop` call it; the launcher polls it."""
        pid = self.group.pid(role)
        if pid is None or pid in self._exits_recorded or self.group.alive(role):
            return None
        self._exits_recorded.add(pid)
        code = self.group.returncode(role)
        self._event("process_exited", role=role, pid=pid, returncode=code)
        return code

    def pids(self) -> dict[str, int | None]:
        return {role: self.group.pid(role) for role in self.group.roles()}

    def __enter__(self) -> "ReferenceDeployment":
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _check(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"reference deployment {name}={value!r}: expected {expected}")
