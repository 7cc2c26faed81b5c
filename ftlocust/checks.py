"""Checks: data-driven assertions over one run's result, each giving a `Verdict`.

A scenario lists checks as data, e.g. `{"check": "success_ratio", "phase": "after", "min": 0.99}`
or just `"no_truncated_streams"`. `build_checks` validates them before any load starts (unknown
check, unknown or missing field, wrong type, unknown phase or metric → one-line `ConfigError`);
`evaluate` runs them and never raises: a check that breaks becomes a failed verdict.
Every spec may carry `title` to replace the generated verdict name, and `allow_empty`.

A verdict over nothing is not a pass: a check whose set to judge is empty (no request in the
phase — no ok/failed one for a ratio or a latency —, no stream after the fault, no log file or
an empty one, no sample of the metric before or after, no cancelled request) fails with a detail starting `empty:`, unless the spec says
`allow_empty: true`. Then emptiness alone fails nothing: the check is decided on what it has
(a ratio or a "no X" over nothing passes; a check that needs something — `min_failures`, a
`metric_increased` with `min_delta` > 0 — still fails).

`evaluate` also gives the built-in verdicts first (`builtin_verdicts`): every planned fault
injected, every rollback succeeded, no load generator lost.

Evidence that arrives late is waited for, bounded: `log_pattern` (present) polls the log up to
`within_s`; `metric_increased` re-scrapes (`RunResult.scrape`) up to `within_s` until its delta
is met. All waiting of one `evaluate` shares `RunResult.wait_budget_s`.

New kinds plug in with `register_check(kind, fields, label)` on a `(params, result) ->
(passed, detail)` function.
"""

from __future__ import annotations

import datetime
import fnmatch
import math
import os
import re
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from ftlocust import validation as v
from ftlocust.errors import ConfigError
from ftlocust.evidence import BENIGN_LOG_LINES, MetricsSnapshot, family_base, log_files, scan_log, wait_for_line
from ftlocust.phases import (
    ALL,
    CLIENT_RECOVERY_KEYS,
    DEFAULT_LATENCY_FACTOR,
    DEFAULT_TOLERANCE,
    DEFAULT_WINDOW_S,
    INJECTED,
    NOT_FIRED,
    STAT_GROUPS,
    FaultEvent,
    analyse,
    classify,
    group_records,
)
from ftlocust.records import AFTER, CANCELLED, FAILURE_OUTCOMES, OK, SPANNING, TRUNCATED, RequestRecord

RECOVERY_METRICS = (*CLIENT_RECOVERY_KEYS, "server_recovery_s")

_EPS = 1e-9
DEFAULT_WITHIN_S = 10.0  # how long a late log line / counter is waited for, per check
DEFAULT_WAIT_BUDGET_S = 30.0  # all waiting of one evaluate()
_POLL_LOG_S = 0.1
_POLL_METRICS_S = 0.5


@dataclass(frozen=True)
class Verdict:
    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass
class RunResult:
    """What checks read.

    - `faults`: every planned fault in the scenario's order, injected or not (`FaultEvent.status`);
      `fault_time`, `phases`, `recovery` are against the first injected one (`phases.analyse`),
      `per_fault` its per-fault entries; `recovery` carries `server_recovery_s`.
    - snapshots and logs keyed by role; `scrape()` (optional) takes fresh `/metrics` snapshots
      of every role, for checks that wait for a counter.
    - `rollbacks`: one dict per rollback step that ran: {fault, action, at, ok, error}.
    - `lost_workers`: one dict per Locust worker lost mid-run: {worker, lost_at, in_flight, unsent}.
    - `wait_budget_s`: the most all checks of one `evaluate` may wait in total.
    - `gpu_samples`: the GPU monitor's samples (`ftlocust.gpu.GpuSample`), [] when none ran.
    - `exits`: how each deployment process that ended during the run ended (`{role, pid,
      exit_code, signal}`, `ftlocust.targets.RecordsExits`); None when the target cannot tell.
    """

    records: list[RequestRecord] = field(default_factory=list)
    fault_time: float | None = None
    faults: list[FaultEvent] = field(default_factory=list)
    phases: dict = field(default_factory=dict)
    recovery: dict = field(default_factory=dict)
    per_fault: list[dict] = field(default_factory=list)
    metrics_before: dict[str, MetricsSnapshot] = field(default_factory=dict)
    metrics_after: dict[str, MetricsSnapshot] = field(default_factory=dict)
    log_paths: dict[str, str] = field(default_factory=dict)
    expected_tokens: int | None = None
    rollbacks: list[dict] = field(default_factory=list)
    lost_workers: list[dict] = field(default_factory=list)
    scrape: Callable[[], dict[str, MetricsSnapshot]] | None = None
    wait_budget_s: float = DEFAULT_WAIT_BUDGET_S
    gpu_samples: list = field(default_factory=list)
    exits: list[dict] | None = None
    wait_deadline: float | None = field(default=None, repr=False, compare=False)  # set by evaluate()

    @classmethod
    def from_analysis(cls, analysis: Mapping, faults: Iterable[FaultEvent], **rest: Any) -> "RunResult":
        """A result from `phases.analyse(...)` and the planned faults it was computed from."""
        return cls(
            fault_time=analysis["fault_time"],
            faults=list(faults),
            phases=analysis["phases"],
            recovery=analysis["recovery"],
            per_fault=analysis["per_fault"],
            **rest,
        )

    @classmethod
    def from_records(
        cls,
        records: Iterable[RequestRecord],
        faults: Iterable[FaultEvent] = (),
        window_s: float = DEFAULT_WINDOW_S,
        tolerance: float = DEFAULT_TOLERANCE,
        latency_factor: float = DEFAULT_LATENCY_FACTOR,
        server_recovery: Mapping[str, float | None] | None = None,
        **rest: Any,
    ) -> "RunResult":
        """Run `phases.analyse` on the records and planned faults (scenario order kept)."""
        records = list(records)
        faults = list(faults)
        analysis = analyse(records, faults, server_recovery, window_s, tolerance, latency_factor)
        return cls.from_analysis(analysis, faults, records=records, **rest)


