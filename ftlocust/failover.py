"""Shadow-engine failover: wake a sleeping engine when a fault takes the primary away.

The seed's GPU memory service test (`test_gms_shadow_engine_failover`): a shadow engine sleeps
(its weights offloaded), the primary is killed, the shadow is woken and inference goes on. Here
that is a recovery action any fault can carry:

    faults:
      - {kind: process-signal, target: worker-1, signal: SIGKILL, trigger: {...},
         failover: {wake: worker-2, api: vllm, delay_s: 0}}

`failover` is parsed with the fault (`ftlocust.scenario`), checked at preflight (the role is one
of the deployment's, and the deployment says where its engine-control endpoints are:
`engine_url(role)`), and run by the drill right after the fault is in effect, `delay_s` later,
in its own greenlet (the injection never waits for it). What it did goes to the fault's event
detail (`failover: {role, api, woken_at, ok, error}`), the run log and the summary.

The engines' sleep-mode APIs (`ENGINE_APIS`), on the worker's system port, all answering
`{"status": "ok"}`: vLLM `POST /engine/sleep {"level": 1}` / `POST /engine/wake_up {}` (older
`/engine/wake`), SGLang `POST /engine/release_memory_occupation {}` /
`POST /engine/resume_memory_occupation {}`.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ftlocust import validation as v
from ftlocust.errors import ConfigError
from ftlocust.validation import at

FIELDS = ("wake", "api", "delay_s")


@runtime_checkable
class EngineDeployment(Protocol):
    """A deployment that knows where each role's engine-control endpoints are (the reference
    target: the worker's own port)."""

    def engine_url(self, role: str) -> str | None: ...

DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class EngineApi:
    sleep_path: str
    sleep_body: dict
    wake_path: str
    wake_body: dict


ENGINE_APIS: dict[str, EngineApi] = {
    "vllm": EngineApi("/engine/sleep", {"level": 1}, "/engine/wake_up", {}),
    "sglang": EngineApi("/engine/release_memory_occupation", {}, "/engine/resume_memory_occupation", {}),
}


class FailoverError(Exception):
    """An engine-control call that did not answer {"status": "ok"} (one line)."""


def _post(url: str, path: str, body: dict, timeout_s: float) -> dict:
    # No proxies: the engine's port is on the deployment's network, never behind a proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url.rstrip("/") + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    where = f"POST {url.rstrip('/')}{path}"
    try:
        with opener.open(req, timeout=timeout_s) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raise FailoverError(f"{where}: answered {e.code}: {e.read()[:200].decode('utf-8', 'replace')}") from None
    except (OSError, urllib.error.URLError) as e:
        raise FailoverError(f"{where}: {getattr(e, 'reason', None) or e}") from None
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or answer.get("status") != "ok":
        raise FailoverError(f'{where}: expected {{"status": "ok"}}, got {raw[:200].decode("utf-8", "replace")!r}')
    return answer


def sleep(url: str, api: str = "vllm", level: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Put the engine at `url` to sleep (vLLM: `level`, default 1). Raises FailoverError."""
    spec = ENGINE_APIS[api]
    body = dict(spec.sleep_body)
    if level is not None and api == "vllm":
        body["level"] = level
    return _post(url, spec.sleep_path, body, timeout_s)


def wake(url: str, api: str = "vllm", timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Wake the engine at `url`. Raises FailoverError."""
    spec = ENGINE_APIS[api]
    return _post(url, spec.wake_path, dict(spec.wake_body), timeout_s)


@dataclass
class FailoverSpec:
    """`failover: {wake: ROLE, api: vllm|sglang, delay_s}` of one fault; `source` its YAML path."""

    wake: str
    api: str = "vllm"
    delay_s: float = 0.0
    source: str = ""


def failover_from_dict(data: Any, where: str) -> FailoverSpec:
    d = v.mapping(data, where, FIELDS, required=("wake",))
    return FailoverSpec(
        wake=v.string(d["wake"], at(where, "wake")),
        api=v.choice(d.get("api", "vllm"), at(where, "api"), tuple(ENGINE_APIS)),
        delay_s=float(v.number(d.get("delay_s", 0), at(where, "delay_s"), minimum=0)),
        source=where,
    )


def preflight(spec: FailoverSpec, deployment: Any, started: bool = True) -> None:
    """Before load: the role is the deployment's and its engine-control endpoints are known
    (`started`: the deployment is up, so the URL must be there now). ConfigError, one line."""
    here = at(spec.source or "failover", "wake")
    if deployment is None:
        raise ConfigError(f"{here}: no deployment to find {spec.wake!r} in")
    roles = deployment.roles()
    if spec.wake not in roles:
        raise v.error(here, f"a role of the deployment ({', '.join(roles)})", spec.wake,
                      v.did_you_mean(spec.wake, roles))
    if not isinstance(deployment, EngineDeployment):
        raise ConfigError(f"{here}: this {type(deployment).__name__} cannot reach {spec.wake}'s engine-control "
                          f"endpoints (it has no engine_url)")
    if started and not deployment.engine_url(spec.wake):
        raise ConfigError(f"{here}: {spec.wake} has no engine-control endpoint (engine_url is None: not an "
                          f"engine, or not started)")


def describe(spec: FailoverSpec) -> str:
    """What a dry run prints: `wake worker-2 (vllm: POST /engine/wake_up) 0 s after the fault`."""
    return (f"wake {spec.wake} ({spec.api}: POST {ENGINE_APIS[spec.api].wake_path}) "
            f"{v.fmt(spec.delay_s)} s after the fault")


def run(spec: FailoverSpec, deployment: Any, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Wake the shadow now; never raises. Returns the record {role, api, woken_at, ok, error}."""
    record = {"role": spec.wake, "api": spec.api, "woken_at": None, "ok": False, "error": None}
    try:
        url = deployment.engine_url(spec.wake)
        if not url:
            raise FailoverError(f"{spec.wake}: no engine-control endpoint (engine_url is None)")
        wake(url, spec.api, timeout_s=timeout_s)
        record["woken_at"] = time.time()
        record["ok"] = True
    except Exception as e:  # a failed wake is a result the summary shows, not a crash
        record["error"] = f"{type(e).__name__}: {e}"
    return record
