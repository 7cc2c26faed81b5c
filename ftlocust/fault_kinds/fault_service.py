"""`fault-service`: a fault injected through an existing deployment of the seed's fault-injection
API (`tests/fault_tolerance/hardware/fault_injection_service`, a FastAPI on :8080), and always
recovered through it.

    - {kind: fault-service, target: gpu-node-1, url: "http://127.0.0.1:8080",
       xid: {code: 79, node_name: gpu-node-1, gpu_id: 0}, duration_s: 30, trigger: {after_seconds: 20}}
    - {kind: fault-service, target: worker-1, url: "http://fi-api:8080", headers: {Authorization: "Bearer ${FI_TOKEN}"},
       gpu: {fault_type: THROTTLE, node_name: gpu-node-1, severity: HIGH}, trigger: {after_requests: 50}}
    - {kind: fault-service, target: worker-1, url: "http://fi-api:8080",
       network: {partition_type: FRONTEND_WORKER, source: dynamo, target: dynamo,
                 parameters: {target_pod_prefix: vllm-worker}}, duration_s: 10, trigger: {after_seconds: 15}}

`target` is the name on the timeline (the service decides what is hit). Fields:

- `url`: the API's base URL (http or https; a path prefix is kept).
- exactly one of
  - `xid: {code, node_name, gpu_id (0), duration}` → `POST /api/v1/faults/gpu/inject/xid-<code>`
    (code one of 43, 48, 74, 79, 94, 95, 119, 120; and one the service lists at
    `GET /api/v1/faults/gpu/xid-types` when it answers that route);
  - `gpu: {fault_type, node_name, severity (medium), duration, parameters}` →
    `POST /api/v1/faults/gpu/inject`;
  - `network: {partition_type, source, target, mode (networkpolicy), parameters, duration}` →
    `POST /api/v1/faults/network/inject`.
  Enum values are sent as the API spells them (lower case); the seed doc's upper-case ones
  (XID_ERROR, FRONTEND_WORKER, HIGH) are accepted. `duration` is the service's own field (sent
  as given); `duration_s` is ftlocust's (recover this long after injection).
- `headers`: sent with every request (e.g. `Authorization`); `${VAR}` in a value is taken from
  the environment (by the driver at preflight, by the guardian when it runs), so a secret from
  the environment is never written into a scenario, a dry run or the guardian's journal.
- `timeout_s`: per request (default 10).

Preflight: `GET /health` must answer 200 `{status: healthy}` and `GET /api/v1/faults` must
list; the XID code is checked against the service's list. Injection is one POST (and the list
read just before it, for the guardian); the answer must be a FaultResponse with a `fault_id`
and status injected/active, anything else fails the injection with the service's answer.
Recovery is `POST /api/v1/faults/{id}/recover`, then the service's own record
(`GET /api/v1/faults/{id}`) must say `recovered`; a 404 means the service no longer knows the
fault (said, not an error); any other answer fails the rollback (the guardian keeps its hold).
The guardian's action (`fault-service-recover`) does the same with urllib, in its process.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from ftlocust import guardian
from ftlocust.errors import ConfigError
from ftlocust.faults import Fault, FaultContext, register
from ftlocust.phases import FaultEvent
from ftlocust.validation import at, did_you_mean, error, exactly_one, mapping, number, seconds, string, unknown_field

log = logging.getLogger("ftlocust.faults")

FIELDS = ("url", "xid", "gpu", "network", "headers", "timeout_s")
XID_FIELDS = ("code", "node_name", "gpu_id", "duration")
GPU_FIELDS = ("fault_type", "node_name", "severity", "duration", "parameters")
NETWORK_FIELDS = ("partition_type", "source", "target", "mode", "parameters", "duration")
# The seed doc's curl examples name fields the API (@7856cb2) does not take: what to write instead.
SEED_NAMES = {"target_pod": "the API's field is node_name (the seed doc shows target_pod)",
              "duration_seconds": "the API's field is duration (the seed doc shows duration_seconds)",
              "xid_type": "give the XID as code (sent in the route, xid-<code>, and as xid_type)"}

XID_CODES = (43, 48, 74, 79, 94, 95, 119, 120)  # the API's routes
GPU_FAULT_TYPES = ("xid_error", "throttle", "memory_pressure", "overheat", "compute_overload")
SEVERITIES = ("low", "medium", "high")
PARTITION_TYPES = ("frontend_worker", "worker_nats", "worker_worker", "custom")
NETWORK_MODES = ("networkpolicy", "chaos_mesh")
IN_EFFECT = ("injected", "active")  # FaultResponse statuses of a fault that happened

ACTION_KIND = "fault-service-recover"
DEFAULT_TIMEOUT_S = 10.0
# The guardian, holding only the sweep (the driver died during the inject POST), looks again for
# this long: the request may still be on its way into the service.
GUARDIAN_SETTLE_S = 1.0

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


# --- the API, over urllib (driver and guardian) ------------------------------------------------

class ServiceError(RuntimeError):
    """The service could not be reached, or answered otherwise than a recovery needs."""


@dataclass
class Answer:
    status: int
    body: Any  # decoded JSON, or the text

    def summary(self, limit: int = 240) -> str:
        """The answer in one line: FastAPI's `detail`, else the body."""
        body = self.body
        if isinstance(body, dict) and "detail" in body:
            body = body["detail"]
        text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
        text = " ".join(text.split()) or "(empty body)"
        return text if len(text) <= limit else text[:limit - 1] + "…"