# --- built-in verdicts ------------------------------------------------------------------------

FAULTS_INJECTED = "every fault injected"
ROLLBACKS_OK = "every rollback succeeded"
NO_WORKER_LOST = "no load generator lost"


def _clock(ts: Any) -> str:
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return "?"
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3] + "Z"


def builtin_verdicts(result: RunResult) -> list[Verdict]:
    """Verdicts every run gets, whatever its scenario says:

    - `every fault injected` (absent when the scenario has no fault): fails when a planned fault
      failed to inject or never fired, naming it and why, or — a mid-stream fault — landed after
      the probe stream it was aimed at had finished ("landed too late", `phases.probe_progress`);
    - `every rollback succeeded` (absent when no rollback ran): fails when one failed;
    - `no load generator lost` (always): fails when a Locust worker was lost mid-run, naming
      it, when, how many requests it had in flight and how much of its budget went unsent.
    """
    verdicts = []
    if result.faults:
        late = {f.name: f.detail["probe"]["too_late"] for f in result.faults
                if f.status == INJECTED and ((f.detail or {}).get("probe") or {}).get("too_late")}
        missed = [f for f in result.faults if f.status != INJECTED or f.name in late]
        n = len(result.faults)
        if missed:
            why = "; ".join(
                f"{f.name} {late[f.name]}" if f.name in late else
                f"{f.name} {'not fired' if f.status == NOT_FIRED else 'not injected'}: {f.error or 'no reason given'}"
                for f in missed
            )
            done = "injected in time" if late else "injected"
            verdicts.append(Verdict(FAULTS_INJECTED, False, f"{n - len(missed)} of {n} {done}; {why}"))
        else:
            names = ", ".join(f.name for f in result.faults)
            verdicts.append(Verdict(FAULTS_INJECTED, True, f"{n} of {n} injected: {names}"))
    if result.rollbacks:
        bad = [r for r in result.rollbacks if not r.get("ok")]
        if bad:
            why = "; ".join(
                f"{r.get('fault', '?')}: {r.get('action', 'rollback')} failed at {_clock(r.get('at'))}: "
                f"{r.get('error') or 'no reason given'}"
                for r in bad
            )
            verdicts.append(Verdict(ROLLBACKS_OK, False, f"{len(bad)} of {len(result.rollbacks)} failed: {why}"))
        else:
            done = ", ".join(f"{r.get('fault', '?')} ({r.get('action', 'rollback')})" for r in result.rollbacks)
            verdicts.append(Verdict(ROLLBACKS_OK, True, f"{len(result.rollbacks)} ok: {done}"))
    if result.lost_workers:
        why = "; ".join(
            f"{w.get('worker', '?')} lost at {_clock(w.get('lost_at'))} with {w.get('in_flight', '?')} request(s) "
            f"in flight and {w.get('unsent', '?')} of its budget unsent"
            for w in result.lost_workers
        )
        verdicts.append(Verdict(NO_WORKER_LOST, False, f"{len(result.lost_workers)} lost: {why}"))
    else:
        verdicts.append(Verdict(NO_WORKER_LOST, True, "none lost"))
    return verdicts


# --- metric catalog -------------------------------------------------------------------------

# Names (and fnmatch patterns) targets register; Dynamo's catalogue lives with its target
# (`ftlocust.targets.dynamo_metrics`) and is loaded on first use.
KNOWN_METRICS: set[str] = set()
KNOWN_METRIC_PATTERNS: list[str] = []
_catalogue_loaded = False


def _ensure_catalogue() -> None:
    global _catalogue_loaded
    if not _catalogue_loaded:
        _catalogue_loaded = True
        from ftlocust.targets import dynamo_metrics

        dynamo_metrics.register()


def register_metrics(*names: str) -> None:
    """Add metric names (or fnmatch patterns with `*`) a target exposes to the catalog."""
    for n in names:
        if "*" not in n:
            KNOWN_METRICS.add(n)
        elif n not in KNOWN_METRIC_PATTERNS:
            KNOWN_METRIC_PATTERNS.append(n)


def is_known_metric(name: str) -> bool:
    """In the catalog, with or without a sample suffix (`_total`, `_count`, `_bucket`, ...)."""
    _ensure_catalogue()
    base = family_base(name)
    return base in {family_base(n) for n in KNOWN_METRICS} or any(
        fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(base, p) for p in KNOWN_METRIC_PATTERNS
    )


# --- spec fields and validation ---------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One field of a check spec. `type`: number | int | bool | str | labels | str_list."""

    name: str
    type: str
    required: bool = False
    default: Any = None
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class CheckType:
    kind: str
    fields: dict[str, Field]
    label: Callable[[dict], str]
    run: Callable[[dict, "RunResult"], tuple[bool, str]]


CHECK_TYPES: dict[str, CheckType] = {}

_TITLE_FIELD = Field("title", "str")
# Every kind: judging nothing fails unless the spec allows it (see the module docstring).
_ALLOW_EMPTY_FIELD = Field("allow_empty", "bool", default=False)

# Unknown fields that are a known slip for another: (kind, written) -> meant.
_FIELD_HINTS = {("metric_increased", "metric"): "name"}


