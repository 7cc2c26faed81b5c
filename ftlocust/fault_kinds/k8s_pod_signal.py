"""`pod-signal`: a signal to one process inside a container of a pod, sent over the API's exec.

    - {kind: pod-signal, target: decode_worker, namespace: dynamo, selector: "app=decode",
       process: VLLM::EngineCore, trigger: {mid_stream_chunks: 40}}    # the seed's vllm_decode_engine_core
    - {kind: pod-signal, target: frontend, namespace: dynamo, selector: "app=frontend", signal: SIGINT,
       trigger: {after_seconds: 30}}                                    # the container's main process

`target` is the role's name on the timeline (as for `pod-delete`). Fields:

- `namespace`, `selector`, `expect`, `kubeconfig`, `context`: as for `pod-delete` (against a
  k8s target `target` alone may name the pods: a role, or `serving-worker`); the first pod by
  name is signalled.
- `container`: the container (default: the pod's first one).
- `process`: a process name, matched as `process-signal`'s `child` is
  (`ftlocust.processes.descendants_named`: the first word of argv[0], or comm == the name's
  first 15 characters), among every process the container sees; exactly one must match. Not
  given: the container's main process (pid 1).
- `signal`: SIGKILL (the default), SIGTERM or SIGINT. SIGSTOP is not offered (its SIGCONT would
  need an exec held by the guardian).

pid 1 and SIGKILL: the kernel ignores SIGKILL to a pid namespace's init sent from inside the
namespace (which is where an exec runs), so, as the seed does, SIGINT is sent instead; the
description and the event's detail say so (`signal` is what was sent, `requested_signal` what
was asked). SIGTERM and SIGINT reach pid 1 only if it handles them (Python handles SIGINT).

Preflight loads and warms up the client, selects the pod, and lists the container's processes
(one exec of a POSIX `sh` script reading /proc): the process is resolved BEFORE the trigger. The
fault is one exec of `kill -s NAME PID`, sent only if PID still has the start time it was
listed with (a process that exited and whose pid was reused is not signalled: the fault fails);
no local process is started, the exec goes over the client's WebSocket. Later occurrences of a `repeat` find the process again when they fire (the
signalled one was replaced). An API failure or a failed kill at injection raises (the drill
records the fault as failed). Not reversible. The server view (`server_recovered`) waits for
the signalled container to restart and be Ready again, or for the pod's replacement. The
event's detail: `pod`, `uid`, `node`, `container`, `process`, `pid` (in the container),
`start_time`, `signal`, `requested_signal`, `note`.
"""

from __future__ import annotations

import logging
import time

from ftlocust.errors import ConfigError
from ftlocust.faults import Fault, FaultContext, register
from ftlocust.k8s.fields import FIELDS as POD_FIELDS, PodFields, role_of
from ftlocust.phases import FaultEvent
from ftlocust.validation import choice, error, mapping, string

log = logging.getLogger("ftlocust.faults")

SIGNALS = ("SIGKILL", "SIGTERM", "SIGINT")
FIELDS = (*POD_FIELDS, "container", "process", "signal")
EXEC_TIMEOUT_S = 20.0