class ServiceClient:
    def __init__(self, url: str, headers: dict[str, str], timeout_s: float):
        self.url, self.headers, self.timeout_s = url, headers, timeout_s

    def call(self, method: str, path: str, body: Any = None) -> Answer:
        """One request; any HTTP answer is returned, no answer at all raises ServiceError."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", **self.headers}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            try:
                status, raw = e.code, e.read()
            except (OSError, http.client.HTTPException):
                status, raw = e.code, b""
        except TimeoutError:
            raise ServiceError(f"{method} {self.url}{path}: no answer within {self.timeout_s:g} s") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            raise ServiceError(f"{method} {self.url}{path}: {reason}") from None
        try:
            decoded: Any = json.loads(raw) if raw else None
        except ValueError:
            decoded = raw.decode("utf-8", "replace")
        return Answer(status, decoded)

    def active_faults(self) -> list[dict]:
        answer = self.call("GET", "/api/v1/faults?active_only=true")
        faults = answer.body.get("faults") if answer.status == 200 and isinstance(answer.body, dict) else None
        if not isinstance(faults, list):
            raise ServiceError(f"GET {self.url}/api/v1/faults?active_only=true answered {answer.status}: "
                               f"{answer.summary()} (expected {{faults: [...], count}})")
        return [f for f in faults if isinstance(f, dict)]


RECOVERED, ALREADY_RECOVERED, GONE = "recovered", "already recovered", "gone"


@dataclass
class Recovery:
    outcome: str  # RECOVERED (by this call), ALREADY_RECOVERED, GONE (the service does not know it)
    what: str


def _fault_path(fault_id: str) -> str:
    return f"/api/v1/faults/{urllib.parse.quote(fault_id, safe='')}"


def recover_fault(client: ServiceClient, fault_id: str) -> Recovery:
    """Recover one fault by id, idempotently: its record is read first (the driver may have
    recovered it already), and after the POST the record must say `recovered`."""
    path = _fault_path(fault_id)
    record = client.call("GET", path)
    if record.status == 404:
        return Recovery(GONE, f"fault {fault_id} was already gone from the service (404)")
    if record.status == 200 and isinstance(record.body, dict) and record.body.get("status") == "recovered":
        return Recovery(ALREADY_RECOVERED, f"fault {fault_id} was already recovered "
                                           f"(the service's record: recovered at {record.body.get('recovered_at')})")
    answer = client.call("POST", path + "/recover")
    if answer.status == 404:
        return Recovery(GONE, f"fault {fault_id} was already gone from the service (404 on recover)")
    if answer.status != 200:
        raise ServiceError(f"POST {client.url}{path}/recover answered {answer.status}: {answer.summary()}")
    record = client.call("GET", path)
    status = record.body.get("status") if record.status == 200 and isinstance(record.body, dict) else None
    if status != "recovered":
        raise ServiceError(f"POST {client.url}{path}/recover answered 200, but GET {path} answered {record.status} "
                           f"with status {status!r} (expected recovered): {record.summary()}")
    return Recovery(RECOVERED, f"recovered {fault_id} through the fault-injection API (its record: status "
                               f"recovered at {record.body.get('recovered_at')})")


def sweep(client: ServiceClient, record_type: str, record_target: str, exclude: list[str],
          settle_s: float = 0.0) -> list[str]:
    """Recover every active fault of this type and target that is not in `exclude` (the ones
    there before our POST): the fault our POST made, when its id never reached us."""
    deadline = time.monotonic() + settle_s
    while True:
        found = [f for f in client.active_faults() if f.get("type") == record_type
                 and f.get("target") == record_target and f.get("id") not in exclude]
        if found or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    done = [recover_fault(client, str(f["id"])) for f in found]
    return [r.what for r in done if r.outcome == RECOVERED]


def resolve_headers(templates: dict[str, str], where: str, raises: type[Exception] = ConfigError) -> dict[str, str]:
    """`${VAR}` in header values, from this process's environment."""
    out = {}
    for name, value in templates.items():
        for var in _ENV_REF.findall(value):
            if var not in os.environ:
                raise raises(f"{at(where, name)}: expected the environment variable {var} to be set "
                             f"(the value uses ${{{var}}})")
        out[name] = _ENV_REF.sub(lambda m: os.environ[m.group(1)], value)
        if "\r" in out[name] or "\n" in out[name]:
            raise raises(f"{at(where, name)}: expected a one-line header value (a line break came from the environment)")
    return out