def register_check(kind: str, fields: Iterable[Field], label: Callable[[dict], str]):
    """Decorator registering `run(params, result) -> (passed, detail)` as check `kind`."""

    def deco(run):
        CHECK_TYPES[kind] = CheckType(kind, {f.name: f for f in (*fields, _TITLE_FIELD, _ALLOW_EMPTY_FIELD)}, label, run)
        return run

    return deco


def _type_error(f: Field, value: Any, where: str) -> ConfigError | None:
    """The error for `value` in field `f` (the field's path `where`), or None when it is right."""
    t = f.type
    try:
        if t == "number":
            v.number(value, where, minimum=f.min, maximum=f.max)
        elif t == "int":
            v.number(value, where, integer=True, minimum=f.min, maximum=f.max)
        elif t == "bool":
            v.boolean(value, where)
        elif t == "str":
            v.string(value, where)
        elif t == "labels":
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(x, (str, int, float)) and not isinstance(x, bool)
                for k, x in value.items()
            ):
                return v.error(where, "a mapping of label name to value", value)
        elif t == "int_or_str":  # a GPU: index, UUID or PCI bus id
            if isinstance(value, bool) or not (isinstance(value, int) and value >= 0 or isinstance(value, str) and value):
                return v.error(where, "an index (>= 0) or a non-empty string", value)
        elif t == "str_list":
            if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
                return v.error(where, "a list of strings", value)
        else:  # pragma: no cover - a registration mistake, not user input
            raise AssertionError(f"unknown field type {t}")
        if f.choices is not None:
            v.choice(value, where, f.choices)
    except ConfigError as e:
        return e
    return None


@dataclass
class Check:
    """One configured check. `evaluate(result)` returns its `Verdict` (and may raise; use the
    module's `evaluate` to turn exceptions into failed verdicts)."""

    name: str
    kind: str
    params: dict

    def evaluate(self, result: RunResult) -> Verdict:
        passed, detail = CHECK_TYPES[self.kind].run(self.params, result)
        return Verdict(self.name, bool(passed), detail)


def build_check(spec: Mapping | str, where: str = "check") -> Check:
    """One spec (a check name, or a mapping with `check`) → `Check`; a bad one is a one-line
    `ConfigError` in `ftlocust.validation`'s shape, naming the field's path below `where`."""
    if isinstance(spec, str):
        spec = {"check": spec}
    if not isinstance(spec, Mapping):
        raise v.error(where, "a check name or a mapping with 'check'", spec)
    if "check" not in spec:
        raise v.missing(v.at(where, "check"), "the check's kind, e.g. success_ratio")
    kind = v.choice(spec["check"], v.at(where, "check"), sorted(CHECK_TYPES))
    ctype = CHECK_TYPES[kind]
    params: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "check":
            continue
        f = ctype.fields.get(key)
        if f is None:
            meant = _FIELD_HINTS.get((kind, key))
            raise v.unknown_field(where, key, ctype.fields, f"; did you mean '{meant}'?" if meant else None)
        error = _type_error(f, value, v.at(where, str(key)))
        if error is not None:
            raise error
        params[key] = value
    for f in ctype.fields.values():
        if f.name not in params:
            if f.required:
                raise v.missing(v.at(where, f.name))
            params[f.name] = f.default
    if "labels" in params and params["labels"] is not None:
        params["labels"] = {k: str(x) for k, x in params["labels"].items()}
    _validate_extra(kind, params, where)
    title = params.pop("title") or ctype.label(params)
    return Check(name=title, kind=kind, params=params)


def _validate_extra(kind: str, params: dict, where: str) -> None:
    """Checks across fields: metric names against the catalogue, regexes compile."""
    if kind in ("metric_increased", "cancellations_counted") and not params.get("allow_unknown_metric"):
        metric = params["name"]
        if not is_known_metric(metric):
            raise v.error(v.at(where, "name"), "a metric of the target's catalogue (set allow_unknown_metric: true "
                          "to use another)", metric, v.did_you_mean(metric, KNOWN_METRICS))
    if kind == "gpu_metric":
        from ftlocust.gpu_monitor import validate_window

        validate_window(params["window"], v.at(where, "window"))
        if params["min"] is None and params["max"] is None:
            raise v.missing(v.at(where, "min"), "min or max, or both")
    if kind == "process_exit" and params["exit_code"] is not None and params["signal"] is not None:
        raise v.error(v.at(where, "signal"), "exit_code or signal, not both (a process ends one way)", params["signal"])
    if params.get("regex") and "pattern" in params:
        try:
            re.compile(params["pattern"])
        except re.error as e:
            raise v.error(v.at(where, "pattern"), f"a valid regex ({e})", params["pattern"]) from None


def build_checks(specs: Iterable[Mapping | str] | None, where: str = "checks") -> list[Check]:
    """Validate and build every spec; the first bad one raises `ConfigError` naming
    `where[i]`, the check kind and the field."""
    _ensure_catalogue()
    if specs is None:
        return []
    if isinstance(specs, (str, Mapping)):
        raise ConfigError(f"{where}: expected a list of checks, got {type(specs).__name__}")
    return [build_check(spec, f"{where}[{i}]") for i, spec in enumerate(specs)]


def evaluate(checks: Iterable[Check], result: RunResult, builtin: bool = True) -> list[Verdict]:
    """The built-in verdicts (`builtin_verdicts`, unless `builtin` is False), then every check;
    one that raises becomes a failed verdict carrying the error. Checks that wait share
    `result.wait_budget_s` from here on."""
    result.wait_deadline = time.monotonic() + max(0.0, result.wait_budget_s)
    verdicts = builtin_verdicts(result) if builtin else []
    for check in checks:
        try:
            verdicts.append(check.evaluate(result))
        except Exception as e:  # a broken check must not cost the report
            verdicts.append(Verdict(check.name, False, f"check raised {type(e).__name__}: {e}"))
    return verdicts


