"""A Kubernetes API server for tests, driven by the REAL `kubernetes` client: the parts of the
core/v1 and networking.k8s.io/v1 APIs that ftlocust's Kubernetes kinds call, on 127.0.0.1 (an
aiohttp server in a background thread), and `kubeconfig()` to point a client at it.

    fake = FakeKube(namespaces=["ft"]); fake.start()
    fake.add_pod("ft", "decode-0", {"app": "decode"}, process=popen)   # backed by a real process
    fake.controller("ft", {"app": "decode"}, ready_after_s=0.2, factory=lambda: Popen(...))
    fake.forbid("delete", "pods"); fake.fail("delete", "pods", status=500)
    kube = ftlocust.k8s.client.load(fake.kubeconfig(tmp_path))

Implemented (what the real client sends, checked against kubernetes 37's generated client):

- GET    /api/v1/namespaces/{ns}                        (404 for a namespace not given)
- GET    /api/v1/namespaces/{ns}/pods                   labelSelector (equality, `a=b,c=d`), limit,
                                                         watch=true (JSON lines {type, object};
                                                         resourceVersion, timeoutSeconds)
- GET    /api/v1/namespaces/{ns}/pods/{name}
- DELETE /api/v1/namespaces/{ns}/pods/{name}            DeleteOptions body: gracePeriodSeconds,
                                                         preconditions.uid (409 on a mismatch)
- GET    /api/v1/namespaces/{ns}/pods/{name}/log        container, previous (a pod's log: text,
                                                         or a file read at each GET)
- GET    /api/v1/namespaces/{ns}/pods/{name}/exec       WebSocket, subprotocol v4.channel.k8s.io:
                                                         channel byte 1 stdout, 2 stderr, 3 a
                                                         Status (Success, or Failure with an
                                                         ExitCode cause)
- GET    /api/v1/namespaces/{ns}/pods/{name}/portforward ports=N[,M]: WebSocket, subprotocol
                                                         v4.channel.k8s.io, as the real server
                                                         speaks to this client: port index i has
                                                         data channel 2i and error channel 2i+1,
                                                         each opened with the port (2 bytes LE);
                                                         bytes go to 127.0.0.1:pod.ports[N]
                                                         (unknown or refused: a message on the
                                                         error channel, then close)
- POST/GET /apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies, GET/DELETE .../{name}
- 403 per verb + resource (`forbid`, with the API's Forbidden Status), any status per verb +
  resource (`fail`), 404 for what does not exist, 400 for an unknown container.

Pods are data the test gives. A pod may be backed by a real local process the test started
(anything with `.pid`, ideally a Popen): deleting the pod SIGTERMs it and SIGKILLs it after the
grace period (force / grace 0: SIGKILL, and the pod is gone at once); the pod is removed once
the process exited. A backing process that exits by itself is the container dying: the pod's
restartCount grows and it is no longer Ready (nothing restarts it). A `controller` replaces a deleted pod of its labels (new name and uid, Ready
after a delay, optionally backed by a process from `factory`, optionally served by the deleted
pod's `ports` and `logs`). Deleting a pod ends its port-forwards.

Exec never runs a command on this machine. It understands exactly what ftlocust's kinds send —
`sh -c <ftlocust.k8s.exec.PROCESS_LIST>` (answered with the backing process tree as the
container would see it: the backing process is pid 1, its descendants keep their real pids and
start times) and `kill_command`'s `sh -c '[start-time check;] kill -s NAME PID'` (a signal
only to a process of that pod's tree whose start time still matches, pid 1 mapped to the
backing process; like the kernel, SIGKILL and SIGSTOP to pid 1 sent from inside its pid
namespace are ignored) and `append_line_command` (the line appended to the local file the
pod's `files` maps that container path to; an unmapped path: "Permission denied", exit 2) —
and answers anything else with exit code 127.

Every request is recorded (`requests`: method, path, query, body, authorization).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

from ftlocust.k8s.exec import NOT_THAT_PROCESS, PROCESS_LIST, append_line_command, kill_command
from tests.support.procfs import start_time

_KILL = re.compile(r"(?:.*\[ \"\$st\" = (\d+) \] \|\| exit \d+; )?kill -s ([A-Z0-9]+) (\d+)")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _matches(labels: dict, selector: str | None) -> bool:
    if not selector:
        return True
    for part in selector.split(","):
        key, _, value = part.partition("=")
        if labels.get(key.strip()) != value.strip().lstrip("="):
            return False
    return True


def _alive(proc: Any) -> bool:
    if proc is None:
        return False
    if hasattr(proc, "poll"):
        return proc.poll() is None
    try:
        with open(f"/proc/{proc.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _exit_code(proc: Any) -> int | None:
    """A container's exit code as the kubelet reports it: the status, or 128+n after signal n
    (None for a process that is not our child: its status is not ours to read)."""
    code = proc.poll() if hasattr(proc, "poll") else None
    if code is None:
        return None
    return 128 - code if code < 0 else code


def _kill(proc: Any, sig: int) -> None:
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass


def _tree(root: int) -> list[int]:
    """root's live descendants (by ppid in /proc), root not included."""
    parents = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X"):
            parents[int(name)] = int(fields[1])
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        todo += kids
    return sorted(out)


