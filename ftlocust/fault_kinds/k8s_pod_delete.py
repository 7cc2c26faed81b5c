"""`pod-delete`: delete a pod of a service, found by label selector in one named namespace.

    - {kind: pod-delete, target: decode_worker, namespace: dynamo, selector: "app=decode", force: true,
       trigger: {after_seconds: 30}}                                   # the seed's decode_worker_pod
    - {kind: pod-delete, target: decode_worker, namespace: dynamo, selector: "app=decode", expect: 3,
       pick: random, count: 1, grace_period_s: 5, trigger: {mid_stream_chunks: 40}}

`target` is the role's name on the timeline (`decode_worker`): with a deployment that has that
role, the drill's server view waits for it (`affected_role`); otherwise it is a label only.

    - {kind: pod-delete, target: decode_worker, force: true, trigger: {after_requests: 20}}   # k8s target
    - {kind: pod-delete, target: serving-worker, force: true, trigger: {mid_stream_chunks: 20}}
The pods are named by the fields, never by name patterns:

- `namespace`: the one namespace every call names; nothing outside it is touched.
- `selector`: a label selector of the service's pods (`app=decode,component=worker`).
  Against a k8s target give neither: `target` is then a role of the target (its selector,
  namespace and client), or `serving-worker` (with `trigger.mid_stream_chunks`: when the fault
  fires, the pod of the worker role whose log shows the probe request; one pod).
- `expect`: how many live pods the selector must match (default 1, or the role's pod count at
  start; its replica count): any other number, zero included, is a one-line error at preflight.
- `pick`: `first` (by name, the default) or `random`, and `count` (default 1, at most `expect`):
  which pods are deleted.
- `force`: delete with grace period 0 (the seed's `pod.delete(force=True)`: no graceful
  termination); else `grace_period_s` (default: the pod's own terminationGracePeriodSeconds).
- `kubeconfig`, `context`: the client's config (default $KUBECONFIG, ~/.kube/config, else the
  in-cluster service account).

Preflight loads and warms up the client (its first call blocks gevent for seconds), selects the
pods and captures each one's name and uid. The fault deletes them by name with a uid
precondition, so a replacement of the same name (a StatefulSet's) is never deleted; later
occurrences of a `repeat` select again when they fire (the first one's pods are gone). Not
reversible: the controller replaces the pod. An API failure at injection raises (the drill
records the fault as failed). The event's detail: `pods` (name, uid, node), `grace_period_s`,
`force`, `namespace`, `selector`.
"""

from __future__ import annotations

import logging
import random
import time

from ftlocust.errors import ConfigError
from ftlocust.faults import Fault, FaultContext, register
from ftlocust.k8s.fields import FIELDS as POD_FIELDS, PodFields, role_of
from ftlocust.phases import FaultEvent
from ftlocust.validation import boolean, choice, mapping, number, seconds

log = logging.getLogger("ftlocust.faults")

FIELDS = (*POD_FIELDS, "pick", "count", "force", "grace_period_s")