def all_passed(verdicts: Iterable[Verdict]) -> bool:
    return all(v.passed for v in verdicts)


# --- helpers for check bodies -----------------------------------------------------------------


def _empty(p: dict, what: str) -> tuple[bool, str] | None:
    """The verdict for an empty set: a failure unless `allow_empty`; None means "decide on"."""
    if p.get("allow_empty"):
        return None
    return False, f"empty: {what} (set allow_empty: true to accept that)"


def _wait_for(result: RunResult, within_s: float) -> float:
    """How long a check may still wait: `within_s`, capped by what is left of the run's budget."""
    left = math.inf if result.wait_deadline is None else result.wait_deadline - time.monotonic()
    return max(0.0, min(within_s, left))


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}".rstrip("0").rstrip(".") if isinstance(x, float) else str(x)


def _phase(result: RunResult, phase: str) -> dict:
    stats = result.phases.get(phase)
    if stats is None:
        raise LookupError(f"no statistics for phase '{phase}'")
    return stats


def _failure_breakdown(stats: dict) -> str:
    parts = [f"{o} {n}" for o, n in stats["outcomes"].items() if o in FAILURE_OUTCOMES and n]
    return ", ".join(parts) if parts else "none"


def _request_label(r: RequestRecord) -> str:
    return r.request_id or f"{r.client_id or '?'}#{r.seq}"


def _records_in(result: RunResult, phase: str) -> list[RequestRecord]:
    return group_records(result.records, result.fault_time)[phase]


def _labels_text(labels: dict | None) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


# --- the checks -------------------------------------------------------------------------------


@register_check(
    "success_ratio",
    [Field("phase", "str", required=True, choices=STAT_GROUPS), Field("min", "number", required=True, min=0, max=1)],
    label=lambda p: f"success_ratio[{p['phase']}] >= {p['min']}",
)
def _success_ratio(p: dict, result: RunResult) -> tuple[bool, str]:
    s = _phase(result, p["phase"])
    decided = s["success"] + s["failed"]
    if decided == 0:
        return _empty(p, f"no ok or failed request in phase '{p['phase']}'") or (
            True, f"no ok or failed request in phase '{p['phase']}' (allow_empty)")
    ratio = s["success"] / decided
    detail = f"{p['phase']}: {s['success']}/{decided} ok = {ratio:.4f} (min {p['min']}); failed: {_failure_breakdown(s)}"
    return ratio >= p["min"] - _EPS, detail


@register_check(
    "max_recovery",
    [
        Field("metric", "str", required=True, choices=RECOVERY_METRICS),
        Field("max_s", "number", required=True, min=0),
        Field("allow_missing", "bool", default=False),
    ],
    label=lambda p: f"{p['metric']} <= {p['max_s']}s",
)
def _max_recovery(p: dict, result: RunResult) -> tuple[bool, str]:
    value = result.recovery.get(p["metric"])
    if value is None:
        why = "no fault injected" if result.recovery.get("fault_time", result.fault_time) is None else _unmeasured_why(
            p["metric"], result.recovery)
        return bool(p["allow_missing"] or p.get("allow_empty")), f"{p['metric']} not measured ({why})"
    return value <= p["max_s"] + _EPS, f"{p['metric']} = {value:.3f}s (max {p['max_s']}s)"


def _unmeasured_why(metric: str, rec: Mapping) -> str:
    """Why a recovery figure is None: the first figure in the chain that never happened."""
    if metric == "server_recovery_s":
        return "the server view never saw the component serve again"
    if rec.get("time_to_first_success_s") is None:
        return "no request started after the fault succeeded"
    if rec.get("time_to_sustained_success_s") is None:
        return "the success ratio never stayed above its threshold"
    if rec.get("latency_baseline_s") is None:
        return "no successful request before the fault: no latency baseline"
    return "latency / TTFT never stayed back within the factor"


@register_check(
    "no_truncated_streams",
    [Field("phase", "str", default=ALL, choices=STAT_GROUPS)],
    label=lambda p: "no_truncated_streams" + ("" if p["phase"] == ALL else f"[{p['phase']}]"),
)
def _no_truncated_streams(p: dict, result: RunResult) -> tuple[bool, str]:
    streams = [r for r in _records_in(result, p["phase"]) if r.stream and r.outcome != CANCELLED]
    if not streams:
        empty = _empty(p, f"no stream (not cancelled) in phase '{p['phase']}'")
        if empty:
            return empty
    cut = [r for r in streams if r.outcome == TRUNCATED]
    if not cut:
        return True, f"no truncated stream of {len(streams)}"
    shown = ", ".join(_request_label(r) for r in cut[:3]) + (" …" if len(cut) > 3 else "")
    return False, f"{len(cut)} truncated: {shown}"


