"""`partition`: cut one role of a deployment off from others, for real — packets between their
network namespaces are dropped (or rejected) in the namespace that routes between them.

    - {kind: partition, target: worker-1, partition: frontend_worker, duration_s: 8, trigger: {after_seconds: 5}}
    - {kind: partition, target: serving-worker, partition: worker_nats, trigger: {mid_stream_chunks: 30}}
    - {kind: partition, target: decode-1, partition: custom, peers: [prefill-1], mode: reject, ...}

Needs a deployment whose roles run in network namespaces the run created (the reference or
the dynamo target with `target.options.network: netns`), or a `k8s` target, whose partitions are
deny NetworkPolicies between the roles' pods (`ftlocust.k8s.networkpolicy`: mode drop only,
new connections only; the guardian holds their deletion, `k8s-networkpolicy-delete`, before
any is created); anything else is refused at preflight in one line. Fields:

- `partition`: the seed's partition types — `frontend_worker` (the default: target ↔ the
  frontend), `worker_worker` (target ↔ every other worker), `worker_nats` (target ↔ the
  discovery/registry endpoint only: for the reference deployment the worker's lease renewals to
  the frontend's port, so streams go on while the lease runs out; refused for dynamo, whose
  discovery is files), `custom` (target ↔ `peers`).
- `peers`: roles, for `custom` only; `client` is the driver (where Locust runs).
- `mode`: `drop` (the default: packets vanish, so connects and open streams stall as in a real
  partition) or `reject` (ICMP errors: connections fail at once).
- `duration_s` (every reversible kind): lift after; otherwise lifted at recovery (end of run).

The rules are computed at preflight (fixed roles) or when the fault fires (`serving-worker`),
handed to the guardian, then put in place with one netlink message each — no process is
started at injection. The fault's effect ends (`recovered_at`) when the rules are deleted.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol, runtime_checkable

from ftlocust.errors import ConfigError
from ftlocust.faults import SERVING_WORKER, Fault, FaultContext, Target, register, resolve_at_fire, resolve_target
from ftlocust.phases import FaultEvent
from ftlocust.validation import choice, mapping

log = logging.getLogger("ftlocust.faults")

TYPES = ("frontend_worker", "worker_worker", "worker_nats", "custom")
MODES = ("drop", "reject")
FIELDS = ("partition", "peers", "mode")


class Partitioner(Protocol):
    """What a deployment's `partitioner` is to this kind: `ftlocust.netns.NetworkLab` (rules in
    network namespaces) or `ftlocust.k8s.networkpolicy.NetworkPolicyPartitioner` (NetworkPolicies;
    mode drop only, `reject` is refused by its `plan` in one line)."""

    ready: bool  # partitions can be planned (False: a lab not created yet, as in a dry run)

    def preflight(self) -> None: ...  # ConfigError (one line) when it could not be made here
    def plan(self, a: str, b: str | None = None, *, port: int | None = None, mode: str = "drop") -> Any: ...
    def apply(self, partition: Any) -> None: ...
    def unblock(self, partition: Any) -> Any: ...
    def describe(self) -> str: ...


@runtime_checkable
class PartitionableDeployment(Protocol):
    """A deployment that can cut traffic between its roles (network namespaces, NetworkPolicies)."""

    partitioner: Any  # its Partitioner, None when it cannot (a deployment on loopback)

    def roles(self) -> list[str]: ...
    def worker_roles(self) -> list[str]: ...
    def registry_endpoint(self) -> tuple[str, int] | None: ...  # (role, port) workers register with


@register
class PartitionFault(Fault):
    kind = "partition"
    reversible = True

    def validate(self) -> None:
        params = mapping(self.spec.params, self.where, FIELDS)
        self.partition = choice(params.get("partition", "frontend_worker"), self.field("partition"), TYPES)
        self.mode = choice(params.get("mode", "drop"), self.field("mode"), MODES)
        peers = params.get("peers")
        if self.partition == "custom":
            if not isinstance(peers, list) or not peers or not all(isinstance(p, str) and p for p in peers):
                raise ConfigError(f"{self.field('peers')}: expected a list of roles for partition custom, got {peers!r}")
        elif peers is not None:
            raise ConfigError(f"{self.field('peers')}: only for partition custom (got partition {self.partition})")
        self.custom_peers: list[str] = list(peers or [])
        self.target: Target | None = None
        self._lab = None
        self._deployment: PartitionableDeployment | None = None
        self._planned: list = []  # netns.Partition, in place once injected
        self._lifted = False

    # -- resolving --------------------------------------------------------------------------------

    def preflight(self, ctx: FaultContext) -> None:
        deployment = ctx.deployment
        if not isinstance(deployment, PartitionableDeployment) or (deployment.partitioner is None and not ctx.dry_run):
            raise ConfigError(f"{self.field('kind')}: partition needs a deployment in network namespaces "
                              f"(a reference or dynamo target with target.options.network: netns) or a k8s target")
        if self.spec.target.startswith(("pid:", "pidfile:")):
            raise ConfigError(f"{self.where}.target: a partition cuts a role of the deployment, not a pid")
        self._deployment = deployment
        self._lab = deployment.partitioner
        self.target = resolve_target(self.spec, ctx, self.where)
        workers = deployment.worker_roles()
        if self.target.role is not None and self.partition in ("worker_worker", "worker_nats") and self.target.role not in workers:
            raise ConfigError(f"{self.where}.target: partition {self.partition} cuts a worker; expected one of "
                              f"{', '.join([*workers, SERVING_WORKER])}, got {self.target.role!r}")
        known = [*deployment.roles(), "client"]
        for peer in self.custom_peers:
            if peer not in known:
                raise ConfigError(f"{self.field('peers')}: expected roles of {', '.join(known)}, got {peer!r}")
        if self.partition == "worker_nats" and deployment.registry_endpoint() is None:
            raise ConfigError(f"{self.field('partition')}: worker_nats, but this deployment has no registry endpoint "
                              f"(a k8s target names one with target.options.registry)")
        if self.partition == "worker_worker" and self.target.role is not None and not self._peers(self.target.role):
            raise ConfigError(f"{self.field('partition')}: worker_worker needs another worker (the deployment has only "
                              f"{self.target.role})")
        if self._lab is not None and not self._lab.ready:  # a dry run: nothing made yet
            self._lab.preflight()  # but say now, in one line, if it could not be made here
        elif self.target.role is not None and self._lab is not None:
            self._planned = self._plan(self.target.role)

    def _peers(self, role: str) -> list[tuple[str, int | None]]:
        """(peer role, port or None) the target is cut off from."""
        d = self._deployment
        if self.partition == "frontend_worker":
            return [(d.frontend_role, None)] if role != d.frontend_role else [(w, None) for w in d.worker_roles()]
        if self.partition == "worker_worker":
            return [(w, None) for w in d.worker_roles() if w != role]
        if self.partition == "worker_nats":
            registry, port = d.registry_endpoint()
            return [(registry, port)]
        return [(p, None) for p in self.custom_peers if p != role]

    def _plan(self, role: str) -> list:
        return [self._lab.plan(role, peer, port=port, mode=self.mode) for peer, port in self._peers(role)]

    def describe(self) -> str:
        role = self.target.role if self.target is not None else None
        what = self.target.describe() if self.target is not None else self.spec.target
        if self._planned:
            cuts = "; ".join(p.describe() for p in self._planned)
        elif role is not None and self._deployment is not None:
            cuts = ", ".join(f"{role} <-> {peer}" + (f" tcp port {port}" if port else "")
                             for peer, port in self._peers(role)) + " (rules made when the deployment starts)"
        else:
            cuts = f"{what} <-> its {self.partition.replace('_', '/')} peers"
        end = f", lifted after {self.spec.duration_s:g} s" if self.spec.duration_s else ", lifted at recovery"
        return f"partition {self.partition} ({self.mode}) of {what}: {cuts}, {self.spec.trigger.describe()}{end}"

    # -- the verbs ----------------------------------------------------------------------------------

    def inject(self, ctx: FaultContext) -> FaultEvent:
        resolved = resolve_at_fire(self.target, ctx)
        if resolved.role != self.target.role or not self._planned:
            self._planned = self._plan(resolved.role)  # serving-worker: only /proc-free arithmetic here
        self.target = resolved
        for partition in self._planned:
            ctx.guard(self.name, partition.guardian_action())  # before the rules exist
        applied = []
        try:
            for partition in self._planned:
                self._lab.apply(partition)
                applied.append(partition)
        except BaseException:
            for partition in applied:
                self._lab.unblock(partition)
            raise
        injected_at = time.time()
        where = f"{resolved.role}|{','.join(p.b or 'all' for p in self._planned)}"
        log.info("injected partition %s (%s): %s", self.partition, self.mode, "; ".join(p.describe() for p in applied))
        self.event = FaultEvent(name=self.name, kind=self.kind, target=where, injected_at=injected_at,
                                detail={"partition": self.partition, "mode": self.mode, "role": resolved.role,
                                        "cuts": [p.describe() for p in applied],
                                        "rules": [r for p in applied for r in p.rules]})
        return self.event

    def recover(self, ctx: FaultContext) -> str | None:
        if self._lifted or self.event is None:
            return None
        # Lifted only once every cut is gone: a rollback that failed (the API down) is tried
        # again at the end of the run, and the guardian keeps holding it until then.
        for partition in self._planned:
            self._lab.unblock(partition)
        self._lifted = True
        self.event.recovered_at = time.time()
        what = f"lifted partition {self.event.target} ({sum(len(p.rules) for p in self._planned)} rule(s) deleted)"
        log.info("recovered %s: %s", self.name, what)
        return what
