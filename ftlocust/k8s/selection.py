"""The one way a kind finds its pods: `select_pods` by label selector in one namespace."""

from __future__ import annotations

from typing import Any

from ftlocust.errors import ConfigError
from ftlocust.k8s.client import Kube, api_error


def is_ready(pod: Any) -> bool:
    for cond in (pod.status.conditions or []) if pod.status is not None else []:
        if cond.type == "Ready":
            return cond.status == "True"
    return False


def is_live(pod: Any) -> bool:
    """Not being deleted, not finished."""
    if pod.metadata.deletion_timestamp is not None:
        return False
    return pod.status is None or pod.status.phase not in ("Succeeded", "Failed")


def describe_pod(pod: Any) -> str:
    node = pod.spec.node_name if pod.spec is not None else None
    return f"pod {pod.metadata.name} (uid {pod.metadata.uid}" + (f", node {node}" if node else "") + ")"


def _namespace_missing(kube: Kube, namespace: str) -> bool:
    """Whether the namespace surely does not exist (a 404 on reading it; a 403 or anything else:
    unknown, so False). Listing pods in a missing namespace is an empty list, not a 404."""
    from kubernetes.client.exceptions import ApiException

    try:
        kube.core.read_namespace(namespace, _request_timeout=10)
    except ApiException as e:
        return e.status == 404
    except Exception:
        return False
    return False


def select_pods(kube: Kube, *, namespace: str, selector: str, where: str, expect: int | None = None,
                ready_only: bool = False) -> list:
    """The live pods (not terminating, not finished; with `ready_only`, Ready) matching the
    label `selector` in `namespace`, sorted by name. ConfigError, one line, naming the selector,
    the namespace and what was found, when none match or (with `expect`) not exactly `expect`."""
    try:
        listed = kube.core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=30).items
    except Exception as e:
        raise ConfigError(str(api_error(e, "list", "pods", namespace, where))) from None
    live = [p for p in listed if is_live(p)]
    pods = sorted((p for p in live if not ready_only or is_ready(p)), key=lambda p: p.metadata.name)
    left_out = []
    if len(live) != len(listed):
        left_out.append(f"{len(listed) - len(live)} terminating or finished left out")
    if len(pods) != len(live):
        left_out.append(f"{len(live) - len(pods)} not Ready left out")
    note = f" ({'; '.join(left_out)})" if left_out else ""
    if not pods:
        if not listed and _namespace_missing(kube, namespace):
            raise ConfigError(f"{where}: namespace {namespace!r} not found (selector '{selector}')")
        raise ConfigError(f"{where}: no pods match selector '{selector}' in namespace {namespace}{note}")
    if expect is not None and len(pods) != expect:
        names = ", ".join(p.metadata.name for p in pods[:8]) + (", …" if len(pods) > 8 else "")
        raise ConfigError(f"{where}: expected {expect} pod{'s' if expect != 1 else ''} matching selector "
                          f"'{selector}' in namespace {namespace}, found {len(pods)} ({names}){note}")
    return pods