def _comm_argv0(pid: int) -> tuple[str, str] | None:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            comm = f.read().decode(errors="replace").rstrip("\n")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return None
    return comm, argv0.split("\n", 1)[0]


@dataclass
class FakePod:
    name: str
    namespace: str
    labels: dict
    process: Any = None  # a real local process backing the pod (pid 1 of its "container")
    containers: list = field(default_factory=lambda: ["main"])
    node: str = "node-1"
    ready: bool = True
    phase: str = "Running"
    grace_s: int = 30  # terminationGracePeriodSeconds
    logs: dict = field(default_factory=dict)  # container -> text, or a Path: a file read at each GET
    ports: dict = field(default_factory=dict)  # container port -> local TCP port on 127.0.0.1 serving it
    previous_logs: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)  # container path -> local Path (an agent's /dev/kmsg)
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: str = field(default_factory=_now)
    deletion: str | None = None
    rv: int = 0
    restarts: int = 0  # of its first container: its process exited without the pod being deleted
    exited: bool = False
    exit_code: int | None = None  # as the kubelet reports it: 128+n for a process ended by signal n
    finished: str | None = None

    def manifest(self) -> dict:
        meta = {"name": self.name, "namespace": self.namespace, "uid": self.uid, "labels": dict(self.labels),
                "resourceVersion": str(self.rv), "creationTimestamp": self.created}
        if self.deletion:
            meta.update(deletionTimestamp=self.deletion, deletionGracePeriodSeconds=self.grace_s)
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                "spec": {"containers": [{"name": c, "image": "fake"} for c in self.containers],
                         "nodeName": self.node, "terminationGracePeriodSeconds": self.grace_s},
                "status": {"phase": self.phase, "podIP": "10.0.0.1",
                           "conditions": [{"type": "Ready", "status": "True" if self.ready else "False"}],
                           "containerStatuses": [
                               {"name": c, "image": "fake", "imageID": "", "ready": self.ready,
                                "restartCount": self.restarts if i == 0 else 0,
                                **({"lastState": {"terminated": {
                                    "exitCode": self.exit_code, "reason": "Error" if self.exit_code else "Completed",
                                    "startedAt": self.created, "finishedAt": self.finished}}}
                                   if i == 0 and self.exit_code is not None else {})}
                               for i, c in enumerate(self.containers)]}}


@dataclass
class Controller:
    namespace: str
    labels: dict
    ready_after_s: float = 0.2
    factory: Callable[[], Any] | None = None
    keep: tuple = ()  # FakePod fields the replacement takes from the pod it replaces ("ports", "logs")
    made: list = field(default_factory=list)


