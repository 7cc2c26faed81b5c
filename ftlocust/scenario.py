"""A drill as data: the target, the faults with their triggers, the checks, when to stop.

Loaded from YAML (`configs/scenarios/*.yaml`) or built in a locustfile; every field is validated
here, values as well as keys, so a typo is a one-line `ConfigError` naming the file and the
field, before any process starts or load runs (the shape is `ftlocust.validation`'s:
`x.yaml: probe.max_tokens: expected an integer >= 1, got 'many'`). A fault's own fields (all but
kind, target, name, trigger, duration_s, repeat, failover) go to `FaultSpec.params` and are checked by its
kind; `checks` are
built (and checked) by `ftlocust.checks.build_checks` once plugins have registered theirs.

The pure steps of a run's set-up that combine a scenario with the flags live here too:
`apply_overrides` (the `--ft-target*`, `--ft-recovery-window`, `--ft-fault-after-*` flags),
`load_flags` (the scenario's `load:` as flag values), and `validate_triggers` (triggers that can
be known to never fire, against the request budget, `-t` and the probe's length).
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ftlocust import validation as v
from ftlocust.validation import at

SCENARIO_FIELDS = ("name", "target", "deployment", "faults", "checks", "stop", "probe", "load", "plugins", "gpu")
TARGET_FIELDS = ("kind", "workers", "migration_limit", "options", "metrics", "logs", "pids")
EXTERNAL_ONLY = ("metrics", "logs", "pids")
FAULT_FIELDS = ("kind", "target", "trigger", "name", "duration_s", "repeat", "failover")  # the rest: the kind's own (params)
REPEAT_FIELDS = ("every_s", "count")
TRIGGERS = ("after_requests", "after_seconds", "mid_stream_chunks")
STOP_FIELDS = ("recovery_window_s", "health_poll_s")
PROBE_FIELDS = ("max_tokens", "endpoint", "start_after_s")
DEFAULT_PROBE_MAX_TOKENS = 400  # the probe's stream length when `probe.max_tokens` is not set
DEFAULT_HEALTH_POLL_S = 0.2
_MODULE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


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
    """When a fault fires. Exactly one of the three is set. `source` is where the value was
    written, for error messages: `x.yaml: faults[0].trigger.after_requests`, or the flag
    (`--ft-fault-after-requests`); empty for one built in code."""

    after_requests: int | None = None  # cluster-wide finished requests
    after_seconds: float | None = None  # since load start
    mid_stream_chunks: int | None = None  # when the probe request has streamed this many chunks
    source: str = field(default="", compare=False)

    def describe(self) -> str:
        if self.after_requests is not None:
            return f"after {self.after_requests} finished requests"
        if self.after_seconds is not None:
            return f"{self.after_seconds:g} s after load start"
        return f"when the probe stream has {self.mid_stream_chunks} chunks"


@dataclass
class FaultSpec:
    """One fault as written. `source` is its YAML path (`x.yaml: faults[0]`), the `where` its
    kind names its own fields under (`at(spec.source, "signal")`); empty for one built in code."""

    kind: str
    target: str
    trigger: TriggerSpec
    params: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    source: str = field(default="", compare=False)
    duration_s: float | None = None  # a reversible fault is lifted this long after it is in effect
    repeat: "RepeatSpec | None" = None  # flapping: the fault again every_s after each occurrence
    failover: Any = None  # ftlocust.failover.FailoverSpec: wake a sleeping engine once the fault is in effect


@dataclass
class RepeatSpec:
    """`repeat: {every_s, count}`: `count` occurrences in all, the first at the trigger, each next
    one `every_s` after the previous one fired. Each occurrence is its own fault on the timeline."""

    every_s: float
    count: int


@dataclass
class StopSpec:
    recovery_window_s: float | None = None  # stop this long after the last fault; None: budget/-t
    health_poll_s: float = DEFAULT_HEALTH_POLL_S


@dataclass
class Scenario:
    name: str
    target: TargetSpec = field(default_factory=TargetSpec)
    faults: list[FaultSpec] = field(default_factory=list)
    checks: list[Any] = field(default_factory=list)
    stop: StopSpec = field(default_factory=StopSpec)
    probe: dict[str, Any] = field(default_factory=dict)  # the long in-flight request, if any (PROBE_FIELDS)
    load: dict[str, Any] = field(default_factory=dict)  # flag values for the load flags' defaults (key → value)
    source: str = ""  # the file it was read from
    plugins: list[str] = field(default_factory=list)  # module names or .py paths, as written
    gpu: Any = field(default_factory=lambda: _gpu_spec(None, "gpu"))  # ftlocust.gpu_monitor.GpuSpec
    # `deployment:` (the seed matrix's row) and where it runs: ftlocust.deployments.Placement.describe
    deployment: dict[str, Any] | None = None

    @property
    def where(self) -> str:
        """The root of this scenario's field paths: `x.yaml:` (or `<name>:` for one built in code)."""
        return f"{self.source or self.name}:"


