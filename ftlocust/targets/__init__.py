"""Deployments a drill runs against: one contract (`Deployment`) and one registry of kinds.

A scenario's `target.kind` and the `--ft-target` choices come from `TARGETS`. Each kind is one
module, imported only when a run uses it (real Dynamo's module needs its own environment, a
cluster target will need the kubernetes client). Nothing outside a target touches its
processes: faults and the drill go through the methods below.

Kinds that ftlocust does not start (`started_here=False`): `external` (processes by pid,
evidence by URL and path) and `k8s` (roles as label selectors of pods in one namespace, log
files refreshed from the API, partitions as NetworkPolicies). `--host` is the frontend's URL:
a kind with `takes_host` (k8s) gets it passed through, any other kind becomes `external`.

Adding a target: write a module with a class that satisfies `Deployment` and a
`from_spec(spec, run_dir, host)` classmethod, and add one `TargetKind` line here (or call
`register_target` from a plugin).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ftlocust.errors import ConfigError


@runtime_checkable
class Deployment(Protocol):
    """What the drill, faults and evidence collection need from a deployment.

    Roles are names like `frontend`, `worker-1`; `worker_roles()` are the ones serving requests
    (where `serving-worker` is looked for). Every method takes a role from `roles()`.

    Optional, each a small runtime-checkable Protocol beside what needs it (the reference
    target has them all): `gpu_pci(role) -> str | None` (the PCI bus id of role's GPU: `gpu-xid`
    by role), `kernel_log_path() -> str | None` (the stand-in kernel log its workers watch:
    `gpu-xid` with `kernel_log: deployment`), `engine_url(role) -> str | None` (base URL of
    role's engine sleep / wake endpoints: a fault's `failover:`, `ftlocust.failover`), `exits()
    -> list[dict]` (how each of its processes that ended during the run ended, `RecordsExits`:
    the summary's and the report's `exits`; the targets of local processes have it).
    """

    base_url: str | None  # the OpenAI-compatible frontend, once started
    startup_s: float | None  # start → the first request served (None: not started by us)
    frontend_role: str
    events_path: str | None  # the deployment's own ground-truth event log, if it keeps one
    started_here: bool  # ftlocust started it (and stops it); False for a given --host
    partitioner: Any  # what cuts traffic between its roles (ftlocust.fault_kinds.partition.Partitioner), None: nothing

    def start(self) -> Any: ...  # blocks until the model is listed and one request succeeded
    def stop(self) -> None: ...  # only what it started, by PID
    def roles(self) -> list[str]: ...
    def worker_roles(self) -> list[str]: ...
    def alive(self, role: str) -> bool: ...
    def pid(self, role: str) -> int | None: ...
    def process(self, role: str) -> Any: ...  # its ftlocust.processes.ProcessRef, None when not running
    def signal(self, role: str, sig: int) -> int: ...  # returns the PID signalled
    def restart(self, role: str) -> Any: ...  # returns when the role serves again
    def recovered(self, role: str) -> bool | None: ...  # server view after a fault; None: cannot tell
    def metrics_url(self, role: str) -> str | None: ...
    def log_path(self, role: str) -> str | None: ...
    def refresh_evidence(self) -> None: ...  # log files etc. up to date now (a run's end reads them next)
    def health_url(self, role: str) -> str | None: ...
    def address(self, role: str) -> str | None: ...  # "host:port" the role listens on, if known


@runtime_checkable
class RecordsExits(Protocol):
    """A deployment that knows how its processes ended: `{role, pid, exit_code, signal}` for each
    that ended during the run, not stopped by ftlocust (`ftlocust.targets.local.ProcessGroup`)."""

    def exits(self) -> list[dict]: ...


@runtime_checkable
class NamesServingLine(Protocol):
    """A deployment whose workers log admitted requests in their own words: `serving-worker`
    is the worker whose log has this pattern (`{id}`: the probe's request id). Without it:
    Dynamo's `request received request_id={id}` (`ftlocust.evidence.SERVING_PATTERN`)."""

    serving_log_pattern: str


@dataclass(frozen=True)
class TargetKind:
    name: str
    implementation: str  # "module:Class"; the class has from_spec(spec, run_dir, host)
    summary: str
    started_here: bool = True  # ftlocust starts and stops it (needs no --host)
    takes_host: bool = False  # --host is its frontend's URL (else --host makes the target external)

    def load(self) -> Any:
        module_name, _, class_name = self.implementation.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ConfigError(f"target.kind {self.name}: cannot import {module_name} ({e})") from None
        return getattr(module, class_name)


TARGETS: dict[str, TargetKind] = {}


def register_target(kind: TargetKind) -> TargetKind:
    TARGETS[kind.name] = kind
    return kind


for _kind in (
    TargetKind("reference", "ftlocust.targets.reference.deployment:ReferenceDeployment",
               "the embedded reference deployment (frontend + workers on 127.0.0.1)"),
    TargetKind("dynamo", "ftlocust.targets.dynamo:DynamoDeployment",
               "local NVIDIA Dynamo: frontend + mocker workers (python -m ftlocust.dynamo_env first)"),
    TargetKind("external", "ftlocust.targets.external:ExternalDeployment",
               "a deployment ftlocust did not start: --host, processes by pid, evidence by URL and path",
               started_here=False),
    TargetKind("k8s", "ftlocust.targets.k8s:K8sDeployment",
               "a Kubernetes deployment: roles as label selectors in one namespace, frontend at --host",
               started_here=False, takes_host=True),
    TargetKind("vllm", "ftlocust.targets.vllm:VllmDeployment",
               "real vLLM: one `vllm serve` on 127.0.0.1 (python -m ftlocust.vllm_env --target vllm first)"),
    TargetKind("dynamo-vllm", "ftlocust.targets.dynamo_vllm:DynamoVllmDeployment",
               "local NVIDIA Dynamo with real vLLM workers (python -m ftlocust.vllm_env --target dynamo-vllm first)"),
):
    register_target(_kind)


def target_kinds() -> tuple[str, ...]:
    return tuple(TARGETS)


def embedded_kinds() -> tuple[str, ...]:
    """Kinds ftlocust starts itself (the `--ft-target` choices)."""
    return tuple(name for name, kind in TARGETS.items() if kind.started_here)


def build(spec: Any, run_dir: str, host: str | None) -> Deployment:
    """The deployment for a scenario's `target` (a `TargetSpec`). With `--host` nothing is
    started: the deployment is the external one at that address, whatever the scenario's kind,
    except for a kind that `takes_host` (k8s), which gets it as its frontend's URL."""
    chosen = TARGETS.get(spec.kind)
    name = spec.kind if host is None or (chosen is not None and chosen.takes_host) else "external"
    try:
        kind = TARGETS[name]
    except KeyError:
        raise ConfigError(f"target.kind: expected one of {', '.join(TARGETS)}, got {name!r}") from None
    if not kind.started_here and host is None and not kind.takes_host:
        raise ConfigError(f"--host: the scenario's target is {name}, so --host is required")
    return kind.load().from_spec(spec, run_dir=run_dir, host=host)


def options_for(cls: Any, options: dict, kind: str, fixed: set[str]) -> dict:
    """`target.options` checked against the deployment class's keyword arguments."""
    import inspect

    known = set(inspect.signature(cls).parameters) - fixed - {"run_dir"}
    unknown = sorted(set(options) - known)
    if unknown:
        from ftlocust.validation import did_you_mean

        raise ConfigError(f"target.options.{unknown[0]}: unknown for a {kind} deployment "
                          f"(expected one of {', '.join(sorted(known))}){did_you_mean(unknown[0], known)}")
    return dict(options)
