"""Faults: the `Fault` interface and a registry of kinds.

A fault is data (`FaultSpec`) turned into an object with four verbs, chaostoolkit style:
`preflight` (resolve the target, check permissions; raise `ConfigError` with one line),
`describe` (what a dry run prints), `inject` (returns the `FaultEvent` with the instant the
fault is in effect), `recover` (idempotent; always called at the end of a run, whatever
happened). Targets are identities, never name patterns: a role of a deployment ftlocust
started, or a PID whose command line and start time were captured at preflight.
"""

from __future__ import annotations

import logging
import os
import signal as signal_module
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ftlocust.errors import ConfigError
from ftlocust.phases import FaultEvent
from ftlocust.scenario import FaultSpec

log = logging.getLogger("ftlocust.faults")

SERVING_WORKER = "serving-worker"  # the worker serving the probe request, found from its log


@dataclass
class FaultContext:
    deployment: Any | None = None  # a ReferenceDeployment / DynamoDeployment, or None (external)
    artifacts_dir: str = "."
    dry_run: bool = False
    # Returns the role serving the probe request (evidence.find_serving_role); set by the drill.
    resolve_serving: Callable[[], str | None] | None = None
    extra: dict = field(default_factory=dict)


class Fault:
    kind = ""

    def __init__(self, spec: FaultSpec):
        self.spec = spec
        self.event: FaultEvent | None = None

    @property
    def name(self) -> str:
        return self.spec.name or f"{self.kind}:{self.spec.target}"

    def preflight(self, ctx: FaultContext) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def inject(self, ctx: FaultContext) -> FaultEvent:
        raise NotImplementedError

    def recover(self, ctx: FaultContext) -> None:
        raise NotImplementedError


REGISTRY: dict[str, type[Fault]] = {}


def register(cls: type[Fault]) -> type[Fault]:
    REGISTRY[cls.kind] = cls
    return cls


def build_fault(spec: FaultSpec) -> Fault:
    try:
        cls = REGISTRY[spec.kind]
    except KeyError:
        raise ConfigError(
            f"fault {spec.name!r}: kind: unknown {spec.kind!r} (expected one of {', '.join(sorted(REGISTRY))})"
        ) from None
    return cls(spec)


SIGNALS = {
    "SIGKILL": signal_module.SIGKILL,
    "SIGTERM": signal_module.SIGTERM,
    "SIGINT": signal_module.SIGINT,
    "SIGSTOP": signal_module.SIGSTOP,
}


