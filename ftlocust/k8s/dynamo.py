"""A DynamoGraphDeployment's roles, found by the labels Dynamo's operator puts on its pods.

Every pod of a graph carries `nvidia.com/dynamo-graph-deployment-name=<graph>` and
`nvidia.com/dynamo-component=<service>` (the DGD's service name: `Frontend`,
`VllmDecodeWorker`, ...), with `nvidia.com/dynamo-component-type` (`frontend`, `worker`,
`planner`; older operators wrote `prefill` / `decode` here) and, for disaggregated workers,
`nvidia.com/dynamo-sub-component-type` (`prefill` / `decode`). `graph_roles` lists the graph's
pods once and names one role per service the way the seed suite does:

    frontend        component type frontend
    decode_worker   a decode worker, or an aggregated one (type worker, no sub-type)
    prefill_worker  a prefill worker
    <service>       anything else (a planner), lowercased; two services that would share a
                    name both keep their lowercased service names

Each role's selector is `graph + component` (equality only), so it names exactly that
service's pods. The frontend serves HTTP on 8000 and every component its system port 9090
(the seed suite scrapes /metrics there), unless the target's options say otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftlocust.errors import ConfigError
from ftlocust.k8s.client import Kube, api_error

GRAPH = "nvidia.com/dynamo-graph-deployment-name"
COMPONENT = "nvidia.com/dynamo-component"
COMPONENT_TYPE = "nvidia.com/dynamo-component-type"
SUB_COMPONENT_TYPE = "nvidia.com/dynamo-sub-component-type"
FRONTEND_PORT = 8000
SYSTEM_PORT = 9090


@dataclass
class GraphRoles:
    services: dict[str, str]  # role -> label selector
    frontend_role: str
    worker_roles: list[str]
    metrics_ports: dict[str, int]
    components: dict[str, str] = field(default_factory=dict)  # role -> the DGD's service name

    def describe(self) -> str:
        return ", ".join(f"{role} = {self.components[role]}" for role in self.services)


def _role_for(component_type: str, sub_type: str) -> tuple[str | None, bool]:
    """(the seed's role name or None, whether it serves requests)."""
    kind = sub_type or component_type
    if component_type == "frontend":
        return "frontend", False
    if kind == "prefill":
        return "prefill_worker", True
    if kind == "decode" or component_type == "worker":
        return "decode_worker", True
    return None, False


def graph_roles(kube: Kube, *, namespace: str, graph: str, where: str) -> GraphRoles:
    """The roles of DynamoGraphDeployment `graph` in `namespace`, from its pods' labels.
    ConfigError (one line) when it has no pods, no frontend, or no worker."""
    selector = f"{GRAPH}={graph}"
    try:
        pods = kube.core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=30).items
    except Exception as e:
        raise ConfigError(str(api_error(e, "list", "pods", namespace, where))) from None
    found: dict[str, tuple[str, str]] = {}  # service -> (component type, sub type)
    for pod in pods:
        labels = pod.metadata.labels or {}
        service = labels.get(COMPONENT)
        if service:
            found.setdefault(service, (labels.get(COMPONENT_TYPE, ""), labels.get(SUB_COMPONENT_TYPE, "")))
    if not found:
        raise ConfigError(f"{where}: no pods labelled {selector} (with {COMPONENT}) in namespace {namespace}: "
                          f"is the DynamoGraphDeployment named {graph!r} deployed there?")
    named: dict[str, list[str]] = {}
    for service in sorted(found):
        role, _ = _role_for(*found[service])
        named.setdefault(role or service.lower(), []).append(service)
    services, components, workers, ports = {}, {}, [], {}
    frontend_role = None
    for role, owners in named.items():
        for service in owners:
            name = role if len(owners) == 1 else service.lower()
            seed_role, serving = _role_for(*found[service])
            services[name] = f"{selector},{COMPONENT}={service}"
            components[name] = service
            ports[name] = FRONTEND_PORT if seed_role == "frontend" else SYSTEM_PORT
            if seed_role == "frontend" and frontend_role is None:
                frontend_role = name
            if serving:
                workers.append(name)
    if frontend_role is None:
        raise ConfigError(f"{where}: graph {graph!r} in namespace {namespace} has no pod with {COMPONENT_TYPE}=frontend "
                          f"(services: {', '.join(sorted(found))})")
    if not workers:
        raise ConfigError(f"{where}: graph {graph!r} in namespace {namespace} has no worker pods "
                          f"(services: {', '.join(sorted(found))})")
    return GraphRoles(services, frontend_role, workers, ports, components)


def graph_labels(graph: str, service: str, component_type: str, sub_type: str | None = None) -> dict[str, Any]:
    """The labels the operator gives a pod of `service` (what tests and demos put on theirs)."""
    labels = {GRAPH: graph, COMPONENT: service, COMPONENT_TYPE: component_type}
    if sub_type:
        labels[SUB_COMPONENT_TYPE] = sub_type
    return labels
