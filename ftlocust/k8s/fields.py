"""The fields every Kubernetes kind takes, validated in one place, and the preflight they share.

The pods are named by `namespace` + `selector`, or, against a k8s target, by the fault's
`target` alone: a role of the target (its selector, its namespace, its client) or
`serving-worker` (at fire: the pod of the worker role whose log shows the probe request).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ftlocust.errors import ConfigError
from ftlocust.validation import error, number, string

FIELDS = ("namespace", "selector", "expect", "kubeconfig", "context")
SERVING_WORKER = "serving-worker"


@runtime_checkable
class PodDeployment(Protocol):
    """A deployment whose roles are pods (ftlocust.targets.k8s.K8sDeployment)."""

    namespace: str
    kube: Any
    expected: dict[str, int]  # role -> pods at start

    def roles(self) -> list[str]: ...
    def selector(self, role: str) -> str: ...
    def pods_logging(self, role: str, request_id: str) -> list[str]: ...


@dataclass
class PodFields:
    namespace: str | None
    selector: str | None
    expect: int | None  # None: given by the target role at preflight (else 1)
    kubeconfig: str | None
    context: str | None
    target: str = ""
    deployment: Any = None  # the PodDeployment the pods come from, once bound
    serving: bool = False  # the pod is found when the fault fires
    served_role: str | None = None  # serving-worker: the role it was found in, at fire

    @classmethod
    def parse(cls, params: dict, field, target: str = "") -> "PodFields":
        """`field(key)` names a field for errors (Fault.field). namespace and selector may both
        be left out (the target's role gives them at preflight), not one of them."""
        given = [key for key in ("namespace", "selector") if key in params]
        if len(given) == 1:
            other = "selector" if given == ["namespace"] else "namespace"
            raise ConfigError(f"{field(other)}: missing (give namespace and selector, or neither and a target "
                              f"that is a role of a k8s target)")
        namespace = selector = None
        if given:
            namespace = string(params["namespace"], field("namespace"))
            if not namespace.replace("-", "").isalnum() or namespace != namespace.lower() or len(namespace) > 63:
                raise error(field("namespace"), "a namespace name (lowercase letters, digits, '-')", namespace)
            selector = string(params["selector"], field("selector"))
            if "=" not in selector and "!" not in selector and " in " not in selector:
                raise error(field("selector"), "a label selector (e.g. app=decode,component=worker)", selector)
        expect = int(number(params["expect"], field("expect"), integer=True, minimum=1)) \
            if params.get("expect") is not None else (1 if given else None)
        kubeconfig = string(params["kubeconfig"], field("kubeconfig")) if params.get("kubeconfig") else None
        context = string(params["context"], field("context")) if params.get("context") else None
        return cls(namespace, selector, expect, kubeconfig, context, target=target)

    @property
    def wanted(self) -> int:
        return self.expect if self.expect is not None else 1

    def connect(self, ctx: Any, field, trigger: Any = None) -> Any:
        """Preflight: bind the pods to the target when the fields do not name them, and return
        the client (the target's, or one loaded and warmed up here). ConfigError, one line."""
        from ftlocust.k8s.client import load, warm_up

        d = ctx.deployment if isinstance(ctx.deployment, PodDeployment) else None
        if self.selector is None:
            if d is None:
                raise ConfigError(f"{field('selector')}: missing: give namespace and selector (the run's target is "
                                  f"not a k8s deployment, so {self.target!r} names no pods)")
            if self.target == SERVING_WORKER:
                if trigger is None or trigger.mid_stream_chunks is None:
                    raise ConfigError(f"{field('target')}: serving-worker needs trigger.mid_stream_chunks "
                                      f"(a probe request in flight)")
                self.serving = True
            elif self.target not in d.roles():
                raise ConfigError(f"{field('target')}: expected a role of the k8s target ({', '.join(d.roles())}) "
                                  f"or {SERVING_WORKER}, got {self.target!r} (or give namespace and selector)")
            else:
                self.selector = d.selector(self.target)
                if self.expect is None:
                    self.expect = d.expected.get(self.target, 1)
            self.namespace, self.deployment = d.namespace, d
        elif self.target == SERVING_WORKER:
            raise ConfigError(f"{field('target')}: serving-worker names its pods itself: give no namespace and "
                              f"selector")
        if self.deployment is not None and self.kubeconfig is None and self.context is None:
            return self.deployment.kube
        kube = load(self.kubeconfig, self.context, where=field("kubeconfig"))
        warm_up(kube, self.namespace, field("namespace"))
        return kube

    def describe(self) -> str:
        if self.serving:
            return f"the pod serving the probe request (namespace {self.namespace})"
        return f"selector '{self.selector}', namespace {self.namespace}"

    def select(self, kube: Any, field, ready_only: bool = False, ctx: Any = None) -> list:
        """The pods now: by selector (exactly `expect` of them), or — serving-worker — the one
        pod of the worker role whose log shows the probe request (`ctx` needed)."""
        from ftlocust.k8s.selection import select_pods

        if not self.serving:
            return select_pods(kube, namespace=self.namespace, selector=self.selector, where=field("selector"),
                               expect=self.wanted, ready_only=ready_only)
        role = ctx.resolve_serving() if ctx is not None and ctx.resolve_serving else None
        request_id = ctx.probe_request_id() if ctx is not None and ctx.probe_request_id else None
        if role is None or request_id is None:
            raise ConfigError("serving-worker: could not find the worker serving the probe request in the worker logs")
        names = self.deployment.pods_logging(role, request_id)
        pods = [p for p in select_pods(kube, namespace=self.namespace, selector=self.deployment.selector(role),
                                       where=f"{field('target')} ({role})") if p.metadata.name in names]
        if not pods:
            raise ConfigError(f"serving-worker: no live pod of {role} shows the probe request {request_id} in its log")
        self.served_role = role
        return pods[:1]


def role_of(fault: Any) -> str | None:
    """The role the drill's server view waits for: the fault's `target` when the deployment
    (kept at preflight) has that role, the serving pod's role once found; else None."""
    d = getattr(fault, "_deployment", None)
    if fault.pods_spec.served_role:
        return fault.pods_spec.served_role
    try:
        return fault.spec.target if d is not None and fault.spec.target in d.roles() else None
    except Exception:
        return None