@register_check(
    "metric_increased",
    [
        Field("role", "str", required=True),
        Field("name", "str", required=True),  # the metric, as in MetricsSnapshot.value(name)
        Field("labels", "labels", default=None),
        Field("min_delta", "number", default=1),
        Field("max_delta", "number", default=None),
        Field("allow_unknown_metric", "bool", default=False),
        Field("within_s", "number", default=DEFAULT_WITHIN_S, min=0),
    ],
    label=lambda p: f"metric_increased[{p['role']}] {p['name']}{_labels_text(p['labels'])} by >= {_fmt(p['min_delta'])}",
)
def _metric_increased(p: dict, result: RunResult) -> tuple[bool, str]:
    """after - before within [min_delta, max_delta]. While the increase is short of min_delta
    and `result.scrape` is set, re-scrape (every 0.5 s, up to `within_s`, within the run's wait
    budget): a counter the server bumps when it next gets to it. The snapshot used replaces
    `result.metrics_after[role]`."""
    role, metric, labels = p["role"], p["name"], p["labels"] or {}
    snaps = []
    for when, table in (("before", result.metrics_before), ("after", result.metrics_after)):
        snap = table.get(role)
        if snap is None:
            have = ", ".join(sorted(table)) or "none"
            return False, f"no /metrics snapshot {when} for role '{role}' (have: {have})"
        if snap.error:
            return False, f"/metrics {when} for role '{role}' failed: {snap.error}"
        snaps.append(snap)
    before_snap, after_snap = snaps
    before = before_snap.value(metric, **labels)

    def short(after: MetricsSnapshot) -> bool:
        return after.value(metric, **labels) - before < p["min_delta"] - _EPS

    waited = 0.0
    if short(after_snap) and result.scrape is not None:
        budget = _wait_for(result, p["within_s"])
        started = time.monotonic()
        while short(after_snap) and time.monotonic() - started + _POLL_METRICS_S <= budget + _EPS:
            time.sleep(_POLL_METRICS_S)
            fresh = (result.scrape() or {}).get(role)
            if fresh is not None and not fresh.error:
                after_snap = result.metrics_after[role] = fresh
        waited = time.monotonic() - started
    after = after_snap.value(metric, **labels)
    change = after - before
    series = before_snap.has(metric, **labels) or after_snap.has(metric, **labels)
    text = f"{role} {metric}{_labels_text(labels)}"
    if not series:
        empty = _empty(p, f"{text}: no such series before or after the run")
        if empty:
            return empty
    ok = change >= p["min_delta"] - _EPS and (p["max_delta"] is None or change <= p["max_delta"] + _EPS)
    bound = f"min +{_fmt(p['min_delta'])}" + ("" if p["max_delta"] is None else f", max +{_fmt(p['max_delta'])}")
    seen = "" if after_snap.has(metric, **labels) else " (no such series after the run)"
    late = f", re-scraped for {waited:.1f}s" if waited else ""
    return ok, f"{text}: {_fmt(before)} -> {_fmt(after)} ({bound}){seen}{late}"


@register_check(
    "log_pattern",
    [
        Field("role", "str", required=True),
        Field("pattern", "str", required=True),
        Field("present", "bool", default=True),
        Field("regex", "bool", default=False),
        Field("ignore", "str_list", default=BENIGN_LOG_LINES),
        Field("within_s", "number", default=DEFAULT_WITHIN_S, min=0),
    ],
    label=lambda p: f"log[{p['role']}] {'has' if p['present'] else 'lacks'} {p['pattern']!r}",
)
def _log_pattern(p: dict, result: RunResult) -> tuple[bool, str]:
    """A present pattern is polled for up to `within_s` (within the run's wait budget): a
    component may write the line when it next gets to it. An absent one is judged at once."""
    role = p["role"]
    # A glob role ("worker-*") reads every matching role's log: which worker served (or was
    # faulted) is only known at run time.
    roles = sorted(r for r in result.log_paths if fnmatch.fnmatchcase(r, role)) if _is_glob(role) else [role]
    paths = [result.log_paths[r] for r in roles if r in result.log_paths]
    if not paths:
        return _empty(p, f"no log for role '{role}' (have: {', '.join(sorted(result.log_paths)) or 'none'})") or (
            not p["present"], f"no log for role '{role}' (allow_empty)")
    files = [f for path in paths for f in log_files(path)]
    if not files:
        return _empty(p, f"log of '{role}' not found: {', '.join(paths)}") or (
            not p["present"], f"log of '{role}' not found (allow_empty)")
    waited = ""
    if p["present"]:
        budget = _wait_for(result, p["within_s"])
        started = time.monotonic()
        line = wait_for_line(files, p["pattern"], p["ignore"], p["regex"], timeout_s=budget, interval_s=_POLL_LOG_S)
        if line is not None and time.monotonic() - started > _POLL_LOG_S:
            waited = f" (after waiting {time.monotonic() - started:.1f}s)"
    hits = [line for f in files for line in scan_log(f, p["pattern"], p["ignore"], p["regex"])]
    if p["present"] and not hits and line is not None:
        hits = [line]  # written between the poll and the scan, without its newline yet
    if not hits and not any(_size(f) for f in files):
        empty = _empty(p, f"log of '{role}' is empty: {', '.join(files)}")
        if empty:
            return empty
    first = (hits[0][:200] + ("…" if len(hits[0]) > 200 else "")) if hits else ""
    if p["present"]:
        if hits:
            return True, f"{len(hits)} line(s){waited}, first: {first}"
        return False, f"not found in {', '.join(files)} (waited {_fmt(budget, 1)}s)"
    return (False, f"{len(hits)} line(s), first: {first}") if hits else (True, "not found, as expected")


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _is_glob(role: str) -> bool:
    return any(c in role for c in "*?[")


