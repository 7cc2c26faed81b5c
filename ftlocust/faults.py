"""Faults: the `Fault` interface, the registry of kinds, and the one shared target resolution.

A fault is data (`FaultSpec`, from the scenario) turned into an object with verbs, chaostoolkit
style, validation next to behaviour:

    validate()        check the kind's own fields (spec.params); ConfigError, one line
    preflight(ctx)    resolve the target, check permissions (before load); ConfigError, one line
    describe()        what a dry run prints: the exact process / role, the trigger
    inject(ctx)       put the fault in effect; returns the `FaultEvent` with the instant it is
    recover(ctx)      lift its effect; idempotent; returns what it did ("SIGCONT to worker-1") or
                      None when there is nothing to undo; raises when the rollback failed

and explicit hooks the drill asks instead of reaching into a kind:

    affected_role()         the deployment role the fault hit (after inject): the server view
                            waits until the deployment serves without it or with its replacement
    server_recovered(ctx)   that server view, polled (default: deployment.recovered(role))
    scheduled_recovery_s()  seconds after injection at which the drill calls recover() early
                            (default: the spec's `duration_s`)
    close(ctx)              the run is over: free what preflight prepared (a helper process,
                            an open file), fired or not
    reversible              the effect lasts until recover() lifts it (a stopped process, a
                            partition): only these take `duration_s`

Every fault with a lasting effect hands its rollback to the guardian (`ftlocust.guardian`, a
process that lifts it if ftlocust dies) with `ctx.guard(self.name, action)` right BEFORE it puts
the effect in place; the drill releases it once recover() succeeded. A kind must inject without
starting a process: on a busy machine a fork takes seconds and the fault lands late.

Fields every kind takes (`FaultSpec`): `duration_s` (lift this long after injection) and
`repeat: {every_s, count}` — `count` occurrences, each its own `Fault` (named `name#1`…) and its
own timeline entry, the next one `every_s` after the previous one fired (`build_faults`).

Each kind is a module in `ftlocust/fault_kinds/`, imported when a scenario uses it, so a kind's
optional library is needed only then. Users add kinds from a plugin with `register`.

Targets are identities, never name patterns (`resolve_target`): a role of the deployment
(`worker-1`, `frontend`, and for an external deployment the roles its `target.pids` names),
`serving-worker` (the worker whose log shows the probe's request id, found when the fault
fires), or `pid:N` / `pidfile:PATH` (command line and start time captured at preflight and
re-checked before every signal).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from ftlocust.errors import ConfigError
from ftlocust.phases import FaultEvent
from ftlocust.processes import ProcessRef, is_process_target
from ftlocust.scenario import FaultSpec
from ftlocust.validation import did_you_mean

log = logging.getLogger("ftlocust.faults")

SERVING_WORKER = "serving-worker"


@dataclass
class FaultContext:
    """What a fault may use. `deployment` satisfies `ftlocust.targets.Deployment` (the embedded
    one, or the external one named by --host and the scenario)."""

    deployment: Any = None
    artifacts_dir: str = "."
    dry_run: bool = False
    # The worker role serving the probe request (from the worker logs), or None; set by the drill.
    resolve_serving: Callable[[], str | None] | None = None
    probe_request_id: Callable[[], str | None] | None = None  # the probe's server-side id, once known
    extra: dict = field(default_factory=dict)
    guardian: Any = None  # ftlocust.guardian.Guardian; None: no guardian (a kind used on its own)
    holds: dict[str, list[int]] = field(default_factory=dict)  # fault name -> guardian hold ids

    def guard(self, fault_name: str, action: dict) -> None:
        """Before a lasting effect: hand its rollback (guardian action data) to the guardian,
        which runs it if ftlocust dies first. Raises GuardianError when the guardian is gone:
        a fault nobody would lift is not injected."""
        if self.guardian is not None:
            self.holds.setdefault(fault_name, []).append(self.guardian.hold(action))

    def release(self, fault_name: str) -> None:
        """The fault was lifted by the driver: the guardian forgets its rollbacks."""
        for hold_id in self.holds.pop(fault_name, []):
            self.guardian.release(hold_id)


# --- targets -----------------------------------------------------------------------------------


@dataclass
class Target:
    """What a fault acts on. `role` is set for deployment roles (for `serving-worker` once the
    fault fires), `process` for pid:/pidfile: targets."""

    spec: str
    role: str | None = None
    process: ProcessRef | None = None

    def describe(self) -> str:
        if self.process is not None:
            return f"{self.role or self.spec} ({self.process.describe()})"
        if self.spec == SERVING_WORKER and self.role is None:
            return "the worker serving the probe request (found in the worker logs when the fault fires)"
        return self.role or self.spec

    def signal(self, ctx: FaultContext, sig: int) -> int:
        if self.process is not None:
            return self.process.signal(sig)
        return ctx.deployment.signal(self.role, sig)

    def alive(self, ctx: FaultContext) -> bool:
        if self.process is not None:
            return self.process.alive()
        return ctx.deployment.alive(self.role)


def resolve_target(spec: FaultSpec, ctx: FaultContext, where: str) -> Target:
    """Preflight: the fault's target as an identity. ConfigError (one line) when there is none."""
    target = spec.target
    here = f"{where}.target" if where else "target"
    if is_process_target(target):
        return Target(target, process=ProcessRef.from_target(target, here))
    deployment = ctx.deployment
    if deployment is None:
        raise ConfigError(f"{here}: {target!r} names a deployment role, but there is no deployment "
                          f"(use pid:N or pidfile:PATH against --host)")
    if target == SERVING_WORKER:
        if spec.trigger.mid_stream_chunks is None:
            raise ConfigError(f"{here}: serving-worker needs trigger.mid_stream_chunks (a probe request in flight)")
        return Target(target)
    if not deployment.started_here and getattr(deployment, "local_processes", True):
        # only the processes the scenario names by identity (a k8s target's roles are pods: by role)
        named = [role for role in deployment.roles() if deployment.pid(role) is not None]
        if target not in named:
            raise ConfigError(f"{here}: {target!r} is not a process named in target.pids (named: "
                              f"{', '.join(named) or 'none'}); use pid:N or pidfile:PATH, or name it there")
        # the identity the deployment captured is the one every signal is checked against
        return Target(target, role=target, process=deployment.process(target))
    roles = deployment.roles()
    if target not in roles:
        raise ConfigError(f"{here}: expected one of {', '.join([*roles, SERVING_WORKER])}, got {target!r}"
                          f"{did_you_mean(target, roles)}")
    return Target(target, role=target)


