"""A small stand-in for the seed's fault-injection API (its `api_service/main.py` @7856cb2) for
ftlocust's tests: the routes, request models and answers of that FastAPI, an in-memory fault
tracker instead of agents, every call recorded, and 404/500/slow answers on demand.

    with FaultService() as svc:          # a real HTTP server on 127.0.0.1, in a thread
        svc.url                          # http://127.0.0.1:<port>
        svc.plan("POST", r"/gpu/inject/xid-79$", status=500)        # the next call there fails
        svc.plan("POST", r"/gpu/inject", delay_s=2)                 # slow (after the record is made)
        svc.plan("POST", r"/gpu/inject", fault_status="failed")     # a FaultResponse with status failed
        svc.calls_to("POST", "/api/v1/faults/<id>/recover")         # what it received

    python -m tests.support.fault_service [--port 8080]             # by hand: prints PORT <n>

Routes: GET /health, GET /api/v1/faults[?active_only=], GET /api/v1/faults/{id},
GET /api/v1/faults/gpu/xid-types, POST /api/v1/faults/gpu/inject, POST
/api/v1/faults/gpu/inject/xid-{43,48,74,79,94,95,119,120}, POST /api/v1/faults/network/inject,
POST /api/v1/faults/{id}/recover, POST /api/v1/faults/network/cleanup. Bodies are checked as
pydantic would (422 with a `detail` list: an enum in upper case, a missing field). The tracker
keeps the service's conventions: the record is made `pending` before the (here: instant) agent
call, `type` gpu | gpu_xid_<code> | network, `target` node | node/gpu<id> | "src -> tgt",
`fault_id = <type>-<8 hex>`; recovered faults stay listed with status recovered.

`health` (the /health body), `xid_types` (None: that route answers 404) and `require_headers`
(every request must carry them, else 401) are plain attributes.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GPU_FAULT_TYPES = ("xid_error", "throttle", "memory_pressure", "overheat", "compute_overload")
SEVERITIES = ("low", "medium", "high")
PARTITION_TYPES = ("frontend_worker", "worker_nats", "worker_worker", "custom")
NETWORK_MODES = ("networkpolicy", "chaos_mesh")
XID_NAMES = {43: "Kernel Assert", 48: "Double Bit ECC Error", 74: "NVLink Error", 79: "GPU Fell Off Bus",
             94: "Contained ECC Error", 95: "Uncontained Error", 119: "GSP Error", 120: "GSP RM Error"}
ACTIVE = ("pending", "injected", "active")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass
class Call:
    t: float  # time.time() when it arrived
    method: str
    path: str
    query: dict
    headers: dict
    body: Any
    status: int = 0  # what it was answered


@dataclass
class Plan:
    method: str
    pattern: re.Pattern
    status: int | None = None  # answer this instead (an inject route marks its record failed)
    body: Any = None
    delay_s: float = 0.0
    fault_status: str | None = None  # an inject route: the FaultResponse's status (and the record's)
    times: int | None = 1  # None: every matching call
    used: int = 0


class _Invalid(Exception):
    def __init__(self, loc: str, msg: str):
        self.detail = [{"loc": ["body", loc], "msg": msg, "type": "value_error"}]


def _field(body: dict, name: str, kind: type | tuple, required: bool = True, default: Any = None,
           choices: tuple | None = None) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise _Invalid(name, "Field required")
        return default
    value = body[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _Invalid(name, f"Input should be a valid {getattr(kind, '__name__', kind)}")
    if choices is not None and value not in choices:
        raise _Invalid(name, "Input should be " + ", ".join(repr(c) for c in choices))
    return value


@dataclass
class FaultService:
    host: str = "127.0.0.1"
    port: int = 0
    health: dict = field(default_factory=lambda: {"status": "healthy", "service": "fault-injection-api"})
    xid_types: list | None = field(default_factory=lambda: [
        {"code": c, "name": n, "severity": "high", "description": n} for c, n in XID_NAMES.items()])
    require_headers: dict = field(default_factory=dict)

    def __post_init__(self):
        self.faults: dict[str, dict] = {}
        self.calls: list[Call] = []
        self.plans: list[Plan] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- control ----------------------------------------------------------------------------------

    def start(self) -> "FaultService":
        service = self

        class Handler(_Handler):
            svc = service

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FaultService":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def plan(self, method: str, path_regex: str, *, status: int | None = None, body: Any = None,
             delay_s: float = 0.0, fault_status: str | None = None, times: int | None = 1) -> None:
        """The next `times` calls whose path matches `path_regex` (re.search) are answered so."""
        with self.lock:
            self.plans.append(Plan(method, re.compile(path_regex), status, body, delay_s, fault_status, times))

    def calls_to(self, method: str, path: str | None = None, prefix: str | None = None) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == method and (path is None or c.path == path)
                    and (prefix is None or c.path.startswith(prefix))]

    def injects(self) -> list[Call]:
        return [c for c in self.calls_to("POST", prefix="/api/v1/faults/") if "/inject" in c.path]

    def recovers(self, fault_id: str | None = None) -> list[Call]:
        return [c for c in self.calls_to("POST", prefix="/api/v1/faults/") if c.path.endswith("/recover")
                and (fault_id is None or c.path == f"/api/v1/faults/{fault_id}/recover")]

    def active(self) -> list[dict]:
        with self.lock:
            return [dict(f) for f in self.faults.values() if f["status"] in ACTIVE]

    def add_fault(self, fault_type: str, target: str, status: str = "injected") -> str:
        """A fault someone else made (not through a recorded call)."""
        fault_id = self._create(fault_type, target, {})
        self._set(fault_id, status)
        return fault_id

    # -- the tracker --------------------------------------------------------------------------------

    def _create(self, fault_type: str, target: str, details: dict) -> str:
        with self.lock:
            fault_id = f"{fault_type}-{uuid.uuid4().hex[:8]}"
            self.faults[fault_id] = {"id": fault_id, "type": fault_type, "target": target, "status": "pending",
                                     "created_at": _now(), "injected_at": None, "recovered_at": None,
                                     "details": details}
            return fault_id

    def _set(self, fault_id: str, status: str, only_if: tuple = ()) -> None:
        with self.lock:
            f = self.faults[fault_id]
            if only_if and f["status"] not in only_if:
                return
            f["status"] = status
            if status == "injected":
                f["injected_at"] = _now()
            elif status == "recovered":
                f["recovered_at"] = _now()

    def _take_plan(self, method: str, path: str) -> Plan | None:
        with self.lock:
            for plan in self.plans:
                if plan.method == method and plan.pattern.search(path) and (plan.times is None or plan.used < plan.times):
                    plan.used += 1
                    return plan
        return None

    # -- the routes -----------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, body: Any) -> tuple[int, Any]:
        plan = self._take_plan(method, path)
        inject = method == "POST" and re.fullmatch(r"/api/v1/faults/(gpu/inject(/xid-\d+)?|network/inject)", path)
        if plan is not None and not inject:
            time.sleep(plan.delay_s)
            if plan.status is not None:
                return plan.status, plan.body if plan.body is not None else {"detail": "planned failure"}
        try:
            if method == "GET":
                return self._get(path, query)
            if method == "POST":
                return self._post(path, query, body, plan)
        except _Invalid as e:
            return 422, {"detail": e.detail}
        return 405, {"detail": "Method Not Allowed"}

    def _get(self, path: str, query: dict) -> tuple[int, Any]:
        if path == "/health":
            return 200, {**self.health, "timestamp": _now()}
        if path == "/api/v1/faults":
            active_only = query.get("active_only", ["false"])[0].lower() == "true"
            faults = self.active() if active_only else [dict(f) for f in self.faults.values()]
            return 200, {"faults": faults, "count": len(faults)}
        if path == "/api/v1/faults/gpu/xid-types":
            return (404, {"detail": "Not Found"}) if self.xid_types is None else (200, {"xid_types": self.xid_types})
        m = re.fullmatch(r"/api/v1/faults/([^/]+)", path)
        if m:
            with self.lock:
                f = self.faults.get(urllib.parse.unquote(m.group(1)))
                return (200, dict(f)) if f else (404, {"detail": f"Fault {m.group(1)} not found"})
        return 404, {"detail": "Not Found"}

    def _post(self, path: str, query: dict, body: Any, plan: Plan | None) -> tuple[int, Any]:
        m = re.fullmatch(r"/api/v1/faults/gpu/inject/xid-(\d+)", path)
        if m and int(m.group(1)) in XID_NAMES:
            code = int(m.group(1))
            b = self._body(body)
            node = _field(b, "node_name", str)
            _field(b, "xid_type", int)
            gpu_id = _field(b, "gpu_id", int, required=False, default=0)
            duration = _field(b, "duration", int, required=False)
            return self._inject(f"gpu_xid_{code}", f"{node}/gpu{gpu_id}", f"gpu_xid_{code}",
                                {"xid_code": code, "xid_name": XID_NAMES[code], "gpu_id": gpu_id, "duration": duration},
                                f"XID {code} injected", plan)
        if path == "/api/v1/faults/gpu/inject":
            b = self._body(body)
            node = _field(b, "node_name", str)
            fault_type = _field(b, "fault_type", str, choices=GPU_FAULT_TYPES)
            severity = _field(b, "severity", str, required=False, default="medium", choices=SEVERITIES)
            duration = _field(b, "duration", int, required=False)
            parameters = _field(b, "parameters", dict, required=False, default={})
            return self._inject("gpu", node, f"gpu_{fault_type}", {"fault_type": fault_type, "duration": duration,
                                                                    "severity": severity, "parameters": parameters},
                                f"GPU {fault_type} injected", plan)
        if path == "/api/v1/faults/network/inject":
            b = self._body(body)
            partition = _field(b, "partition_type", str, choices=PARTITION_TYPES)
            source, target = _field(b, "source", str), _field(b, "target", str)
            mode = _field(b, "mode", str, required=False, default="networkpolicy", choices=NETWORK_MODES)
            duration = _field(b, "duration", int, required=False)
            parameters = _field(b, "parameters", dict, required=False, default={})
            return self._inject("network", f"{source} -> {target}", f"network_{partition}",
                                {"partition_type": partition, "mode": mode, "duration": duration,
                                 "parameters": parameters}, f"NetworkPolicy for {partition} created", plan)
        if path == "/api/v1/faults/network/cleanup":
            return 200, {"status": "success", "namespace": query.get("namespace", ["dynamo"])[0], "deleted_count": 0}
        m = re.fullmatch(r"/api/v1/faults/([^/]+)/recover", path)
        if m:
            fault_id = urllib.parse.unquote(m.group(1))
            with self.lock:
                known = fault_id in self.faults
            if not known:
                return 404, {"detail": f"Fault {fault_id} not found"}
            self._set(fault_id, "recovering")
            self._set(fault_id, "recovered")
            return 200, {"fault_id": fault_id, "status": "recovered", "recovered_at": _now(), "message": "recovered"}
        return 404, {"detail": "Not Found"}

    @staticmethod
    def _body(body: Any) -> dict:
        if not isinstance(body, dict):
            raise _Invalid("body", "Input should be a valid dictionary")
        return body

    def _inject(self, record_type: str, target: str, response_type: str, details: dict, message: str,
                plan: Plan | None) -> tuple[int, Any]:
        fault_id = self._create(record_type, target, details)  # recorded before the agent acts, as there
        if plan is not None:
            time.sleep(plan.delay_s)
            if plan.status is not None:
                self._set(fault_id, "failed")
                return plan.status, plan.body if plan.body is not None else {"detail": f"Failed to inject: planned ({fault_id})"}
        status = plan.fault_status if plan is not None and plan.fault_status else "injected"
        self._set(fault_id, status, only_if=("pending",))  # a recovery that came first stays
        return 200, {"fault_id": fault_id, "status": status, "fault_type": response_type, "target": target,
                     "injected_at": _now(), "message": message}


class _Handler(BaseHTTPRequestHandler):
    svc: FaultService
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _serve(self, method: str) -> None:
        parts = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        call = Call(time.time(), method, parts.path, urllib.parse.parse_qs(parts.query), dict(self.headers.items()), body)
        with self.svc.lock:
            self.svc.calls.append(call)
        missing = [k for k, v in self.svc.require_headers.items() if self.headers.get(k) != v]
        status, answer = (401, {"detail": "Not authenticated"}) if missing else self.svc.handle(
            method, parts.path, call.query, body)
        call.status = status
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:  # the client gave up (a timeout test)
            pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.support.fault_service")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    svc = FaultService(port=args.port).start()
    print(f"PORT {svc.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        svc.stop()


if __name__ == "__main__":
    main()