@register_check(
    "streams_complete_after_fault",
    [Field("expected_tokens", "int", default=None, min=1), Field("min_streams", "int", default=1, min=0)],
    label=lambda p: "streams_complete_after_fault",
)
def _streams_complete_after_fault(p: dict, result: RunResult) -> tuple[bool, str]:
    if result.fault_time is None:
        return False, "no fault was injected"
    streams = [
        r
        for r in result.records
        if r.stream and r.outcome != CANCELLED and classify(r, result.fault_time) in (SPANNING, AFTER)
    ]
    if not streams:
        empty = _empty(p, "no stream (not cancelled) in spanning/after")
        if empty:
            return empty
    if len(streams) < p["min_streams"]:
        return False, f"{len(streams)} stream(s) in spanning/after, need at least {p['min_streams']}"
    problems = []
    counted = continuity = 0
    for r in streams:
        why = []
        if r.outcome != OK:
            why.append(r.outcome)
        expected = p["expected_tokens"] or r.expected_tokens or result.expected_tokens
        if expected:
            counted += 1
            if r.output_tokens != expected:
                why.append(f"tokens {r.output_tokens}/{expected}")
        if r.token_check is not None:
            continuity += 1
            if r.token_check != "ok":
                why.append(f"token_check {r.token_check}")
        if why:
            problems.append(f"{_request_label(r)}: {', '.join(why)}")
    spanning = sum(1 for r in streams if classify(r, result.fault_time) == SPANNING)
    checked = f"token count checked on {counted}, continuity on {continuity}"
    if problems:
        shown = "; ".join(problems[:3]) + (" …" if len(problems) > 3 else "")
        return False, f"{len(problems)} of {len(streams)} stream(s) incomplete ({checked}): {shown}"
    return True, f"{len(streams)} stream(s) complete, {spanning} spanning ({checked})"


@register_check(
    "p99_latency_ratio",
    [
        Field("max_ratio", "number", required=True, min=0),
        Field("phase", "str", default=AFTER, choices=STAT_GROUPS),
        Field("baseline", "str", default="before", choices=STAT_GROUPS),
    ],
    label=lambda p: f"p99_latency[{p['phase']}] <= {p['max_ratio']} x {p['baseline']}",
)
def _p99_latency_ratio(p: dict, result: RunResult) -> tuple[bool, str]:
    now = _phase(result, p["phase"])["latency_p99_s"]
    base = _phase(result, p["baseline"])["latency_p99_s"]
    if now is None or base is None:
        missing = p["phase"] if now is None else p["baseline"]
        return _empty(p, f"no successful request in phase '{missing}'") or (
            True, f"no successful request in phase '{missing}' (allow_empty)")
    if base <= 0:
        return False, f"p99 latency of '{p['baseline']}' is {base}, no ratio"
    ratio = now / base
    return ratio <= p["max_ratio"] + _EPS, (
        f"p99 {p['phase']} {now:.3f}s / {p['baseline']} {base:.3f}s = {ratio:.2f} (max {p['max_ratio']})"
    )


@register_check(
    "no_failures",
    [Field("phase", "str", default=ALL, choices=STAT_GROUPS), Field("min_requests", "int", default=1, min=0)],
    label=lambda p: f"no_failures[{p['phase']}]",
)
def _no_failures(p: dict, result: RunResult) -> tuple[bool, str]:
    """No request of the phase failed. Cancelled requests did not fail: a phase of only
    cancelled requests passes with `min_requests: 0`; a phase without any request is empty."""
    s = _phase(result, p["phase"])
    decided = s["success"] + s["failed"]
    if s["count"] == 0:
        empty = _empty(p, f"no request in '{p['phase']}'")
        if empty:
            return empty
    if decided < p["min_requests"]:
        return False, f"{decided} ok/failed request(s) in '{p['phase']}', need at least {p['min_requests']}"
    if s["failed"]:
        return False, f"{s['failed']} failed of {decided}: {_failure_breakdown(s)}"
    return True, f"{s['success']} ok, 0 failed" + (f", {s['cancelled']} cancelled" if s["cancelled"] else "")


@register_check(
    "min_failures",
    [
        Field("n", "int", required=True, min=1),
        Field("phase", "str", default=ALL, choices=STAT_GROUPS),
        # Count only this outcome: a drill demonstrating a failure mode names the mode it expects.
        Field("outcome", "str", default=None, choices=FAILURE_OUTCOMES),
    ],
    label=lambda p: f"min_failures[{p['phase']}] >= {p['n']}" + (f" {p['outcome']}" if p["outcome"] else ""),
)
def _min_failures(p: dict, result: RunResult) -> tuple[bool, str]:
    s = _phase(result, p["phase"])
    if s["count"] == 0:
        empty = _empty(p, f"no request in '{p['phase']}'")
        if empty:
            return empty
    if p["outcome"]:
        n = s["outcomes"].get(p["outcome"], 0)
        detail = f"{n} {p['outcome']} (need >= {p['n']}); all failed: {_failure_breakdown(s)}"
        return n >= p["n"], detail
    detail = f"{s['failed']} failed (need >= {p['n']}): {_failure_breakdown(s)}"
    return s["failed"] >= p["n"], detail


_LOGGED_ID = re.compile(r'request_id="?([0-9A-Za-z][\w-]*)')


def _ids_logged(paths: Iterable[str], line_text: str) -> set[frozenset[str]]:
    """The `request_id=` values of each distinct line of `paths` (and their previous logs) that
    contains `line_text`, one set per line: Dynamo's frontend puts its HTTP span's id beside the
    one its workers log."""
    return {frozenset(_LOGGED_ID.findall(line)) for path in paths for f in log_files(path)
            for line in scan_log(f, line_text)} - {frozenset()}