def resolve_at_fire(target: Target, ctx: FaultContext) -> Target:
    """When the fault fires: `serving-worker` becomes the role serving the probe right now."""
    if target.spec != SERVING_WORKER:
        return target
    role = ctx.resolve_serving() if ctx.resolve_serving else None
    if role is None:
        raise RuntimeError("could not find the worker serving the probe request in the worker logs")
    return Target(target.spec, role=role)


# --- the interface -----------------------------------------------------------------------------


class Fault:
    """One fault of a scenario. Subclasses set `kind` and implement the verbs (module docstring)."""

    kind: ClassVar[str] = ""
    reversible: ClassVar[bool] = False

    def __init__(self, spec: FaultSpec, where: str = "", occurrence: int = 1):
        self.spec = spec
        self.where = where or f"fault {spec.name!r}"
        self.event: FaultEvent | None = None
        self.occurrence = occurrence  # 1-based, of spec.repeat.count
        self.validate()
        if spec.duration_s is not None and not self.reversible:
            raise ConfigError(f"{self.field('duration_s')}: only for a fault that lasts until it is lifted "
                              f"(this {self.kind} fault is not undone by anything)")
        if spec.repeat is not None and spec.repeat.count > 1 and self.reversible and spec.duration_s is None:
            raise ConfigError(f"{self.field('repeat')}: needs duration_s (each occurrence is lifted before the next)")

    @property
    def name(self) -> str:
        name = self.spec.name or f"{self.kind}:{self.spec.target}"
        if self.spec.repeat is not None and self.spec.repeat.count > 1:
            return f"{name}#{self.occurrence}"
        return name

    def field(self, key: str) -> str:
        """The path of one of this fault's fields, for error messages."""
        return f"{self.where}.{key}"

    def validate(self) -> None:
        """Check `spec.params` (the kind's own fields). Default: the kind takes none."""
        if self.spec.params:
            key = sorted(self.spec.params)[0]
            raise ConfigError(f"{self.field(key)}: unknown field for kind {self.kind}")

    def preflight(self, ctx: FaultContext) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def inject(self, ctx: FaultContext) -> FaultEvent:
        raise NotImplementedError

    def recover(self, ctx: FaultContext) -> str | None:
        raise NotImplementedError

    def affected_role(self) -> str | None:
        return None

    def server_recovered(self, ctx: FaultContext) -> bool | None:
        """The server view, polled after injection: the deployment serves again without the
        faulted component or with its replacement (None: it cannot tell). Default: the
        deployment's `recovered(affected_role())`; a kind that knows more says more."""
        role = self.affected_role()
        return None if role is None or ctx.deployment is None else ctx.deployment.recovered(role)

    def scheduled_recovery_s(self) -> float | None:
        return self.spec.duration_s

    def close(self, ctx: FaultContext) -> None:
        """The run is over (after rollback, fired or not): free what preflight prepared — a
        helper process, an open file — and release its guardian hold. Never undoes an effect:
        that is recover()'s."""


