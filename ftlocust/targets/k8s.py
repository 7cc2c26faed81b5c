"""A deployment on Kubernetes that ftlocust did not start: roles are label selectors of pods in
one namespace; the frontend is reached through a port-forward (default) or a URL.

    target:
      kind: k8s
      options:
        namespace: dynamo                  # required (or --ft-k8s-namespace)
        dynamo_graph: vllm-agg             # a DynamoGraphDeployment: roles from its pods' labels
                                           #   (frontend, decode_worker, prefill_worker; ftlocust/k8s/dynamo.py)
        # ... or the roles by hand (not both):
        services: {frontend: app=frontend, worker: app=decode}   # role -> label selector
        frontend_role: frontend            # with services: the default; the other roles are the workers ...
        worker_roles: [worker]             # ... unless listed here
        frontend: port-forward             # the default: 127.0.0.1:<free port> -> a Ready frontend pod;
                                           #   or the frontend's URL (--host wins over both)
        frontend_port: 8000                # the frontend pods' HTTP port
        metrics_port: {decode_worker: 9090}  # each role's /metrics port on its pods (a graph: 8000 / 9090)
        registry: {role: nats, port: 4222, selector: app.kubernetes.io/name=nats}   # for worker_nats
        kubeconfig: ~/.kube/config         # default $KUBECONFIG, ~/.kube/config, else in-cluster
        context: my-cluster
        log_poll_s: 2                      # how often each role's log file is refreshed from the pods
        ready_timeout_s: 600               # start() waits this long for every pod to be Ready
      metrics: {frontend: "http://10.0.0.5:8000/metrics"}   # a role's /metrics URL instead (pod IP, a Service)

`start()` loads the client and warms it up in the namespace, finds the roles (a graph's from its
labels), selects every role's pods (one line when a selector matches none), opens the frontend's
port-forward and waits until every pod found is Ready and the frontend lists its models: that
wait is `startup_s`. Nothing is started, restarted or stopped, and nothing here has a local
process: a signal is a `pod-signal` fault, a kill a `pod-delete` fault.

Evidence, all under `run_dir` (the artifacts' `deployment/` folder):
- `logs/<role>.log`: rewritten every `log_poll_s` by a greenlet from the logs of the role's live
  pods (each container's, under `==> pod/container <==` headers), and `<role>.previous.log` with
  the last log read of each pod gone since (at most `MAX_GONE_PODS` per role) and the previous
  log of restarted containers. A file lags its pods by up to `log_poll_s` (`refresh_evidence`
  brings it up to date); each pod's text is capped at its last `MAX_LOG_CHARS` characters.
- `pods/transitions.jsonl`: one line per change of a pod's phase, readiness, restart count or
  deletion, with the time it was seen (a watch per role, from `start()` to `stop()`).
- `pods/<role>/<pod>.yaml`: the last manifest seen of every pod (deleted ones too).
- `/metrics` of each pod: `metrics_url(role)` is a local URL; a GET there scrapes every live,
  Ready pod of the role over a port-forward and returns their texts one after the other (each
  after a `# ftlocust pod <name>` comment), so a counter is the sum over the pods serving now —
  a deleted pod's counts leave with it. Any pod failing to answer fails the whole scrape (502),
  so a check says so instead of judging part of the role.

The server view (`recovered(role)`): the role has as many Ready pods as at `start()`, none of
them one seen deleted, and the frontend answers GET /v1/models with 200.

`partitioner` is a `ftlocust.k8s.networkpolicy.NetworkPolicyPartitioner` over the roles'
selectors, so `partition` faults are NetworkPolicies (mode drop only). `worker_nats` needs
`registry: {role: nats, port: 4222, selector: app.kubernetes.io/name=nats}` (the selector
only when `nats` is not already a role): the registry's pods become a role (not a worker) in
this namespace, and the partition drops new connections from the worker's pods to that port.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import re
import threading
import time
from typing import Any

import gevent

from ftlocust.errors import ConfigError

log = logging.getLogger("ftlocust.targets.k8s")

MAX_LOG_CHARS = 2_000_000  # per pod and container
MAX_GONE_PODS = 16  # per role, in the .previous.log
WHERE = "target.options"
PORT_FORWARD = "port-forward"
READY_POLL_S = 0.5
WATCH_S = 10  # a pod watch's server-side timeout: how long stop() may leave one running


class K8sDeployment:
    started_here = False
    local_processes = False  # fault targets are roles, not processes named by pid (see faults.resolve_target)
    events_path = None

    def __init__(self, run_dir: str, namespace: str | None = None, services: dict[str, str] | None = None,
                 dynamo_graph: str | None = None, frontend_role: str = "frontend",
                 worker_roles: list[str] | None = None, frontend: str = PORT_FORWARD, frontend_port: int = 8000,
                 metrics_port: dict[str, int] | None = None, kubeconfig: str | None = None,
                 context: str | None = None, log_poll_s: float = 2.0, ready_timeout_s: float = 600.0,
                 registry: dict | None = None, metrics: dict[str, str] | None = None):
        from ftlocust.k8s.networkpolicy import parse_selector
        from ftlocust.validation import error, mapping, number, string

        if namespace is None:
            raise ConfigError(f"{WHERE}.namespace: missing (required for a k8s target; or --ft-k8s-namespace)")
        self.namespace = string(namespace, f"{WHERE}.namespace")
        if (services is None) == (dynamo_graph is None):
            raise ConfigError(f"{WHERE}: give exactly one of services (role -> label selector) and dynamo_graph "
                              f"(a DynamoGraphDeployment's name; or --ft-k8s-graph)")
        self.dynamo_graph = string(dynamo_graph, f"{WHERE}.dynamo_graph") if dynamo_graph is not None else None
        self.services: dict[str, str] = {}
        self._workers: list[str] = []
        self.frontend_role = string(frontend_role, f"{WHERE}.frontend_role")
        if services is not None:
            if not isinstance(services, dict) or not services:
                raise error(f"{WHERE}.services", "a mapping of role to label selector (frontend: app=frontend, ...)",
                            services)
            for role, selector in services.items():
                string(selector, f"{WHERE}.services.{role}")
                parse_selector(selector, f"{WHERE}.services.{role}")
            self.services = {str(role): str(sel) for role, sel in services.items()}
            if self.frontend_role not in self.services:
                raise ConfigError(f"{WHERE}.services: no {self.frontend_role!r} role (the frontend_role); "
                                  f"got {', '.join(self.services)}")
            if worker_roles is None:
                self._workers = [r for r in self.services if r != self.frontend_role]
            else:
                if not isinstance(worker_roles, list) or not all(r in self.services for r in worker_roles):
                    raise error(f"{WHERE}.worker_roles", f"a list of roles of {', '.join(self.services)}",
                                worker_roles)
                self._workers = list(worker_roles)
        elif worker_roles is not None or frontend_role != "frontend":
            raise ConfigError(f"{WHERE}.worker_roles: not with dynamo_graph (the graph's labels say which pods "
                              f"are the frontend and the workers)")
        self.frontend = string(frontend, f"{WHERE}.frontend").rstrip("/")
        if self.frontend != PORT_FORWARD and not self.frontend.startswith(("http://", "https://")):
            raise error(f"{WHERE}.frontend", f"{PORT_FORWARD} or the frontend's http(s) URL", frontend)
        self.frontend_port = int(number(frontend_port, f"{WHERE}.frontend_port", integer=True, minimum=1,
                                        maximum=65535))
        self.metrics_port: dict[str, int] = {}
        for role, port in mapping(metrics_port or {}, f"{WHERE}.metrics_port").items():
            self.metrics_port[str(role)] = int(number(port, f"{WHERE}.metrics_port.{role}", integer=True,
                                                      minimum=1, maximum=65535))
        self.registry: dict | None = None  # {role, selector?, port}: what worker_nats cuts a worker from
        if registry is not None:
            r = mapping(registry, f"{WHERE}.registry", ("role", "selector", "port"), required=("role", "port"))
            self.registry = {"role": string(r["role"], f"{WHERE}.registry.role"),
                             "port": int(number(r["port"], f"{WHERE}.registry.port", integer=True, minimum=1,
                                                maximum=65535))}
            if r.get("selector") is not None:
                self.registry["selector"] = string(r["selector"], f"{WHERE}.registry.selector")
                parse_selector(self.registry["selector"], f"{WHERE}.registry.selector")
            if self.services:
                self._add_registry_role()
                self._workers = [w for w in self._workers if w != self.registry["role"] or worker_roles]
        self.kubeconfig, self.context = kubeconfig, context
        self.log_poll_s = float(number(log_poll_s, f"{WHERE}.log_poll_s", above=0))
        self.ready_timeout_s = float(number(ready_timeout_s, f"{WHERE}.ready_timeout_s", above=0))
        self.metrics = dict(metrics or {})
        self.run_dir = run_dir
        self.log_dir = os.path.join(run_dir, "logs")
        self.pods_dir = os.path.join(run_dir, "pods")
        self.base_url: str | None = None if self.frontend == PORT_FORWARD else self.frontend
        self.startup_s: float | None = None
        self.kube: Any = None
        self.partitioner: Any = None  # the NetworkPolicyPartitioner, once started
        self.graph: Any = None  # ftlocust.k8s.dynamo.GraphRoles with dynamo_graph
        self.expected: dict[str, int] = {}  # role -> pods at start()
        self.known: dict[str, set[str]] = {}  # role -> names of pods seen live
        self.gone: dict[str, set[str]] = {}  # role -> names of pods seen live, then not (deleted)
        self._texts: dict[str, dict[str, str]] = {}  # role -> "pod/container" -> last log text read
        self._previous: dict[str, dict[str, str]] = {}  # role -> key -> text of gone pods, restarted containers
        self._manifests: dict[str, dict[str, dict]] = {}  # role -> pod -> last manifest seen
        self._states: dict[str, tuple] = {}  # pod uid -> (phase, ready, deleting, restarts) last recorded
        self._seen_lock = threading.Lock()  # the watch threads and the drill both record pods
        self._exits: dict[tuple, dict] = {}  # (pod uid, container, restarts) -> how that container ended
        self._watching_since: float | None = None  # wall clock when start() began: exits before are history
        self._stopping = threading.Event()
        self._watchers: list[threading.Thread] = []
        self._watches: dict[str, Any] = {}  # role -> its kubernetes.watch.Watch now (stop() ends it)
        self._greenlets: list[gevent.Greenlet] = []
        self._forward: Any = None  # the frontend's PodForward
        self._metrics_server: MetricsServer | None = None

    def _add_registry_role(self) -> None:
        """The registry's pods are a role (not a worker): given by services, or by its selector."""
        role = self.registry["role"]
        if role in self.services:
            return
        if "selector" not in self.registry:
            raise ConfigError(f"{WHERE}.registry.role: {role!r} is not a role (roles: {', '.join(self.services)}); "
                              f"give registry.selector for its pods (e.g. app.kubernetes.io/name=nats)")
        self.services[role] = self.registry["selector"]

    @classmethod
    def from_spec(cls, spec, run_dir: str, host: str | None = None) -> "K8sDeployment":
        from ftlocust.targets import options_for

        for key in ("pids", "logs"):
            if getattr(spec, key):
                raise ConfigError(f"target.{key}: not for kind k8s (its roles are pods found by "
                                  f"target.options.services or dynamo_graph; their logs are read from the API)")
        options = options_for(cls, spec.options, "k8s", {"metrics"})
        if host is not None:
            options["frontend"] = host
        return cls(run_dir, metrics=spec.metrics, **options)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "K8sDeployment":
        from ftlocust.k8s.client import load, warm_up
        from ftlocust.k8s.networkpolicy import NetworkPolicyPartitioner
        from ftlocust.k8s.selection import select_pods

        began = time.monotonic()
        self._watching_since = time.time()
        self.kube = load(self.kubeconfig, self.context, where=f"{WHERE}.kubeconfig")
        warm_up(self.kube, self.namespace, f"{WHERE}.namespace")
        if self.dynamo_graph is not None:
            from ftlocust.k8s.dynamo import graph_roles

            self.graph = graph_roles(self.kube, namespace=self.namespace, graph=self.dynamo_graph,
                                     where=f"{WHERE}.dynamo_graph")
            self.services, self.frontend_role = dict(self.graph.services), self.graph.frontend_role
            self._workers = list(self.graph.worker_roles)
            self.metrics_port = {**self.graph.metrics_ports, **self.metrics_port}
            if self.registry is not None:
                self._add_registry_role()
            log.info("graph %s in namespace %s: %s", self.dynamo_graph, self.namespace, self.graph.describe())
        unknown = sorted(set(self.metrics_port) - set(self.services))
        if unknown:
            raise ConfigError(f"{WHERE}.metrics_port.{unknown[0]}: no such role (roles: {', '.join(self.services)})")
        for role, selector in self.services.items():
            pods = select_pods(self.kube, namespace=self.namespace, selector=selector,
                               where=f"{WHERE}.services.{role}" if self.graph is None else f"{WHERE}.dynamo_graph ({role})")
            self.expected[role] = len(pods)
            self.known[role] = {p.metadata.name for p in pods}
            self.gone[role] = set()
        self.partitioner = NetworkPolicyPartitioner(self.kube, self.namespace, self.services, where="partition")
        os.makedirs(self.log_dir, exist_ok=True)
        os.makedirs(self.pods_dir, exist_ok=True)
        try:
            for role in self.services:  # threads (greenlets under Locust): a watch blocks in its read
                t = threading.Thread(target=self._watch_pods, args=(role,), name=f"k8s-watch-{role}", daemon=True)
                t.start()
                self._watchers.append(t)
            if self.frontend == PORT_FORWARD:
                from ftlocust.k8s.portforward import PodForward

                self._forward = PodForward(self.kube, namespace=self.namespace, port=self.frontend_port,
                                           selector=self.services[self.frontend_role],
                                           where=f"{WHERE}.frontend").start()
                self.base_url = self._forward.url
                log.info("frontend: %s", self._forward.describe())
            if any(role not in self.metrics for role in self.metrics_port):
                self._metrics_server = MetricsServer(self).start()
            self._wait_ready(began)
            self.refresh_logs()
        except BaseException:
            self.stop()
            raise
        self._greenlets.append(gevent.spawn(self._poll_logs))
        return self

    def _wait_ready(self, began: float) -> None:
        """Until every pod found at start is Ready and the frontend lists its models (bounded)."""
        from ftlocust.k8s.selection import is_live, is_ready
        from ftlocust.targets.local import http_get_status

        deadline = began + self.ready_timeout_s
        forward_error = None
        while True:
            waiting = []
            for role in self.services:
                ready = sum(1 for p in self._pods(role) if is_live(p) and is_ready(p))
                if ready < self.expected[role]:
                    waiting.append(f"{role} {ready}/{self.expected[role]} Ready")
            status = None if waiting else http_get_status(self.base_url + "/v1/models", timeout_s=5.0)
            if not waiting and status != 200 and self._forward is not None:
                forward_error = self._forward_problem()
            if not waiting and status == 200:
                self.startup_s = time.monotonic() - began
                log.info("k8s deployment in namespace %s ready at %s in %.2f s", self.namespace, self.base_url,
                         self.startup_s)
                return
            if time.monotonic() >= deadline:
                what = "; ".join(waiting) if waiting else (
                    f"GET {self.base_url}/v1/models answered {status or 'nothing'}"
                    + (f" ({forward_error})" if forward_error else ""))
                raise ConfigError(f"{WHERE}.ready_timeout_s: not ready after {self.ready_timeout_s:g} s in namespace "
                                  f"{self.namespace}: {what}")
            gevent.sleep(READY_POLL_S)

    def _forward_problem(self) -> str | None:
        """Why the frontend's port-forward does not answer, asked of one Ready frontend pod
        directly: ConfigError at once when the API forbids port-forwarding (no wait helps)."""
        from ftlocust.k8s.client import KubeError
        from ftlocust.k8s.portforward import http_get
        from ftlocust.k8s.selection import is_live, is_ready

        pods = [p for p in self._pods(self.frontend_role) if is_live(p) and is_ready(p)]
        if not pods:
            return None
        try:
            status, _ = http_get(self.kube, namespace=self.namespace, pod=pods[0].metadata.name,
                                 port=self.frontend_port, path="/v1/models", timeout_s=5.0,
                                 where=f"{WHERE}.frontend")
        except KubeError as e:
            if ": forbidden: " in str(e):
                raise ConfigError(str(e)) from None
            return str(e)
        return f"pod {pods[0].metadata.name} answered {status} on port {self.frontend_port}"

    def stop(self) -> None:
        """Bring the evidence up to date, stop watching and refreshing, close the port-forwards;
        nothing in the cluster is touched (faults roll back)."""
        if self.kube is not None:
            try:
                self.refresh_evidence()
            except Exception as e:  # the cluster may be unreachable by now: keep what was read
                log.warning("refreshing the k8s evidence at the end failed: %s", e)
        self._stopping.set()
        for w in list(self._watches.values()):
            w.stop()  # shuts the watch's socket down: its thread ends now, not at the server's timeout
        for t in self._watchers:
            t.join(timeout=5)
        self._watchers = []
        for g in self._greenlets:
            g.kill(block=True, timeout=5)
        self._greenlets = []
        if self._forward is not None:
            self._forward.close()
            self._forward = None
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None

    def refresh_evidence(self) -> None:
        """Log files and pod manifests as the cluster has them now (the end of a run)."""
        self.refresh_logs()
        self._write_manifests()

    # -- roles ----------------------------------------------------------------------------------

    def roles(self) -> list[str]:
        return list(self.services)

    def worker_roles(self) -> list[str]:
        return list(self._workers)

    def _role(self, role: str) -> str:
        if role not in self.services:
            raise ConfigError(f"target.options.services: no role {role!r} (roles: {', '.join(self.services)})")
        return role

    def selector(self, role: str) -> str:
        """The label selector of the role's pods (pod kinds take it when they name no selector)."""
        return self.services[self._role(role)]

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
        for pod in pods:
            self._seen(role, pod, "LISTED")
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
                          f"fault (target: {role}) to signal its process")

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

    def pods_logging(self, role: str, request_id: str) -> list[str]:
        """The role's live pods whose log, as last read (`refresh_evidence`, which the drill's
        serving-worker lookup runs first), shows `request_id` received — the pod a
        `serving-worker` pod fault acts on."""
        from ftlocust.evidence import SERVING_PATTERN, request_id_regex

        self._role(role)
        pattern = re.compile(request_id_regex(request_id, SERVING_PATTERN))
        return sorted({key.split("/", 1)[0] for key, text in self._texts.get(role, {}).items()
                       if pattern.search(text)})

    def registry_endpoint(self) -> tuple[str, int] | None:
        """(role, port) of `registry` (Dynamo's NATS, say), which `worker_nats` cuts a worker
        from; None when the options name none."""
        return (self.registry["role"], self.registry["port"]) if self.registry else None

    def metrics_url(self, role: str) -> str | None:
        if role in self.metrics:
            return self.metrics[role]
        if role in self.metrics_port and self._metrics_server is not None:
            return f"{self._metrics_server.url}/metrics/{role}"
        return None

    def health_url(self, role: str) -> str | None:
        return self.base_url + "/v1/models" if role == self.frontend_role and self.base_url else None

    def address(self, role: str) -> str | None:
        return None

    # -- pods seen: transitions and manifests ---------------------------------------------------

    def _watch_pods(self, role: str) -> None:
        """Record every change of the role's pods as it happens (a watch, renewed every
        WATCH_S until `stop()`)."""
        from kubernetes import watch

        version = None
        while not self._stopping.is_set():
            w = self._watches[role] = watch.Watch()
            try:
                kwargs = {"resource_version": version} if version else {}
                for event in w.stream(self.kube.core.list_namespaced_pod, self.namespace,
                                      label_selector=self.services[role], timeout_seconds=WATCH_S,
                                      _request_timeout=WATCH_S + 15, **kwargs):
                    if self._stopping.is_set():
                        return
                    pod = event["object"]
                    version = pod.metadata.resource_version or version
                    self._seen(role, pod, event["type"])
            except Exception as e:  # a 410 Gone or a dropped connection: list afresh next time
                log.debug("watching the pods of %s: %s", role, e)
                version = None
                self._stopping.wait(1.0)
            finally:
                w.stop()

    def _seen(self, role: str, pod: Any, how: str) -> None:
        """Keep the pod's manifest; append a transition line when its state changed."""
        from ftlocust.k8s.selection import is_ready

        name = pod.metadata.name
        restarts = sum(s.restart_count or 0 for s in (pod.status.container_statuses or [])) \
            if pod.status is not None else 0
        deleting = pod.metadata.deletion_timestamp is not None or how == "DELETED"
        state = (pod.status.phase if pod.status is not None else None, is_ready(pod), deleting, restarts,
                 how == "DELETED")
        manifest = self.kube.core.api_client.sanitize_for_serialization(pod)
        with self._seen_lock:
            self._manifests.setdefault(role, {})[name] = manifest
            self._note_exits(role, pod)
            if self._states.get(pod.metadata.uid) == state:
                return
            self._states[pod.metadata.uid] = state
            line = {"t": round(time.time(), 3), "role": role, "pod": name, "uid": pod.metadata.uid, "seen": how,
                    "phase": state[0], "ready": state[1], "deleting": deleting, "restarts": restarts,
                    "node": pod.spec.node_name if pod.spec is not None else None}
            with open(os.path.join(self.pods_dir, "transitions.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")

    def _note_exits(self, role: str, pod: Any) -> None:
        """Each container end the pod's status reports (`lastState.terminated` of a restarted
        container, `state.terminated` of one that stays down), once per container and restart."""
        for status in (pod.status.container_statuses or []) if pod.status is not None else []:
            for ended in (status.last_state, status.state):
                terminated = ended.terminated if ended is not None else None
                if terminated is None:
                    continue
                restarts = (status.restart_count or 0) - (1 if ended is status.last_state else 0)
                key = (pod.metadata.uid, status.name, restarts)
                finished = terminated.finished_at
                # Kubernetes times are whole seconds (RFC 3339, truncated): an end in the second
                # the run began counts as the run's
                before_run = finished is not None and self._watching_since is not None \
                    and finished.timestamp() < int(self._watching_since)
                if key not in self._exits and not before_run:  # an end before the run is not a finding
                    self._exits[key] = container_exit(role, pod.metadata.name, status.name, terminated)

    def exits(self) -> list[dict]:
        """How each container of the role's pods that ended during the run ended, as the
        kubelet reported it (`RecordsExits`): `{role, pod, container, pid: None, exit_code,
        signal, reason}`. A signal is the runtime's own field, else exit code 128+n (the
        convention of container runtimes: 137 is SIGKILL)."""
        with self._seen_lock:
            return list(self._exits.values())

    def _write_manifests(self) -> None:
        import yaml

        with self._seen_lock:
            manifests = {role: dict(pods) for role, pods in self._manifests.items()}
        for role, pods in manifests.items():
            folder = os.path.join(self.pods_dir, role)
            os.makedirs(folder, exist_ok=True)
            for name, manifest in pods.items():
                with open(os.path.join(folder, f"{name}.yaml"), "w", encoding="utf-8") as f:
                    yaml.safe_dump(manifest, f, sort_keys=False)

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

    # -- /metrics of every pod --------------------------------------------------------------------

    def scrape_role(self, role: str) -> tuple[int, str]:
        """(HTTP status, text) for the role's /metrics: every live, Ready pod's, over a port-forward."""
        from ftlocust.k8s.client import KubeError
        from ftlocust.k8s.portforward import http_get
        from ftlocust.k8s.selection import is_live, is_ready

        if role not in self.metrics_port:
            return 404, f"no metrics_port for role {role!r}\n"
        pods = sorted((p for p in self._pods(role) if is_live(p) and is_ready(p)), key=lambda p: p.metadata.name)
        if not pods:
            return 502, f"no Ready pod of {role} in namespace {self.namespace}\n"
        parts = []
        for pod in pods:
            name = pod.metadata.name
            try:
                status, text = http_get(self.kube, namespace=self.namespace, pod=name, port=self.metrics_port[role],
                                        path="/metrics", timeout_s=5.0, where=f"metrics of {role}")
            except KubeError as e:
                return 502, f"pod {name}: {e}\n"
            if status != 200:
                return 502, f"pod {name}: GET /metrics on port {self.metrics_port[role]} answered {status}\n"
            parts.append(f"# ftlocust pod {name}\n{text}" + ("" if text.endswith("\n") else "\n"))
        return 200, "".join(parts)


class MetricsServer:
    """127.0.0.1:<free port>/metrics/<role> → `K8sDeployment.scrape_role(role)`, so the drill
    scrapes a k8s role like any other (by URL)."""

    def __init__(self, deployment: K8sDeployment):
        self.deployment = deployment
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                role = self.path.removeprefix("/metrics/") if self.path.startswith("/metrics/") else None
                try:
                    status, text = outer.deployment.scrape_role(role) if role else (404, "GET /metrics/<role>\n")
                except Exception as e:  # one line, like every scrape failure
                    status, text = 502, f"{type(e).__name__}: {' '.join(str(e).split())}\n"
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="k8s-metrics", daemon=True)

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _write(path: str, texts: dict[str, str]) -> None:
    """One file of every pod's text, each under a `==> pod/container <==` header; replaced whole."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for key, text in texts.items():
            f.write(f"==> {key} <==\n{text}")
            if text and not text.endswith("\n"):
                f.write("\n")
    os.replace(tmp, path)


def container_exit(role: str, pod: str, container: str, terminated: Any) -> dict:
    """One `RecordsExits` entry from a container's `terminated` state."""
    import signal as signal_module

    code = terminated.exit_code
    number = terminated.signal or (code - 128 if isinstance(code, int) and 128 < code < 128 + 65 else None)
    name = None
    if number:
        try:
            name = signal_module.Signals(number).name
        except ValueError:
            name = f"signal {number}"
    return {"role": role, "pod": pod, "container": container, "pid": None, "exit_code": code, "signal": name,
            "reason": terminated.reason}
