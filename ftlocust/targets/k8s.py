"""A deployment on Kubernetes that ftlocust did not start: roles are label selectors of pods in
one namespace, the frontend is a URL (`--host` or `frontend_url`).

    target:
      kind: k8s
      options:
        namespace: dynamo                                         # required
        services: {frontend: app=frontend, worker: app=decode}    # role -> label selector, required
        frontend_role: frontend        # the default; the other roles are the workers ...
        worker_roles: [worker]         # ... unless listed here
        frontend_url: http://dynamo-frontend:8000   # or --host (which wins)
        kubeconfig: ~/.kube/config     # default $KUBECONFIG, ~/.kube/config, else in-cluster
        context: my-cluster
        log_poll_s: 2                  # how often each role's log file is refreshed from the pods
      metrics: {frontend: "http://dynamo-frontend:8000/metrics"}   # optional: pod IPs are rarely reachable

`start()` loads the client, warms it up in the namespace and selects every role's pods (one
line when a selector matches none). Nothing is started, restarted or stopped, and nothing here
has a local process: a signal is a `pod-signal` fault, a kill a `pod-delete` fault.

Evidence needs files, so each role has `run_dir/logs/<role>.log`, rewritten every `log_poll_s`
by a greenlet from the logs of the role's live pods (each container's), and `<role>.previous.log`
with the last log read of each pod that has gone since (a deleted pod, at most
`MAX_GONE_PODS` per role) and of restarted containers. A file lags its pods by up to
`log_poll_s`; each pod's text is capped at its last `MAX_LOG_CHARS` characters.

The server view (`recovered(role)`): the role has as many Ready pods as at `start()`, none of
them one seen deleted, and the frontend answers GET /v1/models with 200.

`partitioner` is a `ftlocust.k8s.networkpolicy.NetworkPolicyPartitioner` over the roles'
selectors, so `partition` faults are NetworkPolicies (mode drop only). `registry_endpoint()` is
None: Dynamo on Kubernetes discovers workers through NATS/etcd, which are not roles here, so
`worker_nats` is refused.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import gevent

from ftlocust.errors import ConfigError

log = logging.getLogger("ftlocust.targets.k8s")

MAX_LOG_CHARS = 2_000_000  # per pod and container
MAX_GONE_PODS = 16  # per role, in the .previous.log
WHERE = "target.options"


class K8sDeployment:
    started_here = False
    local_processes = False  # fault targets are roles, not processes named by pid (see faults.resolve_target)
    startup_s = None
    events_path = None

    def __init__(self, run_dir: str, namespace: str | None = None, services: dict[str, str] | None = None,
                 frontend_role: str = "frontend", worker_roles: list[str] | None = None,
                 frontend_url: str | None = None, kubeconfig: str | None = None, context: str | None = None,
                 log_poll_s: float = 2.0, metrics: dict[str, str] | None = None):
        from ftlocust.k8s.networkpolicy import parse_selector
        from ftlocust.validation import error, number, string

        if namespace is None:
            raise ConfigError(f"{WHERE}.namespace: missing (required for a k8s target)")
        self.namespace = string(namespace, f"{WHERE}.namespace")
        if not isinstance(services, dict) or not services:
            raise error(f"{WHERE}.services", "a mapping of role to label selector (frontend: app=frontend, ...)",
                        services)
        for role, selector in services.items():
            string(selector, f"{WHERE}.services.{role}")
            parse_selector(selector, f"{WHERE}.services.{role}")
        self.services = {str(role): str(sel) for role, sel in services.items()}
        self.frontend_role = string(frontend_role, f"{WHERE}.frontend_role")
        if self.frontend_role not in self.services:
            raise ConfigError(f"{WHERE}.services: no {self.frontend_role!r} role (the frontend_role); "
                              f"got {', '.join(self.services)}")
        if worker_roles is None:
            self._workers = [r for r in self.services if r != self.frontend_role]
        else:
            if not isinstance(worker_roles, list) or not all(r in self.services for r in worker_roles):
                raise error(f"{WHERE}.worker_roles", f"a list of roles of {', '.join(self.services)}", worker_roles)
            self._workers = list(worker_roles)
        if not frontend_url:
            raise ConfigError(f"{WHERE}.frontend_url: missing: give --host or target.options.frontend_url "
                              f"(the frontend's OpenAI-compatible URL)")
        self.base_url = string(frontend_url, f"{WHERE}.frontend_url").rstrip("/")
        self.kubeconfig, self.context = kubeconfig, context
        self.log_poll_s = float(number(log_poll_s, f"{WHERE}.log_poll_s", above=0))
        self.metrics = dict(metrics or {})
        self.log_dir = os.path.join(run_dir, "logs")
        self.kube: Any = None
        self.partitioner: Any = None  # the NetworkPolicyPartitioner, once started
        self.expected: dict[str, int] = {}  # role -> pods at start()
        self.known: dict[str, set[str]] = {}  # role -> names of pods seen live
        self.gone: dict[str, set[str]] = {}  # role -> names of pods seen live, then not (deleted)
        self._texts: dict[str, dict[str, str]] = {}  # role -> "pod/container" -> last log text read
        self._previous: dict[str, dict[str, str]] = {}  # role -> key -> text of gone pods, restarted containers
        self._poller: gevent.Greenlet | None = None

    @classmethod
    def from_spec(cls, spec, run_dir: str, host: str | None = None) -> "K8sDeployment":
        from ftlocust.targets import options_for

        for key in ("pids", "logs"):
            if getattr(spec, key):
                raise ConfigError(f"target.{key}: not for kind k8s (its roles are pods found by "
                                  f"target.options.services; their logs are read from the API)")
        options = options_for(cls, spec.options, "k8s", {"metrics"})
        if host is not None:
            options["frontend_url"] = host
        return cls(run_dir, metrics=spec.metrics, **options)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "K8sDeployment":
        from ftlocust.k8s.client import load, warm_up
        from ftlocust.k8s.networkpolicy import NetworkPolicyPartitioner
        from ftlocust.k8s.selection import select_pods

        self.kube = load(self.kubeconfig, self.context, where=f"{WHERE}.kubeconfig")
        warm_up(self.kube, self.namespace, f"{WHERE}.namespace")
        for role, selector in self.services.items():
            pods = select_pods(self.kube, namespace=self.namespace, selector=selector,
                               where=f"{WHERE}.services.{role}")
            self.expected[role] = len(pods)
            self.known[role] = {p.metadata.name for p in pods}
            self.gone[role] = set()
        self.partitioner = NetworkPolicyPartitioner(self.kube, self.namespace, self.services,
                                                    where="partition")
        os.makedirs(self.log_dir, exist_ok=True)
        self.refresh_logs()
        self._poller = gevent.spawn(self._poll_logs)
        return self

    def stop(self) -> None:
        """Stop refreshing the log files; nothing in the cluster is touched (faults roll back)."""
        if self._poller is not None:
            self._poller.kill(block=True, timeout=5)
            self._poller = None

    # -- roles ----------------------------------------------------------------------------------

    def roles(self) -> list[str]:
        return list(self.services)

    def worker_roles(self) -> list[str]:
        return list(self._workers)

    def _role(self, role: str) -> str:
        if role not in self.services:
            raise ConfigError(f"target.options.services: no role {role!r} (roles: {', '.join(self.services)})")
        return role

    def _pods(self, role: str) -> list:
        """The role's pods now (all of them), and the live names folded into known/gone."""
        from ftlocust.k8s.client import api_error
        from ftlocust.k8s.selection import is_live

        try:
            pods = self.kube.core.list_namespaced_pod(self.namespace, label_selector=self.services[role],
                                                      _request_timeout=30).items
        except Exception as e:
            raise api_error(e, "list", "pods", self.namespace, f"k8s target {role}") from None
        live = {p.metadata.name for p in pods if is_live(p)}
        known = self.known.setdefault(role, set())
        self.gone.setdefault(role, set()).update(known - live)
        known |= live
        return pods

    def alive(self, role: str) -> bool:
        from ftlocust.k8s.selection import is_live

        return any(is_live(p) for p in self._pods(self._role(role)))

    def pid(self, role: str) -> int | None:
        return None  # no local process

    def process(self, role: str) -> None:
        return None

    def signal(self, role: str, sig: int) -> int:
        raise ConfigError(f"signal: {role} runs in pods of namespace {self.namespace}, not here; use a pod-signal "
                          f"fault (namespace, selector) to signal its process")

    def restart(self, role: str) -> None:
        raise ConfigError(f"restart: {role} runs in pods of namespace {self.namespace}; its controller restarts it "
                          f"(a pod-delete fault makes it)")

    def recovered(self, role: str) -> bool:
        """The role has as many Ready pods as at start(), none of them one seen deleted, and the
        frontend lists its models."""
        from ftlocust.k8s.selection import is_live, is_ready
        from ftlocust.targets.local import http_get_status

        pods = self._pods(self._role(role))
        ready = [p for p in pods if is_live(p) and is_ready(p) and p.metadata.name not in self.gone[role]]
        if len(ready) < self.expected.get(role, 1):
            return False
        return http_get_status(self.base_url + "/v1/models", timeout_s=2.0) == 200

    def registry_endpoint(self) -> None:
        """None: Dynamo on Kubernetes registers workers with NATS/etcd, which are not roles here."""
        return None

    def metrics_url(self, role: str) -> str | None:
        return self.metrics.get(role)

    def health_url(self, role: str) -> str | None:
        return self.base_url + "/v1/models" if role == self.frontend_role else None

    def address(self, role: str) -> str | None:
        return None

    # -- logs -------------------------------------------------------------------------------------

    def log_path(self, role: str) -> str | None:
        if role not in self.services:
            return None
        return os.path.join(self.log_dir, f"{role}.log")

    def _poll_logs(self) -> None:
        while True:
            gevent.sleep(self.log_poll_s)
            try:
                self.refresh_logs()
            except Exception as e:  # the next poll tries again; the evidence is only staler
                log.warning("refreshing the k8s log files failed: %s", e)

    def refresh_logs(self) -> None:
        """Rewrite every role's log files from its pods' logs (one read per live container, one
        `previous` read per restarted container)."""
        from ftlocust.k8s.client import KubeError
        from ftlocust.k8s.pods import pod_logs
        from ftlocust.k8s.selection import is_live

        for role in self.services:
            texts = self._texts.setdefault(role, {})
            previous = self._previous.setdefault(role, {})
            live_keys = set()
            for pod in sorted(self._pods(role), key=lambda p: p.metadata.name):
                if not is_live(pod):
                    continue
                name = pod.metadata.name
                restarts = {s.name: s.restart_count or 0 for s in (pod.status.container_statuses or [])} \
                    if pod.status is not None else {}
                for container in [c.name for c in pod.spec.containers] if pod.spec is not None else [None]:
                    key = f"{name}/{container}"
                    live_keys.add(key)
                    try:
                        texts[key] = pod_logs(self.kube, namespace=self.namespace, name=name,
                                              container=container, where=f"k8s target {role}")[-MAX_LOG_CHARS:]
                        if restarts.get(container) and key not in previous:
                            previous[key] = pod_logs(self.kube, namespace=self.namespace, name=name,
                                                     container=container, previous=True,
                                                     where=f"k8s target {role}")[-MAX_LOG_CHARS:]
                    except KubeError as e:  # a pod going away meanwhile: keep what was read
                        log.debug("%s", e)
            for key in [k for k in texts if k not in live_keys]:  # pods gone since: their last text
                previous[f"{key} (gone)"] = texts.pop(key)
            while len(previous) > MAX_GONE_PODS:
                previous.pop(next(iter(previous)))
            path = self.log_path(role)
            _write(path, texts)
            if previous:
                _write(path[:-len(".log")] + ".previous.log", previous)


def _write(path: str, texts: dict[str, str]) -> None:
    """One file of every pod's text, each under a `==> pod/container <==` header; replaced whole."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for key, text in texts.items():
            f.write(f"==> {key} <==\n{text}")
            if text and not text.endswith("\n"):
                f.write("\n")
    os.replace(tmp, path)