@register
class PodSignalFault(Fault):
    kind = "pod-signal"

    def validate(self) -> None:
        params = mapping(self.spec.params, self.where, FIELDS)
        self.pods_spec = PodFields.parse(params, self.field, self.spec.target)
        name = str(params.get("signal", "SIGKILL")).upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        if name == "SIGSTOP":
            raise ConfigError(f"{self.field('signal')}: SIGSTOP is not offered for pods (its SIGCONT would need "
                              f"an exec held by the guardian); expected one of {', '.join(SIGNALS)}")
        self.requested_signal = choice(name, self.field("signal"), SIGNALS)
        self.container = string(params["container"], self.field("container")) if params.get("container") else None
        self.process = None
        if params.get("process") is not None:
            self.process = string(params["process"], self.field("process"))
            if any(c.isspace() for c in self.process):
                raise error(self.field("process"), "a process name without whitespace (e.g. VLLM::EngineCore)",
                            self.process)
        self.kube = None
        self._deployment = None
        self.pod = None
        self.pid: int | None = None
        self.found = None  # the PodProcess signalled
        self.restarts_before = 0  # the container's restartCount when the process was found

    @property
    def signal_name(self) -> str:
        """What is sent: SIGINT for SIGKILL to pid 1 (see the module docstring)."""
        return "SIGINT" if self.pid == 1 and self.requested_signal == "SIGKILL" else self.requested_signal

    def _note(self) -> str:
        if self.signal_name != self.requested_signal:
            return ("SIGINT instead of SIGKILL: the process is the container's pid 1, which ignores SIGKILL "
                    "sent from inside its pid namespace")
        return ""

    # -- resolving ------------------------------------------------------------------------------

    def preflight(self, ctx: FaultContext) -> None:
        self._deployment = ctx.deployment
        self.kube = self.pods_spec.connect(ctx, self.field, self.spec.trigger)
        if not self.pods_spec.serving:  # serving-worker: its pod is known when the fault fires
            self._resolve(ConfigError)

    def _resolve(self, raises: type[Exception], ctx: FaultContext | None = None) -> None:
        from ftlocust.k8s.client import KubeError
        from ftlocust.k8s.exec import list_processes
        from ftlocust.processes import name_matches

        try:
            pod = self.pods_spec.select(self.kube, self.field, ctx=ctx)[0]
        except ConfigError as e:
            raise raises(str(e)) from None
        containers = [c.name for c in pod.spec.containers]
        container = self.container or containers[0]
        if container not in containers:
            raise raises(f"{self.field('container')}: expected a container of pod {pod.metadata.name} "
                         f"({', '.join(containers)}), got {container!r}")
        try:
            listed = list_processes(self.kube, namespace=self.pods_spec.namespace, pod=pod.metadata.name,
                                    container=container, timeout_s=EXEC_TIMEOUT_S, where=self.field("process"))
        except KubeError as e:
            raise raises(str(e)) from None
        if self.process is None:
            found = [p for p in listed if p.pid == 1]
            what = "a pid 1"
        else:
            found = [p for p in listed if name_matches(p.argv0, p.comm, self.process)]
            what = f"1 process named {self.process!r}"
        if len(found) != 1:
            seen = "; ".join(p.describe() for p in listed[:12]) + ("; …" if len(listed) > 12 else "")
            matched = f"{len(found)} ({', '.join(f'pid {p.pid}' for p in found)})" if found else "0"
            raise raises(f"{self.field('process')}: expected {what} in container {container} of pod "
                         f"{pod.metadata.name} (namespace {self.pods_spec.namespace}), found {matched}; "
                         f"processes: {seen or 'none'}")
        self.pod, self.container_name, self.found, self.pid = pod, container, found[0], found[0].pid
        self.restarts_before = _restarts(pod, container)

    # -- the verbs ------------------------------------------------------------------------------

    def _what(self) -> str:
        ps = self.pods_spec
        if self.found is None:
            return f"{self.process or 'pid 1'} in {self.spec.target} ({ps.describe()})"
        return (f"{self.found.describe()} in container {self.container_name} of pod {self.pod.metadata.name} "
                f"(uid {self.pod.metadata.uid}, {self.spec.target}, namespace {ps.namespace})")

    def describe(self) -> str:
        note = f" ({self._note()})" if self._note() else ""
        again = ", found again when it fires" if self.occurrence > 1 else ""
        return f"{self.signal_name} → {self._what()}{note}{again}, via exec, {self.spec.trigger.describe()}"

    def inject(self, ctx: FaultContext) -> FaultEvent:
        from ftlocust.k8s.exec import signal_in_pod

        if self.occurrence > 1 or self.found is None:
            self._resolve(RuntimeError, ctx)
        signal_in_pod(self.kube, namespace=self.pods_spec.namespace, pod=self.pod.metadata.name,
                      container=self.container_name, pid=self.pid, signal_name=self.signal_name,
                      start_time=self.found.start_time, timeout_s=EXEC_TIMEOUT_S, where=self.where)
        injected_at = time.time()
        log.info("injected %s on %s%s", self.signal_name, self._what(), f" ({self._note()})" if self._note() else "")
        self.event = FaultEvent(name=self.name, kind=self.kind, target=self.spec.target, injected_at=injected_at,
                                detail={"pod": self.pod.metadata.name, "uid": self.pod.metadata.uid,
                                        "node": self.pod.spec.node_name, "namespace": self.pods_spec.namespace,
                                        "container": self.container_name, "process": self.process or self.found.argv0,
                                        "pid": self.pid, "start_time": self.found.start_time, "signal": self.signal_name,
                                        "requested_signal": self.requested_signal, "note": self._note() or None})
        return self.event

    def recover(self, ctx: FaultContext) -> str | None:
        return None

    def affected_role(self) -> str | None:
        return role_of(self)

    def server_recovered(self, ctx: FaultContext) -> bool | None:
        """The signalled container restarted (its restartCount grew) and the pod is Ready again
        — or the pod was replaced — and the deployment serves the role as at start. A process
        that took the signal without exiting never shows a recovery (there was none to see)."""
        from kubernetes.client.exceptions import ApiException

        from ftlocust.k8s.selection import is_ready

        role = self.affected_role()
        if role is None or self.pod is None or ctx.deployment is None:
            return None
        try:
            pod = self.kube.core.read_namespaced_pod(self.pod.metadata.name, self.pods_spec.namespace,
                                                     _request_timeout=10)
        except ApiException as e:
            if e.status != 404:
                raise
            return ctx.deployment.recovered(role)  # replaced: the deployment's view of the role
        if pod.metadata.uid != self.pod.metadata.uid:
            return ctx.deployment.recovered(role)
        if _restarts(pod, self.container_name) <= self.restarts_before:
            return False
        return is_ready(pod) and ctx.deployment.recovered(role)


def _restarts(pod, container: str) -> int:
    for status in (pod.status.container_statuses or []) if pod.status is not None else []:
        if status.name == container:
            return status.restart_count or 0
    return 0