@register_check(
    "cancellations_counted",
    [
        Field("roles", "str", required=True),  # a role or a glob, e.g. "worker-*"
        Field("name", "str", required=True),
        Field("labels", "labels", default=None),
        Field("request_type", "str", default=None, choices=("stream", "unary")),
        Field("allow_unknown_metric", "bool", default=False),
        Field("within_s", "number", default=DEFAULT_WITHIN_S, min=0),
        # Count only the cancels that reached `roles`: the ids `cancelled_in`'s log names on its
        # `cancelled_line`s that also appear on a `received_line` of one of `roles`.
        Field("received_line", "str", default=None),
        Field("cancelled_in", "str", default="frontend"),
        Field("cancelled_line", "str", default="route request cancelled"),
    ],
    label=lambda p: f"cancellations_counted[{p['roles']}] {p['name']}{_labels_text(p['labels'])}",
)
def _cancellations_counted(p: dict, result: RunResult) -> tuple[bool, str]:
    """Every request the clients cancelled is counted by the server, exactly once: the metric's
    increase, summed over the matching roles, equals the number of `cancelled` records (of the
    given request_type: stream or unary). No cancelled request is an empty set. While the count
    is short and `result.scrape` is set, re-scrape (as `metric_increased` does): a worker hears
    of the last cancel one hop after the frontend, possibly after the run's final scrape.

    With `received_line`, the roles owe a count only for the cancels that reached them: a
    client that hangs up while the frontend is still handing the request over leaves a worker
    nothing to cancel. Which ones reached them is read from the logs (the frontend names every
    cancelled request, a worker every request it received); the frontend must name at least as
    many as the clients cancelled, so a log without those lines cannot excuse a missing count."""
    roles = sorted(r for r in result.metrics_after if fnmatch.fnmatchcase(r, p["roles"]))
    if not roles:
        return False, f"no /metrics snapshot for roles '{p['roles']}' (have: {', '.join(sorted(result.metrics_after)) or 'none'})"
    labels = p["labels"] or {}
    wanted = {"stream": True, "unary": False}.get(p["request_type"] or "")
    cancelled = sum(1 for r in result.records if r.outcome == CANCELLED and (wanted is None or r.stream == wanted))
    if p["received_line"] and p["cancelled_in"] not in result.log_paths:
        return False, f"no log for role '{p['cancelled_in']}' (cancelled_in; have: {', '.join(sorted(result.log_paths)) or 'none'})"

    def owed() -> tuple[int, str, bool]:
        """How many cancels the roles must count, how that number was reached, and whether the
        cancelling role's log names every client cancel."""
        if not p["received_line"]:
            return cancelled, f"clients cancelled {cancelled}", True
        named = _ids_logged([result.log_paths[p["cancelled_in"]]], p["cancelled_line"])
        received = set().union(*_ids_logged([result.log_paths[r] for r in roles if r in result.log_paths],
                                            p["received_line"]))
        reached = [ids for ids in named if ids & received]
        how = (f"clients cancelled {cancelled}, {p['cancelled_in']} logged {len(named)} '{p['cancelled_line']}', "
               f"{len(reached)} of them '{p['received_line']}' by {', '.join(roles)}")
        return len(reached), how, len(named) >= cancelled

    def counted() -> float | str:
        change = 0.0
        for role in roles:
            after, before = result.metrics_after[role], result.metrics_before.get(role)
            if after.error or (before is not None and before.error):
                return f"/metrics of '{role}' failed: {after.error or before.error}"
            change += after.value(p["name"], **labels) - (before.value(p["name"], **labels) if before else 0.0)
        return change

    def settled(change: float | str, expected: int) -> bool:
        # A counter only grows: more than owed is final, unless what is owed is read from logs
        # that may still be catching up.
        if not isinstance(change, float):
            return True
        return change > expected - 0.5 and (change < expected + 0.5 or not p["received_line"])

    change, (expected, how, all_named) = counted(), owed()
    waited = 0.0
    if not settled(change, expected) and result.scrape is not None:
        budget = _wait_for(result, p["within_s"])
        started = time.monotonic()
        while not settled(change, expected) and time.monotonic() - started + _POLL_METRICS_S <= budget + _EPS:
            time.sleep(_POLL_METRICS_S)
            fresh = result.scrape() or {}
            for role in roles:
                if fresh.get(role) is not None and not fresh[role].error:
                    result.metrics_after[role] = fresh[role]
            change, (expected, how, all_named) = counted(), owed()
        waited = time.monotonic() - started
    if isinstance(change, str):
        return False, change
    late = f", re-scraped for {waited:.1f}s" if waited else ""
    detail = f"{how}, server counted {_fmt(change)} ({', '.join(roles)}){late}"
    if cancelled == 0:
        empty = _empty(p, detail)
        if empty:
            return empty
    if not all_named:
        return False, f"{detail}: {p['cancelled_in']}'s log names fewer cancelled requests than the clients cancelled"
    if p["received_line"] and expected == 0:  # no cancel reached them (or a received_line that matches nothing)
        empty = _empty(p, detail)
        if empty:
            return empty
    return abs(change - expected) < 0.5, detail


@register_check(
    "fault_window",
    [
        Field("fault", "str", required=True),
        Field("min_affected_during", "int", default=1, min=0),
        Field("max_failed_after", "int", default=0, min=0),
        Field("max_stalled_after", "int", default=0, min=0),
        Field("min_ok_after", "int", default=1, min=0),
    ],
    label=lambda p: f"fault_window[{p['fault']}]",
)
def _fault_window(p: dict, result: RunResult) -> tuple[bool, str]:
    """A fault with an end (a partition lifted, a SIGCONT): while it was in effect at least
    `min_affected_during` requests failed, stalled or were cut — it did something — and after
    its end at most `max_failed_after` failed and `max_stalled_after` stalled, with at least
    `min_ok_after` ok (`phases.window_stats`)."""
    entry = next((e for e in result.per_fault if e.get("name") == p["fault"]), None)
    if entry is None:
        names = ", ".join(e.get("name") or "?" for e in result.per_fault) or "none"
        return False, f"no fault named {p['fault']!r} (faults: {names})"
    if entry.get("status") != "injected":
        return False, f"{p['fault']} was not injected ({entry.get('status')}: {entry.get('error')})"
    w = entry.get("window")
    if w is None:
        return False, f"{p['fault']}'s effect never ended (no end to compare before and after)"
    d, a = w["during"], w["after_end"]
    affected = d["failed"] + d["stalled"] + d["cut_streams"]
    problems = []
    if affected < p["min_affected_during"]:
        problems.append(f"only {affected} request(s) affected during it (need >= {p['min_affected_during']})")
    if a["failed"] > p["max_failed_after"]:
        problems.append(f"{a['failed']} failed after it (max {p['max_failed_after']}): {_failure_breakdown(a)}")
    if a["stalled"] > p["max_stalled_after"]:
        problems.append(f"{a['stalled']} stalled after it (max {p['max_stalled_after']})")
    if a["success"] < p["min_ok_after"]:
        problems.append(f"{a['success']} ok after it (need >= {p['min_ok_after']})")
    detail = (f"in effect {w['in_effect_s']:.2f} s; during: {d['count']} request(s), {d['failed']} failed, "
              f"{d['stalled']} stalled (>= {w['stall_s']:g} s more than usual), {d['cut_streams']} cut; after: {a['count']}, "
              f"{a['success']} ok, {a['failed']} failed, {a['stalled']} stalled")
    return not problems, ("; ".join(problems) + " — " + detail) if problems else detail


