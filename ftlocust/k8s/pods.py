"""Pods by name: delete (with a uid precondition), logs, and waiting for a controller's replacement."""

from __future__ import annotations

import math
import time
from typing import Any

from ftlocust.k8s.client import Kube, KubeError, api_error
from ftlocust.k8s.selection import is_live, is_ready


def delete_pod(kube: Kube, *, namespace: str, name: str, uid: str | None = None,
               grace_period_s: float | None = None, force: bool = False, where: str = "delete pod") -> Any:
    """Delete pod `name`: with `uid`, only if it is still that pod (a precondition: a replacement
    of the same name, as a StatefulSet makes, is never deleted — the API answers 409); `force`
    is grace 0 (no graceful termination); `grace_period_s` None is the pod's own
    terminationGracePeriodSeconds. KubeError (one line) on failure."""
    from kubernetes import client

    grace = 0 if force else (None if grace_period_s is None else int(math.ceil(grace_period_s)))
    body = client.V1DeleteOptions(grace_period_seconds=grace,
                                  preconditions=client.V1Preconditions(uid=uid) if uid else None)
    try:
        return kube.core.delete_namespaced_pod(name, namespace, body=body, grace_period_seconds=grace,
                                               _request_timeout=30)
    except Exception as e:
        err = api_error(e, "delete", "pods", namespace, where)
        if getattr(e, "status", None) == 409 and uid:
            err = KubeError(f"{where}: pod {name} in namespace {namespace} is no longer uid {uid} "
                            f"(replaced since it was selected): not deleted")
        raise err from None


def pod_logs(kube: Kube, *, namespace: str, name: str, container: str | None = None, previous: bool = False,
             where: str = "pod logs") -> str:
    """The pod's log (of `container`; `previous`: of its previous instance, after a restart)."""
    kwargs = {"container": container} if container else {}
    try:
        return kube.core.read_namespaced_pod_log(name, namespace, previous=previous, _request_timeout=30, **kwargs)
    except Exception as e:
        raise api_error(e, "get", "pods/log", namespace, where) from None


def wait_for_replacement(kube: Kube, *, namespace: str, selector: str, gone: set[str], timeout_s: float,
                         where: str = "wait for replacement") -> Any | None:
    """The first live, Ready pod matching `selector` whose name is not in `gone`, or None after
    `timeout_s`: one list, then a watch from its resourceVersion with a server-side timeout."""
    from kubernetes import watch

    def fits(pod: Any) -> bool:
        return pod.metadata.name not in gone and is_live(pod) and is_ready(pod)

    deadline = time.monotonic() + timeout_s
    try:
        listed = kube.core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=30)
    except Exception as e:
        raise api_error(e, "list", "pods", namespace, where) from None
    for pod in sorted(listed.items, key=lambda p: p.metadata.name):
        if fits(pod):
            return pod
    version = listed.metadata.resource_version
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        w = watch.Watch()
        try:
            for event in w.stream(kube.core.list_namespaced_pod, namespace, label_selector=selector,
                                  resource_version=version, timeout_seconds=max(1, int(math.ceil(left))),
                                  _request_timeout=left + 10):
                pod = event["object"]
                version = pod.metadata.resource_version or version
                if event["type"] in ("ADDED", "MODIFIED") and fits(pod):
                    return pod
                if time.monotonic() > deadline:
                    return None
        except Exception as e:
            raise api_error(e, "watch", "pods", namespace, where) from None
        finally:
            w.stop()
