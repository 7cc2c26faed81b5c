"""A drill as data: the target, the faults with their triggers, the checks, when to stop.

Loaded from YAML (`configs/scenarios/*.yaml`) or built in a locustfile; validated here so a
typo is a one-line `ConfigError` naming the field, before any process starts or load runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from ftlocust.errors import ConfigError

TARGET_KINDS = ("reference", "dynamo", "external")
# Scenario `load:` keys → the load flag whose default they replace (a flag given explicitly wins).
LOAD_KEYS = {
    "endpoint": "ft_endpoint",
    "input_tokens": "ft_input_tokens",
    "output_tokens": "ft_output_tokens",
    "rate": "ft_rate",
    "requests_per_client": "ft_requests_per_client",
    "cancel": "ft_cancel",
    "request_timeout": "ft_request_timeout",
}


@dataclass
class TargetSpec:
    """What to run against. `reference`/`dynamo` are started and torn down by ftlocust;
    `external` is whatever `--host` points at (processes named in the faults' targets)."""

    kind: str = "reference"
    workers: int = 2
    migration_limit: int = 3
    options: dict[str, Any] = field(default_factory=dict)  # passed to the deployment as keywords
    # external deployments: where ftlocust finds each component's evidence and process
    metrics: dict[str, str] = field(default_factory=dict)  # role -> /metrics URL
    logs: dict[str, str] = field(default_factory=dict)  # role -> log file
    pids: dict[str, str] = field(default_factory=dict)  # role -> "pid:N" | "pidfile:PATH" (fault targets)


@dataclass
class TriggerSpec:
    """When a fault fires. Exactly one of the three is set."""

    after_requests: int | None = None  # cluster-wide finished requests
    after_seconds: float | None = None  # since load start
    mid_stream_chunks: int | None = None  # when the probe request has streamed this many chunks

    def describe(self) -> str:
        if self.after_requests is not None:
            return f"after {self.after_requests} finished requests"
        if self.after_seconds is not None:
            return f"{self.after_seconds:g} s after load start"
        return f"when the probe stream has {self.mid_stream_chunks} chunks"


@dataclass
class FaultSpec:
    kind: str
    target: str
    trigger: TriggerSpec
    params: dict[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass
class StopSpec:
    recovery_window_s: float | None = None  # stop this long after the last fault; None: budget/-t
    health_poll_s: float = 0.2


@dataclass
class Scenario:
    name: str
    target: TargetSpec = field(default_factory=TargetSpec)
    faults: list[FaultSpec] = field(default_factory=list)
    checks: list[Any] = field(default_factory=list)
    stop: StopSpec = field(default_factory=StopSpec)
    probe: dict[str, Any] = field(default_factory=dict)  # the long in-flight request, if any
    load: dict[str, Any] = field(default_factory=dict)  # defaults for the load flags (LOAD_KEYS)
    source: str = ""


def _take(data: dict, where: str, allowed: set[str]) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (expected one of {', '.join(sorted(allowed))})")


def _number(value: Any, where: str, *, integer: bool = False, positive: bool = True) -> float | int:
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        raise ConfigError(f"{where}: expected {'an integer' if integer else 'a number'}, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{where}: expected a value > 0, got {value!r}")
    if not positive and value < 0:
        raise ConfigError(f"{where}: expected a value >= 0, got {value!r}")
    return value


def trigger_from_dict(data: dict, where: str) -> TriggerSpec:
    _take(data, where, {"after_requests", "after_seconds", "mid_stream_chunks"})
    if len(data) != 1:
        raise ConfigError(f"{where}: expected exactly one of after_requests, after_seconds, mid_stream_chunks")
    (key, value), = data.items()
    if key == "after_seconds":
        return TriggerSpec(after_seconds=float(_number(value, f"{where}.{key}", positive=False)))
    return TriggerSpec(**{key: int(_number(value, f"{where}.{key}", integer=True))})


def scenario_from_dict(data: dict, source: str = "<scenario>") -> Scenario:
    _take(data, source, {"name", "target", "faults", "checks", "stop", "probe", "load"})
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise ConfigError(f"{source}: name: expected a non-empty string")
    target_data = data.get("target") or {}
    _take(target_data, f"{source}: target", {"kind", "workers", "migration_limit", "options", "metrics", "logs", "pids"})
    target = TargetSpec(**target_data)
    for key in ("options", "metrics", "logs", "pids"):
        value = getattr(target, key)
        if not isinstance(value, dict) or (key != "options" and not all(isinstance(v, str) for v in value.values())):
            raise ConfigError(f"{source}: target.{key}: expected a mapping of role to {'value' if key == 'options' else 'string'}")
    if target.kind != "external" and (target.metrics or target.logs or target.pids):
        raise ConfigError(f"{source}: target.metrics/logs/pids: only for kind external (ftlocust knows its own deployments)")
    if target.kind not in TARGET_KINDS:
        raise ConfigError(f"{source}: target.kind: expected one of {', '.join(TARGET_KINDS)}, got {target.kind!r}")
    _number(target.workers, f"{source}: target.workers", integer=True)
    _number(target.migration_limit, f"{source}: target.migration_limit", integer=True, positive=False)

    faults = []
    for i, fault_data in enumerate(data.get("faults") or []):
        where = f"{source}: faults[{i}]"
        if not isinstance(fault_data, dict):
            raise ConfigError(f"{where}: expected a mapping")
        for required in ("kind", "target", "trigger"):
            if required not in fault_data:
                raise ConfigError(f"{where}: missing field {required!r}")
        params = {k: v for k, v in fault_data.items() if k not in ("kind", "target", "trigger", "name")}
        faults.append(
            FaultSpec(
                kind=str(fault_data["kind"]),
                target=str(fault_data["target"]),
                trigger=trigger_from_dict(fault_data["trigger"], f"{where}.trigger"),
                params=params,
                name=str(fault_data.get("name") or f"{fault_data['kind']}:{fault_data['target']}"),
            )
        )
    stop_data = data.get("stop") or {}
    _take(stop_data, f"{source}: stop", {"recovery_window_s", "health_poll_s"})
    stop = StopSpec(**stop_data)
    if stop.recovery_window_s is not None:
        _number(stop.recovery_window_s, f"{source}: stop.recovery_window_s")
        if stop.recovery_window_s < stop.health_poll_s:
            raise ConfigError(
                f"{source}: stop.recovery_window_s: {stop.recovery_window_s} s is shorter than the health poll "
                f"interval ({stop.health_poll_s} s)"
            )
    checks = data.get("checks") or []
    if not isinstance(checks, list):
        raise ConfigError(f"{source}: checks: expected a list")
    probe = data.get("probe") or {}
    _take(probe, f"{source}: probe", {"max_tokens", "endpoint", "start_after_s"})
    load = data.get("load") or {}
    _take(load, f"{source}: load", set(LOAD_KEYS))
    return Scenario(name=data["name"], target=target, faults=faults, checks=checks, stop=stop, probe=probe,
                    load=load, source=source)


def load_scenario(path: str) -> Scenario:
    if not os.path.isfile(path):
        raise ConfigError(f"--ft-scenario: no such file {path!r}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"--ft-scenario {path}: not valid YAML{at}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--ft-scenario {path}: expected a mapping at the top level")
    return scenario_from_dict(data, source=path)