@register_check(
    "gpu_metric",
    [
        Field("field", "str", required=True, choices=("util_pct", "mem_used_mib", "temp_c", "sm_clock_mhz", "power_w")),
        Field("stat", "str", default="max", choices=("min", "mean", "max")),
        Field("window", "str", default="run"),  # before | spanning | after | run | fault:<name>
        Field("gpu", "int_or_str", default=None),  # index, UUID or PCI bus id; None: every monitored GPU
        Field("min", "number", default=None),
        Field("max", "number", default=None),
    ],
    label=lambda p: (f"gpu_metric[{p['window']}] {p['stat']} {p['field']}"
                     + ("" if p["gpu"] is None else f" of GPU {p['gpu']}")
                     + ("" if p["min"] is None else f" >= {_fmt(p['min'])}")
                     + ("" if p["max"] is None else f" <= {_fmt(p['max'])}")),
)
def _gpu_metric(p: dict, result: RunResult) -> tuple[bool, str]:
    """A GPU figure of one window (`ftlocust.gpu_monitor.summarize`, the summary's `gpus`)
    within [min, max], for the GPU named (or every monitored one). No sample in the window —
    the monitor never ran, the fault never happened — is an empty set."""
    from ftlocust import gpu_monitor

    gpus = gpu_monitor.summarize(result.gpu_samples, result.faults)
    if p["gpu"] is not None:
        gpus = [g for g in gpus if gpu_monitor.matches(g, p["gpu"])]
    what = f"{p['stat']} {p['field']} in window '{p['window']}'"
    judged, problems, empty = [], [], []
    for g in gpus:
        w = gpu_monitor.window_of(g, p["window"])
        value = (w.get(p["field"]) or {}).get(p["stat"]) if w else None
        if value is None:
            empty.append(f"GPU {g['index']}")
            continue
        judged.append(f"GPU {g['index']} {_fmt(value, 1)} ({w['samples']} samples)")
        if (p["min"] is not None and value < p["min"] - _EPS) or (p["max"] is not None and value > p["max"] + _EPS):
            problems.append(f"GPU {g['index']} {_fmt(value, 1)}")
    bound = " and ".join(b for b in (None if p["min"] is None else f">= {_fmt(p['min'])}",
                                     None if p["max"] is None else f"<= {_fmt(p['max'])}") if b)
    if not gpus or empty:
        who = "no GPU sampled" + ("" if p["gpu"] is None else f" matching {p['gpu']!r}") if not gpus \
            else f"no {p['field']} sample of {', '.join(empty)}"
        verdict = _empty(p, f"{who} in window '{p['window']}'")
        if verdict:
            return verdict
        if not judged:
            return True, f"{who} in window '{p['window']}' (allow_empty)"
    if problems:
        return False, f"{what} not {bound}: {', '.join(problems)}; judged: {', '.join(judged)}"
    return True, f"{what} {bound}: {', '.join(judged)}"


@register_check(
    "process_exit",
    [
        Field("role", "str", required=True),  # a role or a glob (`worker-*`)
        Field("exit_code", "int", default=None, min=0, max=255),
        Field("signal", "str", default=None, choices=tuple(s.name for s in signal.Signals)),
    ],
    label=lambda p: f"{p['role']} exited during the run" + (
        f" with status {p['exit_code']}" if p["exit_code"] is not None else
        f" by {p['signal']}" if p["signal"] is not None else ""),
)
def _process_exit(p: dict, result: RunResult) -> tuple[bool, str]:
    """A process of `role` ended during the run on its own or by a fault (not stopped by
    ftlocust), with `exit_code` or by `signal` when given. What the server did, from the
    process table: vLLM's API server exits 0 when its engine dies, which a supervisor that
    restarts only on failure never restarts."""
    if result.exits is None:
        return _empty(p, "this target does not record how its processes ended") or (
            False, "this target does not record how its processes ended")
    role = p["role"]
    mine = [e for e in result.exits if fnmatch.fnmatchcase(e["role"], role)]
    if not mine:
        others = ", ".join(_exit_text(e) for e in result.exits) or "none"
        return False, f"no process of {role} exited during the run (exits: {others})"
    wanted = [e for e in mine if (p["exit_code"] is None or e.get("exit_code") == p["exit_code"])
              and (p["signal"] is None or e.get("signal") == p["signal"])]
    detail = "; ".join(_exit_text(e) for e in mine)
    return bool(wanted), detail


def _exit_text(e: Mapping) -> str:
    how = f"status {e['exit_code']}" if e.get("exit_code") is not None else f"signal {e.get('signal')}"
    return f"{e['role']} (pid {e['pid']}) {how}"