@guardian.action(ACTION_KIND)
def _guardian_recover(a: dict) -> str | None:
    client = ServiceClient(a["url"], resolve_headers(a.get("headers") or {}, "headers", RuntimeError),
                           float(a["timeout_s"]))
    if a.get("fault_id"):
        result = recover_fault(client, a["fault_id"])
        return result.what if result.outcome == RECOVERED else None
    done = sweep(client, a["match"]["type"], a["match"]["target"], list(a.get("exclude") or []), GUARDIAN_SETTLE_S)
    return "; ".join(done) or None


# --- the fields ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Injection:
    """One inject request, and how the service records the fault it makes (its tracker's
    `type` and `target`, @7856cb2), which is what the guardian's sweep looks for."""

    route: str
    body: dict
    record_type: str
    record_target: str
    what: str
    xid_code: int | None = None


def service_url(value: Any, where: str) -> str:
    expected = "an http(s) URL of the fault-injection API, like http://127.0.0.1:8080"
    if not isinstance(value, str) or not value:
        raise error(where, expected, value)
    parts = urllib.parse.urlsplit(value)
    try:
        parts.port  # noqa: B018  raises on a bad port
    except ValueError:
        raise error(where, expected, value, " (bad port)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise error(where, expected, value)
    return value.rstrip("/")


def _fields(data: Any, where: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> dict:
    if isinstance(data, dict):
        for key, hint in SEED_NAMES.items():
            if key in data and key not in allowed:
                raise unknown_field(where, key, allowed, hint=f"; {hint}")
    return mapping(data, where, allowed, required)


def _enum(value: Any, where: str, choices: tuple[str, ...]) -> str:
    """A value of one of the API's enums, as it spells them (lower case); upper case accepted."""
    if isinstance(value, str) and value.lower() in choices:
        return value.lower()
    raise error(where, "one of " + ", ".join(choices), value, did_you_mean(str(value).lower(), choices))


def _duration(data: dict, where: str) -> dict:
    if data.get("duration") is None:
        return {}
    return {"duration": int(number(data["duration"], at(where, "duration"), integer=True, minimum=1, unit="seconds"))}


def _parameters(data: dict, where: str) -> dict:
    params = mapping(data.get("parameters"), at(where, "parameters"))
    if any(not isinstance(k, str) for k in params):
        raise error(at(where, "parameters"), "a mapping with string keys", params)
    return params


def parse_xid(data: Any, where: str) -> Injection:
    d = _fields(data, where, XID_FIELDS, ("code", "node_name"))
    code = int(number(d["code"], at(where, "code"), integer=True))
    if code not in XID_CODES:
        raise error(at(where, "code"), "one of " + ", ".join(map(str, XID_CODES)) + " (the API's XID routes)", d["code"])
    node = string(d["node_name"], at(where, "node_name"))
    gpu_id = int(number(d.get("gpu_id", 0), at(where, "gpu_id"), integer=True, minimum=0))
    body = {"node_name": node, "xid_type": code, "gpu_id": gpu_id, **_duration(d, where)}
    return Injection(f"/api/v1/faults/gpu/inject/xid-{code}", body, f"gpu_xid_{code}", f"{node}/gpu{gpu_id}",
                     f"XID {code} on {node}/gpu{gpu_id}", xid_code=code)


def parse_gpu(data: Any, where: str) -> Injection:
    d = _fields(data, where, GPU_FIELDS, ("fault_type", "node_name"))
    fault_type = _enum(d["fault_type"], at(where, "fault_type"), GPU_FAULT_TYPES)
    node = string(d["node_name"], at(where, "node_name"))
    severity = _enum(d.get("severity", "medium"), at(where, "severity"), SEVERITIES)
    body = {"node_name": node, "fault_type": fault_type, "severity": severity, "parameters": _parameters(d, where),
            **_duration(d, where)}
    return Injection("/api/v1/faults/gpu/inject", body, "gpu", node, f"GPU {fault_type} ({severity}) on {node}")


def parse_network(data: Any, where: str) -> Injection:
    d = _fields(data, where, NETWORK_FIELDS, ("partition_type", "source", "target"))
    partition = _enum(d["partition_type"], at(where, "partition_type"), PARTITION_TYPES)
    source = string(d["source"], at(where, "source"))
    target = string(d["target"], at(where, "target"))
    mode = _enum(d.get("mode", "networkpolicy"), at(where, "mode"), NETWORK_MODES)
    body = {"partition_type": partition, "source": source, "target": target, "mode": mode,
            "parameters": _parameters(d, where), **_duration(d, where)}
    return Injection("/api/v1/faults/network/inject", body, "network", f"{source} -> {target}",
                     f"network {partition} ({mode}) {source} -> {target}")


def header_templates(value: Any, where: str) -> dict[str, str]:
    headers = mapping(value, where)
    for name, text in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise error(where, "HTTP header names (letters, digits, -)", name)
        if not isinstance(text, str) or "\r" in text or "\n" in text:
            # the value is not shown: it may be a secret
            raise error(at(where, name), "a one-line string (its value may use ${VAR} from the environment)")
    return headers


def _listed_codes(body: Any) -> set[int] | None:
    """The codes of GET /api/v1/faults/gpu/xid-types (`{xid_types: [{code, ...}]}`, or a bare list)."""
    items = body.get("xid_types") if isinstance(body, dict) else body
    if not isinstance(items, list):
        return None
    codes = {item.get("code") if isinstance(item, dict) else item for item in items}
    return {c for c in codes if isinstance(c, int) and not isinstance(c, bool)} or None


# --- the kind --------------------------------------------------------------------------------------

@register
class FaultServiceFault(Fault):
    kind = "fault-service"
    reversible = True

    def validate(self) -> None:
        params = mapping(self.spec.params, self.where, FIELDS, required=("url",))
        self.url = service_url(params["url"], self.field("url"))
        which = exactly_one(params, self.where, ("xid", "gpu", "network"))
        parse = {"xid": parse_xid, "gpu": parse_gpu, "network": parse_network}[which]
        self.injection = parse(params[which], self.field(which))
        self.headers = header_templates(params.get("headers"), self.field("headers"))
        self.timeout_s = seconds(params.get("timeout_s", DEFAULT_TIMEOUT_S), self.field("timeout_s"), positive=True)
        self.client: ServiceClient | None = None
        self.fault_id: str | None = None
        self.response: dict = {}  # the service's FaultResponse
        self._attempted = False  # the inject POST was (perhaps) sent
        self._existing: list[str] = []  # active faults of this type and target before our POST
        self._lifted = False

    # -- preflight --------------------------------------------------------------------------------

    def preflight(self, ctx: FaultContext) -> None:
        self.client = ServiceClient(self.url, resolve_headers(self.headers, self.field("headers")), self.timeout_s)
        where = self.field("url")
        try:
            health = self.client.call("GET", "/health")
        except ServiceError as e:
            raise ConfigError(f"{where}: the fault-injection API is unreachable ({e})") from None
        body = health.body if isinstance(health.body, dict) else {}
        if health.status != 200 or "status" not in body or body.get("service", "fault-injection-api") != "fault-injection-api":
            auth = " (check headers)" if health.status in (401, 403) else ""
            raise ConfigError(f"{where}: {self.url} is not the fault-injection API (GET /health answered "
                              f"{health.status}: {health.summary()}){auth}")
        if body["status"] != "healthy":
            raise ConfigError(f"{where}: the fault-injection API at {self.url} is not healthy "
                              f"(GET /health: status {body['status']!r})")
        try:
            self.client.active_faults()
        except ServiceError as e:
            raise ConfigError(f"{where}: {self.url} is not the fault-injection API ({e})") from None
        if self.injection.xid_code is not None:
            self._check_listed(self.injection.xid_code)

    def _check_listed(self, code: int) -> None:
        try:
            answer = self.client.call("GET", "/api/v1/faults/gpu/xid-types")
        except ServiceError as e:
            raise ConfigError(f"{self.field('url')}: the fault-injection API is unreachable ({e})") from None
        codes = _listed_codes(answer.body) if answer.status == 200 else None
        if codes is None:  # an API without that route: the route itself is the check
            log.info("%s: the service lists no XID types (GET /api/v1/faults/gpu/xid-types answered %d)",
                     self.name, answer.status)
            return
        if code not in codes:
            raise error(self.field("xid.code"), "one of the XID codes the service lists ("
                        + ", ".join(map(str, sorted(codes))) + ")", code)

    def describe(self) -> str:
        headers = f" with headers {', '.join(self.headers)} (values not shown)" if self.headers else ""
        end = f"after {self.spec.duration_s:g} s" if self.spec.duration_s else "at the end of the run"
        return (f"{self.injection.what}: POST {self.url}{self.injection.route} "
                f"{json.dumps(self.injection.body, separators=(', ', ': '))}{headers}, {self.spec.trigger.describe()}; "
                f"recovered with POST {self.url}/api/v1/faults/<fault_id>/recover {end}")

    # -- the verbs ----------------------------------------------------------------------------------

    def _action(self, **fields) -> dict:
        return {"kind": ACTION_KIND, "module": __name__, "url": self.url, "headers": self.headers,
                "timeout_s": self.timeout_s, "label": f"{self.name} ({self.injection.what})", **fields}

    def inject(self, ctx: FaultContext) -> FaultEvent:
        inj = self.injection
        # The id is the service's answer to the POST, so no rollback can name it before the
        # effect exists. Guard, then update: first a sweep of the active faults of this type and
        # target that were not there before the POST (the service records a fault before its
        # agent acts), then, once the id is known, the recovery of that id in its place. A driver
        # killed during the POST is covered by the sweep, one killed after it by the id, and the
        # sweep never touches faults others made earlier.
        try:
            self._existing = [str(f.get("id")) for f in self.client.active_faults()
                              if f.get("type") == inj.record_type and f.get("target") == inj.record_target]
        except ServiceError as e:
            raise RuntimeError(f"{e} (nothing injected)") from None
        sweep_hold = _hold(ctx, self.name, self._action(match={"type": inj.record_type, "target": inj.record_target},
                                                        exclude=self._existing))
        self._attempted = True
        try:
            answer = self.client.call("POST", inj.route, inj.body)
        except ServiceError as e:
            raise RuntimeError(f"{e} (whether the service made the fault is unknown: its recovery looks for it)") from None
        self.response = self._in_effect(answer)
        self.fault_id = str(self.response["fault_id"])
        _hold(ctx, self.name, self._action(fault_id=self.fault_id))
        _release(ctx, self.name, sweep_hold)
        injected_at = time.time()
        r = self.response
        log.info("injected %s through %s: %s (%s)", inj.what, self.url, self.fault_id, r.get("message"))
        self.event = FaultEvent(name=self.name, kind=self.kind, target=self.spec.target, injected_at=injected_at,
                                detail={"fault_id": self.fault_id, "fault_type": r.get("fault_type"),
                                        "target": r.get("target"), "status": r.get("status"),
                                        "service_injected_at": r.get("injected_at"), "message": r.get("message"),
                                        "request": f"POST {self.url}{inj.route}", "body": inj.body})
        return self.event

    def _in_effect(self, answer: Answer) -> dict:
        """The FaultResponse of a fault that happened; anything else raises with the answer."""
        body = answer.body if isinstance(answer.body, dict) else {}
        fault_id, status = body.get("fault_id"), body.get("status")
        if answer.status == 200 and isinstance(fault_id, str) and fault_id and status in IN_EFFECT:
            return body
        said = f"status {status!r}" if answer.status == 200 and body else answer.summary()
        raise RuntimeError(f"POST {self.url}{self.injection.route} answered {answer.status}: {said}"
                           + (f" (fault {fault_id})" if isinstance(fault_id, str) and fault_id else "")
                           + ("; not in effect yet (its recovery looks for it)" if status == "pending"
                              else "; the fault did not happen"))

    def recover(self, ctx: FaultContext) -> str | None:
        if self._lifted or not self._attempted:
            return None
        inj = self.injection
        if self.fault_id is None:  # the POST failed or went unanswered: whatever it made, if anything
            done = sweep(self.client, inj.record_type, inj.record_target, self._existing)
            self._lifted = True
            return "; ".join(done) or None
        result = recover_fault(self.client, self.fault_id)  # ServiceError: a failed rollback
        self._lifted = True
        if result.outcome == RECOVERED and self.event is not None:
            self.event.recovered_at = time.time()
        log.info("recovered %s: %s", self.name, result.what)
        return result.what


def _hold(ctx: FaultContext, fault_name: str, action: dict) -> int | None:
    ctx.guard(fault_name, action)
    return ctx.holds[fault_name][-1] if ctx.guardian is not None else None


def _release(ctx: FaultContext, fault_name: str, hold_id: int | None) -> None:
    """Release one of the fault's holds (the sweep, replaced by the recovery by id)."""
    if hold_id is not None:
        ctx.holds[fault_name].remove(hold_id)
        ctx.guardian.release(hold_id)