class FakeKube:
    def __init__(self, namespaces: list[str] = ("ft",), token: str = "fake-token"):
        self.namespaces = list(namespaces)
        self.token = token
        self.pods: dict[tuple[str, str], FakePod] = {}
        self.policies: dict[tuple[str, str], dict] = {}
        self.controllers: list[Controller] = []
        self.requests: list[dict] = []
        self.signals: list[tuple[int, int]] = []  # (real pid, signal) the fake sent
        self.rules: list[dict] = []  # fail/forbid
        self._rv = 0
        self._events: list[tuple[int, str, str, dict]] = []  # (rv, namespace, type, object)
        self._watchers: list[asyncio.Queue] = []
        self._forwards: dict[str, set] = {}  # pod uid -> its port-forwards' backend writers
        self._lock = threading.RLock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self._thread: threading.Thread | None = None

    # -- the test's side ----------------------------------------------------------------------

    def start(self) -> "FakeKube":
        ready = threading.Event()

        def serve():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._dispatch)
            self._runner = web.AppRunner(app)
            self.loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self._runner.cleanup())
            self.loop.close()

        self._thread = threading.Thread(target=serve, name="fake-kube", daemon=True)
        self._thread.start()
        assert ready.wait(10), "fake API server did not start"
        self._stopping = threading.Event()
        threading.Thread(target=self._kubelet, name="fake-kubelet", daemon=True).start()
        return self

    def _kubelet(self) -> None:
        """A pod's process that exits while the pod is not being deleted is its container
        dying: restartCount + 1 and not Ready (no new process: it stays down, CrashLoopBackOff)."""
        while not self._stopping.wait(0.05):
            with self._lock:
                for pod in list(self.pods.values()):
                    if pod.process is not None and not pod.exited and not pod.deletion and not _alive(pod.process):
                        pod.exited, pod.ready = True, False
                        pod.restarts += 1
                        pod.exit_code, pod.finished = _exit_code(pod.process), _now()
                        self._changed(pod, "MODIFIED")

    def stop(self) -> None:
        if getattr(self, "_stopping", None) is not None:
            self._stopping.set()
        if self.loop is not None and self._thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self._thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, directory: str, namespace: str | None = None) -> str:
        path = os.path.join(str(directory), "kubeconfig")
        ctx = {"cluster": "fake", "user": "fake"}
        if namespace or self.namespaces:
            ctx["namespace"] = namespace or self.namespaces[0]
        data = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                "users": [{"name": "fake", "user": {"token": self.token}}],
                "contexts": [{"name": "fake", "context": ctx}]}
        with open(path, "w") as f:
            json.dump(data, f)  # JSON is YAML
        return path

    def add_pod(self, namespace: str, name: str, labels: dict, **kw) -> FakePod:
        with self._lock:
            pod = FakePod(name=name, namespace=namespace, labels=dict(labels), **kw)
            self.pods[(namespace, name)] = pod
            self._changed(pod, "ADDED")
            return pod

    def set_ready(self, namespace: str, name: str, ready: bool = True) -> None:
        with self._lock:
            pod = self.pods[(namespace, name)]
            pod.ready = ready
            self._changed(pod, "MODIFIED")

    def controller(self, namespace: str, labels: dict, ready_after_s: float = 0.2,
                   factory: Callable[[], Any] | None = None, keep: tuple = ()) -> Controller:
        """Replace a deleted pod of these labels (new name and uid, Ready after ready_after_s);
        `keep`: fields it takes from the pod it replaces (("ports", "logs"): the same backend
        serves the replacement)."""
        c = Controller(namespace, dict(labels), ready_after_s, factory, tuple(keep))
        self.controllers.append(c)
        return c

    def forbid(self, verb: str, resource: str, times: int | None = None) -> None:
        self.fail(verb, resource, status=403, times=times)

    def fail(self, verb: str, resource: str, status: int = 500, times: int | None = None,
             message: str | None = None) -> None:
        """Answer `status` to `verb` on `resource` (`pods`, `pods/exec`, `pods/log`,
        `networkpolicies`, `namespaces`), `times` times (None: always)."""
        self.rules.append({"verb": verb, "resource": resource, "status": status, "times": times,
                           "message": message})

    def clear_failures(self) -> None:
        self.rules.clear()

    def requested(self, method: str | None = None, path_part: str = "") -> list[dict]:
        return [r for r in self.requests if (method is None or r["method"] == method) and path_part in r["path"]]

    # -- state changes (any thread) -----------------------------------------------------------

    def _changed(self, pod: FakePod, kind: str) -> None:
        with self._lock:
            self._rv += 1
            pod.rv = self._rv
            event = (self._rv, pod.namespace, kind, pod.manifest(), pod.labels)
            self._events.append(event)
            watchers = list(self._watchers)
        if self.loop is not None:
            for q in watchers:
                self.loop.call_soon_threadsafe(q.put_nowait, event)

    def _remove(self, pod: FakePod) -> None:
        with self._lock:
            if self.pods.get((pod.namespace, pod.name)) is pod:
                del self.pods[(pod.namespace, pod.name)]
                self._changed(pod, "DELETED")
            forwards = self._forwards.pop(pod.uid, set())
        if self.loop is not None:  # a pod gone takes its port-forwards with it
            for writer in forwards:
                self.loop.call_soon_threadsafe(writer.close)

    def _replace(self, pod: FakePod) -> None:
        for c in self.controllers:
            if c.namespace == pod.namespace and all(pod.labels.get(k) == v for k, v in c.labels.items()):
                name = f"{pod.name.rsplit('-', 1)[0]}-{uuid.uuid4().hex[:5]}"
                process = c.factory() if c.factory else None
                kept = {f: getattr(pod, f) for f in c.keep}
                new = self.add_pod(pod.namespace, name, pod.labels, process=process, containers=list(pod.containers),
                                   ready=False, grace_s=pod.grace_s, **kept)
                c.made.append(new)

                def ready_later(new=new, delay=c.ready_after_s):
                    time.sleep(delay)
                    with self._lock:
                        if self.pods.get((new.namespace, new.name)) is new:
                            new.ready = True
                            self._changed(new, "MODIFIED")

                threading.Thread(target=ready_later, daemon=True).start()

    def _delete(self, pod: FakePod, grace: int) -> None:
        """Terminate a pod the way the kubelet would; the controller replaces it at once."""
        pod.deletion = _now()
        pod.grace_s = grace
        self._changed(pod, "MODIFIED")
        self._replace(pod)
        proc = pod.process
        if grace == 0 or not _alive(proc):
            if _alive(proc):
                self.signals.append((proc.pid, signal.SIGKILL))
                _kill(proc, signal.SIGKILL)
            self._remove(pod)
            return
        self.signals.append((proc.pid, signal.SIGTERM))
        _kill(proc, signal.SIGTERM)

        def reap():
            deadline = time.monotonic() + grace
            while _alive(proc) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _alive(proc):
                self.signals.append((proc.pid, signal.SIGKILL))
                _kill(proc, signal.SIGKILL)
                while _alive(proc):
                    time.sleep(0.02)
            self._remove(pod)

        threading.Thread(target=reap, daemon=True).start()

    # -- HTTP ---------------------------------------------------------------------------------

    @staticmethod
    def _status(code: int, reason: str, message: str, kind: str = "", name: str = "") -> web.Response:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                "reason": reason, "details": {"name": name, "kind": kind}, "code": code}
        return web.json_response(body, status=code)

    def _rule(self, verb: str, resource: str, namespace: str, name: str = "") -> web.Response | None:
        with self._lock:
            for rule in self.rules:
                if rule["verb"] == verb and rule["resource"] == resource and rule["times"] != 0:
                    if rule["times"] is not None:
                        rule["times"] -= 1
                    status = rule["status"]
                    if status == 403:
                        base, _, sub = resource.partition("/")
                        what = f'{base} "{name}"' if name else base
                        msg = rule["message"] or (
                            f'{what} is forbidden: User "system:serviceaccount:{namespace}:ftlocust" cannot {verb} '
                            f'resource "{base}"' + (f' in subresource "{sub}"' if sub else "") +
                            f' in API group "{"networking.k8s.io" if base == "networkpolicies" else ""}" '
                            f'in the namespace "{namespace}"')
                        return self._status(403, "Forbidden", msg, base, name)
                    reason = {404: "NotFound", 409: "Conflict", 500: "InternalError", 503: "ServiceUnavailable"}.get(
                        status, "Unknown")
                    return self._status(status, reason, rule["message"] or f"fake: {verb} {resource} failed",
                                        resource, name)
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
        query = {k: request.query.getall(k) if len(request.query.getall(k)) > 1 else request.query[k]
                 for k in request.query}
        self.requests.append({"method": request.method, "path": request.path, "query": query, "body": body,
                              "authorization": request.headers.get("Authorization")})
        parts = [p for p in request.path.split("/") if p]
        m = request.method
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) >= 4:
            ns = parts[3]
            if len(parts) == 4 and m == "GET":
                return self._rule("get", "namespaces", ns, ns) or (
                    web.json_response({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
                    if ns in self.namespaces else self._status(404, "NotFound", f'namespaces "{ns}" not found',
                                                               "namespaces", ns))
            if len(parts) >= 5 and parts[4] == "pods":
                if len(parts) == 5 and m == "GET":
                    watching = query.get("watch") in ("true", "1")
                    return self._rule("watch" if watching else "list", "pods", ns) or (
                        await self._watch(request, ns, query) if watching else self._list(ns, query))
                if len(parts) == 6:
                    name = parts[5]
                    if m == "GET":
                        return self._rule("get", "pods", ns, name) or self._get(ns, name)
                    if m == "DELETE":
                        return self._rule("delete", "pods", ns, name) or self._delete_request(ns, name, body, query)
                if len(parts) == 7 and parts[6] == "log" and m == "GET":
                    return self._rule("get", "pods/log", ns, parts[5]) or self._log(ns, parts[5], query)
                if len(parts) == 7 and parts[6] == "exec" and m in ("GET", "POST"):
                    return self._rule("create", "pods/exec", ns, parts[5]) or await self._exec(request, ns, parts[5])
                if len(parts) == 7 and parts[6] == "portforward" and m in ("GET", "POST"):
                    return self._rule("create", "pods/portforward", ns, parts[5]) or \
                        await self._portforward(request, ns, parts[5])
        if parts[:4] == ["apis", "networking.k8s.io", "v1", "namespaces"] and len(parts) >= 6 \
                and parts[5] == "networkpolicies":
            ns = parts[4]
            if len(parts) == 6 and m == "POST":
                return self._rule("create", "networkpolicies", ns) or self._create_policy(ns, body)
            if len(parts) == 6 and m == "GET":
                return self._rule("list", "networkpolicies", ns) or self._list_policies(ns, query)
            if len(parts) == 7:
                name = parts[6]
                if m == "GET":
                    return self._rule("get", "networkpolicies", ns, name) or self._get_policy(ns, name)
                if m == "DELETE":
                    return self._rule("delete", "networkpolicies", ns, name) or self._delete_policy(ns, name)
        return self._status(404, "NotFound", f"the server could not find the requested resource ({m} {request.path})")

    # -- pods ---------------------------------------------------------------------------------

    def _list(self, ns: str, query: dict) -> web.Response:
        with self._lock:
            items = [p.manifest() for (n, _), p in sorted(self.pods.items())
                     if n == ns and _matches(p.labels, query.get("labelSelector"))]
            rv = self._rv
        if "limit" in query:
            items = items[:int(query["limit"])]
        return web.json_response({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": str(rv)},
                                  "items": items})

    async def _watch(self, request: web.Request, ns: str, query: dict) -> web.StreamResponse:
        selector = query.get("labelSelector")
        timeout = float(query.get("timeoutSeconds") or 30)
        q: asyncio.Queue = asyncio.Queue()
        with self._lock:
            since = query.get("resourceVersion")
            if since:
                backlog = [e for e in self._events if e[0] > int(since)]
            else:
                backlog = [(p.rv, p.namespace, "ADDED", p.manifest(), p.labels) for p in self.pods.values()]
            self._watchers.append(q)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        try:
            for e in backlog:
                q.put_nowait(e)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if request.transport is None or request.transport.is_closing():
                    break  # the client went away (a watch it stopped)
                try:
                    _, e_ns, kind, obj, labels = await asyncio.wait_for(q.get(), min(left, 0.2))
                except asyncio.TimeoutError:
                    continue
                if e_ns == ns and _matches(labels, selector):
                    await resp.write((json.dumps({"type": kind, "object": obj}) + "\n").encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            with self._lock:
                self._watchers.remove(q)
        try:
            await resp.write_eof()
        except ConnectionResetError:  # the client shut its socket down (Watch.stop)
            pass
        return resp

    def _pod(self, ns: str, name: str) -> FakePod | None:
        with self._lock:
            return self.pods.get((ns, name))

    def _not_found(self, ns: str, name: str) -> web.Response:
        return self._status(404, "NotFound", f'pods "{name}" not found', "pods", name)

    def _get(self, ns: str, name: str) -> web.Response:
        pod = self._pod(ns, name)
        return web.json_response(pod.manifest()) if pod else self._not_found(ns, name)

    def _delete_request(self, ns: str, name: str, body: Any, query: dict) -> web.Response:
        pod = self._pod(ns, name)
        if pod is None:
            return self._not_found(ns, name)
        body = body if isinstance(body, dict) else {}
        want = (body.get("preconditions") or {}).get("uid")
        if want and want != pod.uid:
            return self._status(409, "Conflict", f'Operation cannot be fulfilled on Pod "{name}": Precondition '
                                f'failed: UID in precondition: {want}, UID in object meta: {pod.uid}', "pods", name)
        grace = body.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
        grace = pod.grace_s if grace is None else int(grace)
        manifest = pod.manifest()
        if pod.deletion is None:
            self._delete(pod, grace)
            manifest = pod.manifest()
        return web.json_response(manifest)

    def _log(self, ns: str, name: str, query: dict) -> web.Response:
        pod = self._pod(ns, name)
        if pod is None:
            return self._not_found(ns, name)
        container = query.get("container") or pod.containers[0]
        if container not in pod.containers:
            return self._status(400, "BadRequest", f"container {container} is not valid for pod {name}")
        previous = query.get("previous") in ("true", "True", "1")
        logs = pod.previous_logs if previous else pod.logs
        if container not in logs and previous:
            return self._status(400, "BadRequest", f'previous terminated container "{container}" in pod "{name}" '
                                f'not found')
        text = logs.get(container, "")
        if isinstance(text, os.PathLike):  # the log a real process writes, as it is now
            try:
                with open(text, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except OSError:
                text = ""
        return web.Response(text=text, content_type="text/plain")

    # -- exec ---------------------------------------------------------------------------------

    def _container_view(self, pod: FakePod) -> dict[int, int]:
        """container pid -> real pid: the backing process is 1, its descendants keep their pids."""
        if not _alive(pod.process):
            return {}
        return {1: pod.process.pid, **{p: p for p in _tree(pod.process.pid)}}

    def _run(self, pod: FakePod, argv: list[str]) -> tuple[int, str, str]:
        if len(argv) == 6 and argv[:4] == append_line_command("x", "/x")[:4]:
            line, path = argv[4], argv[5]
            if path not in pod.files:
                return 2, "", f"sh: 1: cannot create {path}: Permission denied\n"
            with open(pod.files[path], "a") as f:
                f.write(line + "\n")
            return 0, "", ""
        if argv[:2] != ["sh", "-c"] or len(argv) != 3:
            return 127, "", f"exec: {argv[0] if argv else ''!r}: fake API server runs only ftlocust's commands\n"
        script = argv[2]
        view = self._container_view(pod)
        if script == PROCESS_LIST:
            lines = []
            for cpid, real in sorted(view.items()):
                info, start = _comm_argv0(real), start_time(real)
                if info and start is not None:
                    lines.append(f"{cpid}\t{start}\t{info[0]}\t{info[1]}\n")
            return 0, "".join(lines), ""
        m = _KILL.fullmatch(script)
        if m:
            start, name, cpid = m.group(1), m.group(2), int(m.group(3))
            sig = getattr(signal, "SIG" + name, None)
            if sig is None:
                return 1, "", f"sh: kill: {name}: invalid signal specification\n"
            if start is not None:  # the identity check: exactly what ftlocust sends, then as sh would run it
                if script != kill_command(cpid, name, int(start))[2]:
                    return 127, "", "sh: fake API server runs only ftlocust's commands\n"
                if cpid not in view or start_time(view[cpid]) != int(start):
                    return NOT_THAT_PROCESS, "", ""
            if cpid not in view:
                return 1, "", f"sh: kill: ({cpid}) - No such process\n"
            if cpid == 1 and sig in (signal.SIGKILL, signal.SIGSTOP):
                return 0, "", ""  # the kernel ignores these to a namespace's init from inside it
            self.signals.append((view[cpid], sig))
            os.kill(view[cpid], sig)
            return 0, "", ""
        return 127, "", f"sh: 1: {script.split()[0] if script.split() else ''}: not found\n"

    async def _exec(self, request: web.Request, ns: str, name: str) -> web.StreamResponse:
        pod = self._pod(ns, name)
        if pod is None:
            return self._not_found(ns, name)
        container = request.query.get("container") or pod.containers[0]
        if container not in pod.containers:
            return self._status(400, "BadRequest", f"container {container} is not valid for pod {name}")
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        code, out, err = await asyncio.get_running_loop().run_in_executor(
            None, self._run, pod, request.query.getall("command", []))
        await ws.send_bytes(b"\x01")  # the channels opening, as the API server does
        await ws.send_bytes(b"\x02")
        if out:
            await ws.send_bytes(b"\x01" + out.encode())
        if err:
            await ws.send_bytes(b"\x02" + err.encode())
        status = {"metadata": {}, "status": "Success"} if code == 0 else {
            "metadata": {}, "status": "Failure", "message": f"command terminated with non-zero exit code: {code}",
            "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
        await ws.send_bytes(b"\x03" + json.dumps(status).encode())
        await ws.close()
        return ws

    # -- port-forward -------------------------------------------------------------------------

    async def _portforward(self, request: web.Request, ns: str, name: str) -> web.StreamResponse:
        pod = self._pod(ns, name)
        if pod is None:
            return self._not_found(ns, name)
        try:
            ports = [int(p) for p in ",".join(request.query.getall("ports", [])).split(",") if p.strip()]
        except ValueError:
            return self._status(400, "BadRequest", "invalid port in ports")
        if not ports:
            return self._status(400, "BadRequest", "at least one port must be specified")
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        for i, port in enumerate(ports):  # each channel opens with its port, as the API server does
            await ws.send_bytes(bytes([2 * i]) + port.to_bytes(2, "little"))
            await ws.send_bytes(bytes([2 * i + 1]) + port.to_bytes(2, "little"))
        writers: dict[int, asyncio.StreamWriter] = {}
        pumps = []

        async def down(i: int, reader: asyncio.StreamReader) -> None:
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    await ws.send_bytes(bytes([2 * i]) + data)
            except (ConnectionError, RuntimeError):
                pass

        for i, port in enumerate(ports):
            local = pod.ports.get(port)
            try:
                if local is None:
                    raise ConnectionRefusedError(f"dial tcp4 127.0.0.1:{port}: connect: connection refused")
                reader, writers[i] = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", local), 5)
            except (OSError, asyncio.TimeoutError) as e:
                await ws.send_bytes(bytes([2 * i + 1]) + (
                    f"error forwarding port {port} to pod {name}, uid {pod.uid}: failed to connect to "
                    f"localhost:{port} inside namespace {ns}: {e}").encode())
                continue
            pumps.append(asyncio.ensure_future(down(i, reader)))
            with self._lock:
                self._forwards.setdefault(pod.uid, set()).add(writers[i])
        if not pumps:
            await ws.close()
            return ws
        backend_done = asyncio.ensure_future(asyncio.gather(*pumps))
        try:
            while not backend_done.done():
                receiving = asyncio.ensure_future(ws.receive())
                await asyncio.wait([receiving, backend_done], return_when=asyncio.FIRST_COMPLETED)
                if not receiving.done():
                    receiving.cancel()
                    break  # the backend ended: close the WebSocket
                msg = receiving.result()
                if msg.type != web.WSMsgType.BINARY:
                    break  # close, or an error: the client went away
                if msg.data and msg.data[0] % 2 == 0 and msg.data[0] // 2 in writers:
                    writers[msg.data[0] // 2].write(msg.data[1:])
                    await writers[msg.data[0] // 2].drain()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            for w in writers.values():
                w.close()
                with self._lock:
                    self._forwards.get(pod.uid, set()).discard(w)
            if not backend_done.done():
                await asyncio.wait([backend_done], timeout=2)
            await ws.close()
        return ws

    # -- network policies ---------------------------------------------------------------------

    def _create_policy(self, ns: str, body: Any) -> web.Response:
        name = ((body or {}).get("metadata") or {}).get("name")
        if not name:
            return self._status(422, "Invalid", "NetworkPolicy.networking.k8s.io is invalid: metadata.name: Required")
        with self._lock:
            if (ns, name) in self.policies:
                return self._status(409, "AlreadyExists", f'networkpolicies.networking.k8s.io "{name}" already exists',
                                    "networkpolicies", name)
            self._rv += 1
            stored = json.loads(json.dumps(body))
            stored["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion=str(self._rv),
                                      creationTimestamp=_now())
            self.policies[(ns, name)] = stored
        return web.json_response(stored, status=201)

    def _list_policies(self, ns: str, query: dict) -> web.Response:
        with self._lock:
            items = [p for (n, _), p in sorted(self.policies.items())
                     if n == ns and _matches(p["metadata"].get("labels") or {}, query.get("labelSelector"))]
        return web.json_response({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList",
                                  "metadata": {"resourceVersion": str(self._rv)}, "items": items})

    def _get_policy(self, ns: str, name: str) -> web.Response:
        p = self.policies.get((ns, name))
        return web.json_response(p) if p else self._status(
            404, "NotFound", f'networkpolicies.networking.k8s.io "{name}" not found', "networkpolicies", name)

    def _delete_policy(self, ns: str, name: str) -> web.Response:
        with self._lock:
            p = self.policies.pop((ns, name), None)
        if p is None:
            return self._get_policy(ns, name)
        return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                  "details": {"name": name, "group": "networking.k8s.io", "kind": "networkpolicies",
                                              "uid": p["metadata"]["uid"]}})