def _process_identity(pid: int) -> tuple[str, str] | None:
    """(cmdline, start time in clock ticks) of a live process, None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return cmdline, fields[19]


@register
class ProcessSignalFault(Fault):
    """Send a signal to one process: SIGKILL (crash), SIGTERM (graceful shutdown with the
    target's drain), SIGINT, SIGSTOP (hang; recovered with SIGCONT).

    params: signal (default SIGKILL); restart (bool: restart the role at recovery);
    restart_after_s (restart this long after the fault instead of at the end);
    stop_for_s (SIGSTOP only: SIGCONT after this long instead of at the end).
    target: a deployment role ("worker-1", "frontend"), "serving-worker", "pid:N" or
    "pidfile:PATH" (external processes; identity captured at preflight and re-checked).
    """

    kind = "process-signal"
    PARAMS = {"signal", "restart", "restart_after_s", "stop_for_s"}

    def __init__(self, spec: FaultSpec):
        super().__init__(spec)
        unknown = sorted(set(spec.params) - self.PARAMS)
        if unknown:
            raise ConfigError(f"fault {spec.name!r}: unknown field {unknown[0]!r} for kind {self.kind}")
        sig_name = str(spec.params.get("signal", "SIGKILL")).upper()
        if not sig_name.startswith("SIG"):
            sig_name = "SIG" + sig_name
        if sig_name not in SIGNALS:
            raise ConfigError(f"fault {spec.name!r}: signal: expected one of {', '.join(SIGNALS)}, got {sig_name!r}")
        self.signal_name = sig_name
        self.signal = SIGNALS[sig_name]
        self.restart = bool(spec.params.get("restart", False))
        self.restart_after_s = self._seconds(spec, "restart_after_s")
        self.stop_for_s = self._seconds(spec, "stop_for_s")
        self._pid: int | None = None
        self._identity: tuple[str, str] | None = None
        self._role: str | None = None
        self._recovered = False

    @staticmethod
    def _seconds(spec: FaultSpec, key: str) -> float | None:
        value = spec.params.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ConfigError(f"fault {spec.name!r}: {key}: expected a number of seconds >= 0, got {value!r}")
        return value

    def describe(self) -> str:
        what = {
            SERVING_WORKER: "the worker serving the probe request (found in the worker logs at fire time)",
        }.get(self.spec.target, self.spec.target)
        if self._pid is not None:
            what += f" (pid {self._pid}: {self._identity[0] if self._identity else '?'})"
        tail = ""
        if self.restart:
            tail = f", restart {self.restart_after_s:g} s after" if self.restart_after_s is not None else ", restart at recovery"
        if self.signal_name == "SIGSTOP":
            tail += f", SIGCONT after {self.stop_for_s} s" if self.stop_for_s else ", SIGCONT at recovery"
        return f"{self.signal_name} → {what}, {self.spec.trigger.describe()}{tail}"

    def preflight(self, ctx: FaultContext) -> None:
        target = self.spec.target
        where = f"fault {self.name!r}: target"
        if target.startswith("pid:") or target.startswith("pidfile:"):
            pid = self._pid_from_target(target, where)
            identity = _process_identity(pid)
            if identity is None:
                raise ConfigError(f"{where}: no running process with pid {pid}")
            try:
                os.kill(pid, 0)
            except PermissionError:
                raise ConfigError(f"{where}: no permission to signal pid {pid} ({identity[0][:60]})") from None
            self._pid, self._identity = pid, identity
            return
        if ctx.deployment is None:
            raise ConfigError(f"{where}: {target!r} names a deployment role, but no deployment was started "
                              f"(use pid:N or pidfile:PATH against --host)")
        if target == SERVING_WORKER:
            if self.spec.trigger.mid_stream_chunks is None:
                raise ConfigError(f"{where}: serving-worker needs trigger.mid_stream_chunks (a probe request in flight)")
            return
        roles = ctx.deployment.group.roles()
        if target not in roles:
            raise ConfigError(f"{where}: unknown role {target!r} (expected one of {', '.join(roles)}, serving-worker)")

    @staticmethod
    def _pid_from_target(target: str, where: str) -> int:
        kind, _, value = target.partition(":")
        if kind == "pidfile":
            try:
                with open(value, encoding="utf-8") as f:
                    value = f.read().strip()
            except OSError as e:
                raise ConfigError(f"{where}: cannot read pid file {value!r}: {e.strerror}") from None
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a pid, got {value!r}") from None

    def _resolve_role(self, ctx: FaultContext) -> str:
        if self.spec.target != SERVING_WORKER:
            return self.spec.target
        role = ctx.resolve_serving() if ctx.resolve_serving else None
        if role is None:
            raise RuntimeError("could not find the worker serving the probe request in the worker logs")
        return role

    def inject(self, ctx: FaultContext) -> FaultEvent:
        detail: dict[str, Any] = {"signal": self.signal_name}
        if self._pid is not None:  # external process: re-check it is still the one we saw
            if _process_identity(self._pid) != self._identity:
                raise RuntimeError(f"pid {self._pid} is no longer the process seen at preflight")
            os.kill(self._pid, self.signal)
            target = f"pid:{self._pid}"
        else:
            self._role = self._resolve_role(ctx)
            self._pid = ctx.deployment.signal(self._role, self.signal)
            target = self._role
        injected_at = time.time()
        detail["pid"] = self._pid
        log.info("injected %s on %s (pid %s)", self.signal_name, target, self._pid)
        self.event = FaultEvent(name=self.name, kind=self.kind, target=target, injected_at=injected_at,
                                recovered_at=None, detail=detail)
        return self.event

    def scheduled_recovery_s(self) -> float | None:
        """Seconds after injection at which the drill should call recover() early, if any."""
        if self.signal == signal_module.SIGSTOP and self.stop_for_s:
            return float(self.stop_for_s)
        if self.restart and self.restart_after_s is not None:
            return float(self.restart_after_s)
        return None

    def recover(self, ctx: FaultContext) -> None:
        if self._recovered or self.event is None:
            return
        self._recovered = True
        if self.signal == signal_module.SIGSTOP:
            self._send(ctx, signal_module.SIGCONT)
        if self.restart and self._role is not None and ctx.deployment is not None:
            if ctx.deployment.group.alive(self._role):
                ctx.deployment.group.stop(self._role)
            ctx.deployment.restart(self._role)
        self.event.recovered_at = time.time()
        log.info("recovered %s", self.name)

    def _send(self, ctx: FaultContext, sig: int) -> None:
        try:
            if self._role is not None and ctx.deployment is not None:
                ctx.deployment.signal(self._role, sig)
            elif self._pid is not None and _process_identity(self._pid) == self._identity:
                os.kill(self._pid, sig)
        except ProcessLookupError:
            pass
