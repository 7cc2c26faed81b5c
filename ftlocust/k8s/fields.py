"""The fields every Kubernetes kind takes, validated in one place, and the preflight they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftlocust.errors import ConfigError
from ftlocust.validation import error, number, string

FIELDS = ("namespace", "selector", "expect", "kubeconfig", "context")


@dataclass
class PodFields:
    namespace: str
    selector: str
    expect: int
    kubeconfig: str | None
    context: str | None

    @classmethod
    def parse(cls, params: dict, field) -> "PodFields":
        """`field(key)` names a field for errors (Fault.field)."""
        for key in ("namespace", "selector"):
            if key not in params:
                raise ConfigError(f"{field(key)}: missing (required)")
        namespace = string(params["namespace"], field("namespace"))
        if not namespace.replace("-", "").isalnum() or namespace != namespace.lower() or len(namespace) > 63:
            raise error(field("namespace"), "a namespace name (lowercase letters, digits, '-')", namespace)
        selector = string(params["selector"], field("selector"))
        if "=" not in selector and "!" not in selector and " in " not in selector:
            raise error(field("selector"), "a label selector (e.g. app=decode,component=worker)", selector)
        expect = int(number(params.get("expect", 1), field("expect"), integer=True, minimum=1))
        kubeconfig = string(params["kubeconfig"], field("kubeconfig")) if params.get("kubeconfig") else None
        context = string(params["context"], field("context")) if params.get("context") else None
        return cls(namespace, selector, expect, kubeconfig, context)

    def connect(self, field) -> Any:
        """Preflight: the client (loaded, warmed up in the namespace). ConfigError, one line."""
        from ftlocust.k8s.client import load, warm_up

        kube = load(self.kubeconfig, self.context, where=field("kubeconfig"))
        warm_up(kube, self.namespace, field("namespace"))
        return kube

    def select(self, kube: Any, field, ready_only: bool = False) -> list:
        from ftlocust.k8s.selection import select_pods

        return select_pods(kube, namespace=self.namespace, selector=self.selector, where=field("selector"),
                           expect=self.expect, ready_only=ready_only)


def role_of(fault: Any) -> str | None:
    """The fault's `target` when the deployment (kept at preflight) has that role, else None:
    the drill's server view then waits for it."""
    d = getattr(fault, "_deployment", None)
    try:
        return fault.spec.target if d is not None and fault.spec.target in d.roles() else None
    except Exception:
        return None