def __getattr__(name: str) -> Any:
    if name == "LOAD_KEYS":  # scenario `load:` key → the load flag's argparse dest (ftlocust.options)
        from ftlocust.options import LOAD_FLAGS

        return {f.key: f.dest for f in LOAD_FLAGS}
    raise AttributeError(name)


# --- reading ------------------------------------------------------------------------------------


def load_scenario(path: str) -> Scenario:
    if not os.path.isfile(path):
        why = "a folder" if os.path.isdir(path) else "no such file"
        raise v.error("--ft-scenario", "a scenario file", path, f" ({why})")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None)
        raise v.error(f"{path}:", "valid YAML", hint=f", got a syntax error{line}" + (f" ({problem})" if problem else "")) from None
    except (OSError, UnicodeDecodeError) as e:
        raise v.error("--ft-scenario", "a readable UTF-8 file", path, f" ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(data, dict):
        raise v.error(f"{path}:", "a mapping at the top level", data)
    return scenario_from_dict(data, source=path)


def scenario_from_dict(data: Any, source: str = "<scenario>") -> Scenario:
    root = f"{source}:"
    d = v.mapping(data, root, SCENARIO_FIELDS, required=("name",))
    faults_where = at(root, "faults")
    target_data, deployment = _place_deployment(d.get("deployment"), d.get("target"), root)
    scenario = Scenario(
        name=v.string(d["name"], at(root, "name")),
        target=target_from_dict(target_data, at(root, "target")),
        deployment=deployment,
        faults=[fault_from_dict(f, at(faults_where, i))
                for i, f in enumerate(v.listing(d.get("faults"), faults_where, "faults"))],
        checks=v.listing(d.get("checks"), at(root, "checks"), "checks"),
        stop=stop_from_dict(d.get("stop"), at(root, "stop")),
        probe=probe_from_dict(d.get("probe"), at(root, "probe")),
        load=load_from_dict(d.get("load"), at(root, "load")),
        source=source,
        plugins=plugins_from_list(d.get("plugins"), at(root, "plugins")),
        gpu=_gpu_spec(d.get("gpu"), at(root, "gpu")),
    )
    return scenario


def _place_deployment(data: Any, target: Any, root: str) -> tuple[Any, dict | None]:
    """`deployment:` chooses the target's kind and workers (`ftlocust.deployments`); the
    scenario's `target:` may add options and the migration limit, not name them again."""
    from ftlocust import deployments

    where = at(root, "deployment")
    spec = deployments.deployment_from_value(data, where)
    if spec is None:
        return target, None
    t = dict(v.mapping(target, at(root, "target"), TARGET_FIELDS))
    for key in ("kind", "workers"):
        if key in t:
            raise v.error(at(root, f"target.{key}"), f"nothing: deployment {spec.name} sets it (kind from the backend, "
                                                     f"workers = dp); drop one of the two", t[key])
    placement = deployments.place(spec, where)
    t.update(kind=placement.kind, workers=placement.workers,
             options={**placement.options, **v.mapping(t.get("options"), at(root, "target.options"))})
    return t, placement.describe(spec)


def _gpu_spec(data: Any, where: str) -> Any:
    from ftlocust.gpu_monitor import gpu_spec_from_dict  # the GPU monitor's own section

    return gpu_spec_from_dict(data, where)


def target_from_dict(data: Any, where: str) -> TargetSpec:
    from ftlocust.targets import target_kinds

    d = v.mapping(data, where, TARGET_FIELDS)
    kind = v.choice(d.get("kind", "reference"), at(where, "kind"), target_kinds())
    options = v.mapping(d.get("options"), at(where, "options"))
    if not all(isinstance(k, str) for k in options):
        raise v.error(at(where, "options"), "a mapping of option name to value", options)
    spec = TargetSpec(
        kind=kind,
        workers=int(v.number(d.get("workers", 2), at(where, "workers"), integer=True, above=0)),
        migration_limit=int(v.number(d.get("migration_limit", 3), at(where, "migration_limit"), integer=True, minimum=0)),
        options=options,
        metrics=v.string_map(d.get("metrics"), at(where, "metrics")),
        logs=v.string_map(d.get("logs"), at(where, "logs")),
        pids=v.string_map(d.get("pids"), at(where, "pids")),
    )
    if _started_here(kind):
        for key in EXTERNAL_ONLY:
            if getattr(spec, key):
                raise v.error(at(where, key), f"no {key} for kind {kind} (only for kind external: ftlocust knows "
                                              f"its own deployments)", getattr(spec, key))
    return spec


def _started_here(kind: str) -> bool:
    from ftlocust.targets import TARGETS

    return TARGETS[kind].started_here


def fault_from_dict(data: Any, where: str) -> FaultSpec:
    d = v.mapping(data, where, None, required=("kind", "target", "trigger"))
    kind = v.string(d["kind"], at(where, "kind"))
    target = v.string(d["target"], at(where, "target"))
    name = d.get("name")
    duration = d.get("duration_s")
    if duration is not None:
        duration = float(v.number(duration, at(where, "duration_s"), above=0))
    repeat = None
    if d.get("repeat") is not None:
        r = v.mapping(d["repeat"], at(where, "repeat"), REPEAT_FIELDS, required=REPEAT_FIELDS)
        repeat = RepeatSpec(every_s=float(v.number(r["every_s"], at(at(where, "repeat"), "every_s"), above=0)),
                            count=int(v.number(r["count"], at(at(where, "repeat"), "count"), integer=True, minimum=1)))
        if duration is not None and duration >= repeat.every_s:
            raise v.error(at(at(where, "repeat"), "every_s"),
                          f"more than duration_s {v.fmt(duration)} (each occurrence is lifted before the next)",
                          r["every_s"])
    failover = None
    if d.get("failover") is not None:
        from ftlocust.failover import failover_from_dict

        failover = failover_from_dict(d["failover"], at(where, "failover"))
    return FaultSpec(
        kind=kind,
        target=target,
        trigger=trigger_from_dict(d["trigger"], at(where, "trigger")),
        failover=failover,
        params={k: value for k, value in d.items() if k not in FAULT_FIELDS},
        name=f"{kind}:{target}" if name is None else v.string(name, at(where, "name")),
        source=where,
        duration_s=duration,
        repeat=repeat,
    )


def trigger_from_dict(data: Any, where: str) -> TriggerSpec:
    d = v.mapping(data, where, TRIGGERS)
    key = v.exactly_one(d, where, TRIGGERS)
    here = at(where, key)
    if key == "after_seconds":
        return TriggerSpec(after_seconds=float(v.number(d[key], here, minimum=0)), source=here)
    return TriggerSpec(**{key: int(v.number(d[key], here, integer=True, above=0))}, source=here)


def stop_from_dict(data: Any, where: str) -> StopSpec:
    d = v.mapping(data, where, STOP_FIELDS)
    poll = float(v.number(d.get("health_poll_s", DEFAULT_HEALTH_POLL_S), at(where, "health_poll_s"), above=0))
    window = d.get("recovery_window_s")
    if window is not None:
        window = recovery_window(window, at(where, "recovery_window_s"), poll)
    return StopSpec(recovery_window_s=window, health_poll_s=poll)


def recovery_window(value: Any, where: str, health_poll_s: float) -> float:
    """A recovery window: at least one health poll interval (else recovery is never seen)."""
    return float(v.number(value, where, minimum=health_poll_s, unit="the health poll interval, stop.health_poll_s"))


def probe_from_dict(data: Any, where: str) -> dict[str, Any]:
    from ftlocust.options import STREAM_KINDS

    d = v.mapping(data, where, PROBE_FIELDS)
    if "max_tokens" in d:
        d["max_tokens"] = int(v.number(d["max_tokens"], at(where, "max_tokens"), integer=True, minimum=1))
    if "endpoint" in d:
        v.choice(d["endpoint"], at(where, "endpoint"), STREAM_KINDS)
    if "start_after_s" in d:
        d["start_after_s"] = float(v.number(d["start_after_s"], at(where, "start_after_s"), minimum=0))
    return d


def load_from_dict(data: Any, where: str) -> dict[str, Any]:
    """`load:` → {key: the flag's value}, each parsed by its flag's own parser (so a scenario
    value and a flag say the same thing: `x.yaml: load.rate: expected a number > 0 …`)."""
    from ftlocust.cancel import CancelPolicy
    from ftlocust.options import LOAD_FLAG, check_cancel_endpoint

    d = v.mapping(data, where, LOAD_FLAG)
    load = {key: LOAD_FLAG[key].parse(value, at(where, key)) for key, value in d.items()}
    if "endpoint" in load and "cancel" in load:
        check_cancel_endpoint(load["endpoint"], CancelPolicy.parse(load["cancel"]), at(where, "endpoint"),
                              at(where, "cancel"))
    return load


def plugins_from_list(data: Any, where: str) -> list[str]:
    plugins = v.string_list(data, where)
    for i, name in enumerate(plugins):
        if not (name.endswith(".py") or _MODULE_RE.match(name)):
            raise v.error(at(where, i), "a module name (package.module) or a .py file path", name)
    return plugins


# --- the scenario with the flags ------------------------------------------------------------------


# target overrides that are a k8s target's options, by the flag that gives them
K8S_FLAGS = {"namespace": "--ft-k8s-namespace", "dynamo_graph": "--ft-k8s-graph", "context": "--ft-k8s-context"}


def apply_overrides(scenario: Scenario, *, target_overrides: dict[str, Any], recovery_window_s: Any = None,
                    fault_after_requests: Any = None, fault_after_seconds: Any = None,
                    target_kind: str | None = None) -> Scenario:
    """A new Scenario with the run flags applied, each value checked and named by its flag.

    - `target_kind` (`--ft-target`): another kind than the scenario's drops its `target.options`
      (they were for the deployment it named); an external target's processes cannot move.
    - `target_overrides`: `workers`, `migration_limit`, `token_delay_s` (reference only),
      `K8S_FLAGS` (k8s only), and any other key as a target option; None values are not given.
    - `recovery_window_s` (`--ft-recovery-window`): replaces `stop.recovery_window_s`.
    - `fault_after_requests` / `fault_after_seconds`: replace the first fault's trigger (one of
      them; the trigger's `source` names the flag).
    """
    s = copy.deepcopy(scenario)
    t = s.target
    if target_kind:
        from ftlocust.targets import target_kinds

        v.choice(target_kind, "--ft-target", target_kinds())
        if target_kind != t.kind:
            if not _started_here(t.kind):
                raise v.error("--ft-target", "no --ft-target with an external scenario target (its faults name "
                                             "that deployment's processes)", target_kind)
            t.kind, t.options = target_kind, {}
            s.deployment = None  # the row no longer runs where its placement said
    from ftlocust.options import run_flag

    for key, value in target_overrides.items():
        if value is None:
            continue
        if key == "workers":
            t.workers = int(run_flag("ft_target_workers", value))
        elif key == "migration_limit":
            t.migration_limit = int(run_flag("ft_target_migration_limit", value))
        elif key == "token_delay_s":
            value = run_flag("ft_target_token_delay", value)
            if t.kind != "reference":
                raise v.error("--ft-target-token-delay", f"no value for a {t.kind} target (only the reference "
                                                         f"deployment has a token delay)", value)
            t.options[key] = value
        elif key in K8S_FLAGS:
            if t.kind != "k8s":
                raise v.error(K8S_FLAGS[key], f"only for a k8s target (the scenario's target is {t.kind})", value)
            t.options[key] = v.string(value, K8S_FLAGS[key])
        else:
            t.options[key] = value
    if recovery_window_s is not None:
        s.stop.recovery_window_s = recovery_window(recovery_window_s, "--ft-recovery-window", s.stop.health_poll_s)
    if fault_after_requests is not None and fault_after_seconds is not None:
        raise v.error("--ft-fault-after-seconds", "one trigger: --ft-fault-after-requests or --ft-fault-after-seconds, "
                                                  "not both", fault_after_seconds)
    if fault_after_requests is not None:
        n = int(run_flag("ft_fault_after_requests", fault_after_requests))
        trigger = TriggerSpec(after_requests=n, source="--ft-fault-after-requests")
    elif fault_after_seconds is not None:
        seconds = float(run_flag("ft_fault_after_seconds", fault_after_seconds))
        trigger = TriggerSpec(after_seconds=seconds, source="--ft-fault-after-seconds")
    else:
        trigger = None
    if trigger is not None and s.faults:
        s.faults[0].trigger = trigger
    return s


def load_flags(scenario: Scenario, parsed: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """The scenario's `load:` as flag values: {argparse dest: value} for each key whose flag was
    left at its default (`defaults`: dest → the parser's default; an explicit flag wins). The
    result, set on `parsed`, is a valid load: the cross-check (after-chunks needs a streaming
    endpoint) names each value where it came from, the scenario path or the flag."""
    from ftlocust.cancel import CancelPolicy
    from ftlocust.options import LOAD_FLAG, LoadOptions, check_cancel_endpoint

    where = at(scenario.where, "load")
    changes = {}
    for key, value in scenario.load.items():
        dest = LOAD_FLAG[key].dest
        if getattr(parsed, dest, None) == defaults.get(dest):
            changes[dest] = value

    def pick(key: str) -> tuple[Any, str]:
        flag = LOAD_FLAG[key]
        if flag.dest in changes:
            return changes[flag.dest], at(where, key)
        value = getattr(parsed, flag.dest, None)
        return (flag.default if value is None else value), flag.flag

    (endpoint, endpoint_where), (cancel, cancel_where) = pick("endpoint"), pick("cancel")
    check_cancel_endpoint(LOAD_FLAG["endpoint"].parse(endpoint, endpoint_where),
                          CancelPolicy.parse(cancel, cancel_where), endpoint_where, cancel_where)
    merged = copy.copy(parsed) if parsed is not None else None
    if merged is not None:
        for dest, value in changes.items():
            setattr(merged, dest, value)
    LoadOptions.from_parsed(merged)  # anything else wrong names its flag
    return changes


def validate_triggers(scenario: Scenario, *, total_budget: int | None, run_time_s: float | None) -> None:
    """Refuse, before load, a trigger that can be known never to fire: `after_requests` beyond
    the total request budget (users × requests per client), `after_seconds` at or past the run
    time (`-t`), `mid_stream_chunks` beyond the probe's `max_tokens`. (Whether the locustfile
    has a probe user at all is not known here.)"""
    max_tokens = scenario.probe.get("max_tokens")
    if max_tokens is not None:
        max_tokens = int(v.number(max_tokens, at(at(scenario.where, "probe"), "max_tokens"), integer=True, minimum=1))
    for i, fault in enumerate(scenario.faults):
        t = fault.trigger
        base = fault.source or at(at(scenario.where, "faults"), i)

        def where(key: str) -> str:
            return t.source or at(at(base, "trigger"), key)

        if t.after_requests is not None and total_budget is not None and t.after_requests > total_budget:
            raise v.error(where("after_requests"), f"at most the total request budget {total_budget} "
                                                   f"(users × --ft-requests-per-client)", t.after_requests)
        if t.after_seconds is not None and run_time_s is not None and t.after_seconds >= run_time_s:
            raise v.error(where("after_seconds"), f"less than the run time {v.fmt(run_time_s)} s (-t)", t.after_seconds)
        if fault.repeat is not None and run_time_s is not None:
            last = (t.after_seconds or 0.0) + (fault.repeat.count - 1) * fault.repeat.every_s
            if last >= run_time_s:
                raise v.error(at(at(base, "repeat"), "count"),
                              f"occurrences that fit the run time {v.fmt(run_time_s)} s (-t): the last would come "
                              f"{v.fmt(last)} s after load start", fault.repeat.count)
        if t.mid_stream_chunks is not None:
            limit = DEFAULT_PROBE_MAX_TOKENS if max_tokens is None else max_tokens
            if t.mid_stream_chunks > limit:
                what = (f"at most probe.max_tokens {limit} (the probe stream's length)" if max_tokens is not None
                        else f"at most {limit}, the probe stream's default length (probe.max_tokens)")
                raise v.error(where("mid_stream_chunks"), what, t.mid_stream_chunks)

