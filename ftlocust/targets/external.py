"""A deployment ftlocust did not start (`--host`): processes by identity, evidence by URL/path.

The scenario names where each role's process, `/metrics` and log are:

    target:
      kind: external
      pids: {worker-1: "pidfile:/run/dynamo/pids/worker-1.pid"}   # or "pid:12345"
      metrics: {frontend: "http://my-frontend:8000/metrics"}
      logs: {frontend: /var/log/dynamo/frontend.log}

`start()` captures every named process's identity (command line and start time) — the dry run
shows them — and `signal` re-checks it, so a reused PID is never signalled. Nothing is started,
restarted or stopped: the deployment's own supervisor does that.
"""

from __future__ import annotations

from ftlocust.errors import ConfigError
from ftlocust.processes import ProcessRef


class ExternalDeployment:
    started_here = False
    partitioner = None  # its network is its own
    startup_s = None
    events_path = None
    frontend_role = "frontend"

    def __init__(self, host: str, pids: dict[str, str] | None = None, metrics: dict[str, str] | None = None,
                 logs: dict[str, str] | None = None):
        self.base_url = host.rstrip("/")
        self.pid_targets = dict(pids or {})
        self.metrics = dict(metrics or {})
        self.logs = dict(logs or {})
        self.processes: dict[str, ProcessRef] = {}

    @classmethod
    def from_spec(cls, spec, run_dir: str, host: str | None = None) -> "ExternalDeployment":
        if host is None:
            raise ConfigError("--host: the scenario's target is external, so --host is required")
        return cls(host, pids=spec.pids, metrics=spec.metrics, logs=spec.logs)

    def start(self) -> "ExternalDeployment":
        for role, target in self.pid_targets.items():
            self.processes[role] = ProcessRef.from_target(target, f"target.pids.{role}")
        return self

    def stop(self) -> None:
        """Nothing: ftlocust never stops what it did not start."""

    def refresh_evidence(self) -> None:
        """Nothing to do: the log files named are written by the deployment itself."""

    def roles(self) -> list[str]:
        return list(dict.fromkeys([*self.pid_targets, *self.metrics, *self.logs]))

    def worker_roles(self) -> list[str]:
        return [r for r in self.pid_targets if r != self.frontend_role]

    def _process(self, role: str) -> ProcessRef:
        if role not in self.processes:
            raise ConfigError(f"target.pids: no process named for role {role!r} "
                              f"(named: {', '.join(self.pid_targets) or 'none'})")
        return self.processes[role]

    def alive(self, role: str) -> bool:
        return role in self.processes and self.processes[role].alive()

    def pid(self, role: str) -> int | None:
        return self.processes[role].pid if role in self.processes else None

    def process(self, role: str) -> ProcessRef:
        """The process named for `role`, as captured by `start()`."""
        return self._process(role)

    def signal(self, role: str, sig: int) -> int:
        return self._process(role).signal(sig)

    def restart(self, role: str) -> None:
        raise ConfigError(f"restart: {role} belongs to an external deployment; its own supervisor restarts it")

    def recovered(self, role: str) -> bool | None:
        return None  # no view of the deployment's routing: the client figures tell

    def metrics_url(self, role: str) -> str | None:
        return self.metrics.get(role)

    def log_path(self, role: str) -> str | None:
        return self.logs.get(role)

    def health_url(self, role: str) -> str | None:
        return None

    def address(self, role: str) -> str | None:
        return None