# --- the registry --------------------------------------------------------------------------------

REGISTRY: dict[str, type[Fault]] = {}
# Built-in kinds, imported on first use: kind -> module (which registers its class).
BUILTIN_KINDS: dict[str, str] = {
    "process-signal": "ftlocust.fault_kinds.process_signal",
    "partition": "ftlocust.fault_kinds.partition",
    "pod-delete": "ftlocust.fault_kinds.k8s_pod_delete",
    "pod-signal": "ftlocust.fault_kinds.k8s_pod_signal",
    "gpu-xid": "ftlocust.fault_kinds.gpu_xid",
    "gpu-throttle": "ftlocust.fault_kinds.gpu_throttle",
    "gpu-overheat": "ftlocust.fault_kinds.gpu_throttle",
    "gpu-memory-pressure": "ftlocust.fault_kinds.gpu_load",
    "gpu-compute-overload": "ftlocust.fault_kinds.gpu_load",
    "fault-service": "ftlocust.fault_kinds.fault_service",
}


def register(cls: type[Fault]) -> type[Fault]:
    """Class decorator: make `cls.kind` usable in scenarios (built-in kinds and plugins)."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__}: set the class attribute `kind` before registering")
    REGISTRY[cls.kind] = cls
    return cls


def kinds() -> list[str]:
    return sorted({*REGISTRY, *BUILTIN_KINDS})


def kind_class(kind: str, where: str = "fault") -> type[Fault]:
    if kind not in REGISTRY and kind in BUILTIN_KINDS:
        try:
            importlib.import_module(BUILTIN_KINDS[kind])
        except ImportError as e:  # an optional library: one line, only when the kind is used
            raise ConfigError(f"{where}.kind: {kind} needs a library that is not installed ({e})") from None
    try:
        return REGISTRY[kind]
    except KeyError:
        hint = did_you_mean(kind, kinds()) or " (a plugin's kind? load it with --ft-plugin or the scenario's plugins:)"
        raise ConfigError(f"{where}.kind: expected one of {', '.join(kinds())}, got {kind!r}{hint}") from None


def build_fault(spec: FaultSpec, where: str = "", occurrence: int = 1) -> Fault:
    where = where or f"fault {spec.name!r}"
    return kind_class(spec.kind, where)(spec, where, occurrence)


def build_faults(specs: list[FaultSpec], where: str = "faults") -> list[Fault]:
    """One `Fault` per occurrence: a spec with `repeat.count` N gives N, in order."""
    out = []
    for i, spec in enumerate(specs):
        count = spec.repeat.count if spec.repeat is not None else 1
        out += [build_fault(spec, f"{where}[{i}]", occurrence) for occurrence in range(1, count + 1)]
    return out