@register
class PodDeleteFault(Fault):
    kind = "pod-delete"

    def validate(self) -> None:
        params = mapping(self.spec.params, self.where, FIELDS)
        self.pods_spec = PodFields.parse(params, self.field, self.spec.target)
        self.pick = choice(params.get("pick", "first"), self.field("pick"), ("first", "random"))
        self.count = int(number(params.get("count", 1), self.field("count"), integer=True, minimum=1,
                                maximum=self.pods_spec.expect))
        self.force = boolean(params.get("force", False), self.field("force"))
        self.grace_period_s = seconds(params.get("grace_period_s"), self.field("grace_period_s"))
        if self.force and self.grace_period_s:
            raise ConfigError(f"{self.field('grace_period_s')}: not with force (force is grace period 0)")
        self.kube = None
        self.victims: list = []  # the pods chosen (V1Pod), name + uid captured
        self._deployment = None

    def preflight(self, ctx: FaultContext) -> None:
        self._deployment = ctx.deployment
        self.kube = self.pods_spec.connect(ctx, self.field, self.spec.trigger)
        if self.pods_spec.serving:
            if self.count != 1 or self.pick != "first":
                raise ConfigError(f"{self.field('count')}: serving-worker is the one pod serving the probe "
                                  f"(no count, no pick)")
            return  # found when it fires
        if self.count > self.pods_spec.wanted:
            raise ConfigError(f"{self.field('count')}: expected at most {self.pods_spec.wanted} (the pods of "
                              f"{self.spec.target}), got {self.count}")
        self.victims = self._choose(self.pods_spec.select(self.kube, self.field))

    def _choose(self, pods: list) -> list:
        return random.sample(pods, self.count) if self.pick == "random" else pods[:self.count]

    def _how(self) -> str:
        if self.force:
            return "force (grace period 0)"
        if self.grace_period_s is not None:
            return f"grace period {self.grace_period_s:g} s"
        return "the pod's own grace period"

    def describe(self) -> str:
        ps = self.pods_spec
        if self.victims and self.occurrence == 1:
            from ftlocust.k8s.selection import describe_pod

            which = ", ".join(describe_pod(p) for p in self.victims) + f" of {self.spec.target} ({ps.describe()})"
        elif ps.serving:
            which = ps.describe()
        else:
            which = (f"{self.count} of the {ps.wanted} pod{'s' if ps.wanted != 1 else ''} ({self.pick}) of "
                     f"{self.spec.target} ({ps.describe()}) selected when it fires")
        return f"delete {which}, {self._how()}, {self.spec.trigger.describe()}"

    def inject(self, ctx: FaultContext) -> FaultEvent:
        from ftlocust.k8s.pods import delete_pod

        if self.occurrence > 1 or not self.victims:
            try:
                self.victims = self._choose(self.pods_spec.select(self.kube, self.field, ctx=ctx))
            except ConfigError as e:  # at injection: the fault failed (one line), not the input
                raise RuntimeError(str(e)) from None
        ps = self.pods_spec
        done, injected_at = [], None
        for pod in self.victims:
            delete_pod(self.kube, namespace=ps.namespace, name=pod.metadata.name, uid=pod.metadata.uid,
                       grace_period_s=self.grace_period_s, force=self.force, where=self.where)
            done.append({"name": pod.metadata.name, "uid": pod.metadata.uid,
                         "node": pod.spec.node_name if pod.spec is not None else None})
            injected_at = injected_at or time.time()  # in effect once the first pod is being deleted
        log.info("injected pod-delete on %s: %s (%s)", self.spec.target, ", ".join(d["name"] for d in done),
                 self._how())
        self.event = FaultEvent(name=self.name, kind=self.kind, target=self.spec.target, injected_at=injected_at,
                                detail={"pods": done, "namespace": ps.namespace,
                        "selector": ps.deployment.selector(ps.served_role) if ps.served_role else ps.selector,
                        "role": role_of(self),
                                        "force": self.force, "grace_period_s": 0 if self.force else self.grace_period_s})
        return self.event

    def recover(self, ctx: FaultContext) -> str | None:
        return None  # the controller replaces the pod

    def affected_role(self) -> str | None:
        return role_of(self)

    def server_recovered(self, ctx: FaultContext) -> bool | None:
        """The pods deleted are gone (an API that accepted the delete but kept the pod, a
        finalizer say, is no recovery) and the deployment serves the role as at start."""
        from ftlocust.k8s.selection import is_live

        role = self.affected_role()
        if role is None or ctx.deployment is None:
            return None
        uids = {p.metadata.uid for p in self.victims}
        listed = self.kube.core.list_namespaced_pod(self.pods_spec.namespace, _request_timeout=10).items
        if any(p.metadata.uid in uids and is_live(p) for p in listed):
            return False
        return ctx.deployment.recovered(role)
