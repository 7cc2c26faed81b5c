"""Checks: data-driven assertions over one run's result, each giving a `Verdict`.

A scenario lists checks as data, e.g. `{"check": "success_ratio", "phase": "after", "min": 0.99}`
or just `"no_truncated_streams"`. `build_checks` validates them before any load starts (unknown
check, unknown or missing field, wrong type, unknown phase or metric → one-line `ConfigError`);
`evaluate` runs them and never raises: a check that breaks becomes a failed verdict.
Every spec may carry `title` to replace the generated verdict name.

New kinds plug in with `register_check(kind, fields, label)` on a `(params, result) ->
(passed, detail)` function.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from ftlocust.errors import ConfigError
from ftlocust.evidence import BENIGN_LOG_LINES, MetricsSnapshot, family_base, log_files, scan_log
from ftlocust.phases import ALL, STAT_GROUPS, FaultEvent, classify, group_records, phase_stats, recovery
from ftlocust.records import AFTER, CANCELLED, FAILURE_OUTCOMES, OK, SPANNING, TRUNCATED, RequestRecord

RECOVERY_METRICS = ("time_to_first_success_s", "disruption_window_s", "time_to_steady_state_s", "server_recovery_s")

_EPS = 1e-9


@dataclass(frozen=True)
class Verdict:
    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass
class RunResult:
    """What checks read. `phases` is `phase_stats(...)`, `recovery` is `recovery(...)` (plus
    `server_recovery_s` when the hooks measured it); snapshots and logs are keyed by role."""

    records: list[RequestRecord] = field(default_factory=list)
    fault_time: float | None = None
    faults: list[FaultEvent] = field(default_factory=list)
    phases: dict = field(default_factory=dict)
    recovery: dict = field(default_factory=dict)
    metrics_before: dict[str, MetricsSnapshot] = field(default_factory=dict)
    metrics_after: dict[str, MetricsSnapshot] = field(default_factory=dict)
    log_paths: dict[str, str] = field(default_factory=dict)
    expected_tokens: int | None = None

    @classmethod
    def from_records(
        cls,
        records: Iterable[RequestRecord],
        faults: Iterable[FaultEvent] = (),
        window_s: float = 5.0,
        tolerance: float = 0.05,
        **rest: Any,
    ) -> "RunResult":
        """Compute fault_time (first fault), phases and recovery from the records."""
        records = list(records)
        faults = sorted(faults, key=lambda f: f.injected_at)
        fault_time = faults[0].injected_at if faults else None
        return cls(
            records=records,
            fault_time=fault_time,
            faults=faults,
            phases=phase_stats(records, fault_time),
            recovery=recovery(records, fault_time, window_s, tolerance),
            **rest,
        )


# --- metric catalog -------------------------------------------------------------------------

# Names the Dynamo dialect exposes (reference/dynamo-local.md §3, dynamo-ft-suite.md §7.5); the
# reference deployment speaks the same dialect. Stored by family base (no `_total` etc.).
_DYNAMO_METRICS = [
    *(
        "dynamo_frontend_" + n
        for n in (
            "requests_total", "requests_started_total", "inflight_requests", "active_requests",
            "queued_requests", "failures_total", "disconnected_clients",
            "time_to_first_token_seconds", "inter_token_latency_seconds", "request_duration_seconds",
            "input_sequence_tokens", "output_sequence_tokens", "output_tokens_total", "cached_tokens",
            "model_migration_limit", "model_ready", "model_context_length", "model_kv_cache_block_size",
            "model_max_num_batched_tokens", "model_max_num_seqs", "model_total_kv_blocks",
            "stage_duration_seconds", "stage_requests", "template_seconds", "tokenize_seconds",
            "tokenizer_latency_ms", "detokenize_token_count", "detokenize_total_us",
            "event_loop_delay_seconds", "event_loop_stall_total",
            "worker_last_time_to_first_token_seconds", "worker_last_inter_token_latency_seconds",
            "worker_last_input_sequence_tokens",
            "images_per_request", "image_tokens_per_request", "videos_per_request", "audio_per_request",
            "model_migration_total", "model_migration_duration_seconds",
            "model_migration_max_seq_len_exceeded_total", "model_cancellation_total",
            "model_rejection_total",
        )
    ),
    *(
        "dynamo_component_" + n
        for n in (
            "requests_total", "inflight_requests", "cancellation_total", "request_duration_seconds",
            "request_bytes_total", "response_bytes_total", "uptime_seconds",
            "kv_publisher_engines_dropped_events_total",
        )
    ),
    *(
        "dynamo_component_router_" + n
        for n in (
            "requests_total", "requests_started_total", "time_to_first_token_seconds",
            "inter_token_latency_seconds", "input_sequence_tokens", "output_sequence_tokens", "kv_hit_rate",
        )
    ),
    *(
        "dynamo_router_" + n
        for n in (
            "requests_total", "time_to_first_token_seconds", "inter_token_latency_seconds",
            "input_sequence_tokens", "output_sequence_tokens", "kv_hit_rate",
        )
    ),
    "dynamo_request_plane_inflight_requests", "dynamo_request_plane_queue_seconds",
    "dynamo_request_plane_send_seconds", "dynamo_request_plane_roundtrip_ttft_seconds",
    "dynamo_transport_tcp_errors_total", "dynamo_transport_tcp_bytes_sent_total",
    "dynamo_transport_tcp_bytes_received_total", "dynamo_transport_tcp_accept_backoff_total",
    "dynamo_engine_request", "dynamo_request_queue", "dynamo_rejection_request_total",
    *(
        "vllm:" + n
        for n in (
            "num_requests_running", "num_requests_waiting", "time_to_first_token_seconds",
            "inter_token_latency_seconds", "e2e_request_latency_seconds", "request_latency_seconds",
            "kv_cache_usage_perc", "gpu_cache_usage_perc", "num_preemptions_total",
            "nixl_num_kv_expired_reqs",
        )
    ),
]
# Families documented only by prefix.
_DYNAMO_METRIC_PATTERNS = [
    "dynamo_frontend_tokenizer_cache_*",
    "dynamo_component_router_*",
    "dynamo_router_overhead_*_ms",
    "dynamo_tokio_*",
    "dynamo_work_handler_*",
    "process_*",  # prometheus_client's default collectors
    "python_*",
]

KNOWN_METRICS: set[str] = set(_DYNAMO_METRICS)
KNOWN_METRIC_PATTERNS: list[str] = list(_DYNAMO_METRIC_PATTERNS)


def register_metrics(*names: str) -> None:
    """Add metric names (or fnmatch patterns with `*`) a target exposes to the catalog."""
    for n in names:
        (KNOWN_METRIC_PATTERNS.append if "*" in n else KNOWN_METRICS.add)(n)


def is_known_metric(name: str) -> bool:
    """In the catalog, with or without a sample suffix (`_total`, `_count`, `_bucket`, ...)."""
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

# Unknown fields that are a known slip for another: (kind, written) -> meant.
_FIELD_HINTS = {("metric_increased", "metric"): "name"}


def register_check(kind: str, fields: Iterable[Field], label: Callable[[dict], str]):
    """Decorator registering `run(params, result) -> (passed, detail)` as check `kind`."""

    def deco(run):
        CHECK_TYPES[kind] = CheckType(kind, {f.name: f for f in (*fields, _TITLE_FIELD)}, label, run)
        return run

    return deco


def _type_error(f: Field, value: Any) -> str | None:
    """Why `value` is wrong for field `f`, or None when it is right."""
    t = f.type
    if t == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
    elif t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be an integer"
    elif t == "bool":
        if not isinstance(value, bool):
            return "must be true or false"
    elif t == "str":
        if not isinstance(value, str) or not value:
            return "must be a non-empty string"
    elif t == "labels":
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, (str, int, float)) and not isinstance(v, bool)
            for k, v in value.items()
        ):
            return "must be a mapping of label name to value"
    elif t == "str_list":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            return "must be a list of strings"
    else:  # pragma: no cover - a registration mistake, not user input
        raise AssertionError(f"unknown field type {t}")
    if f.choices is not None and value not in f.choices:
        return "must be one of " + ", ".join(map(str, f.choices))
    if f.min is not None and value < f.min:
        return f"must be >= {f.min}" if f.max is None else f"must be between {f.min} and {f.max}"
    if f.max is not None and value > f.max:
        return f"must be <= {f.max}" if f.min is None else f"must be between {f.min} and {f.max}"
    return None


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


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
    if isinstance(spec, str):
        spec = {"check": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a check name or a mapping with 'check', got {type(spec).__name__}")
    kind = spec.get("check")
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{where}: missing field 'check' (the check's kind, e.g. success_ratio)")
    ctype = CHECK_TYPES.get(kind)
    if ctype is None:
        raise ConfigError(
            f"{where}: unknown check '{kind}' (known: {', '.join(sorted(CHECK_TYPES))}"
            f"{_did_you_mean(kind, CHECK_TYPES)})"
        )
    here = f"{where} ({kind})"
    params: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "check":
            continue
        f = ctype.fields.get(key)
        if f is None:
            meant = _FIELD_HINTS.get((kind, key))
            hint = f"; did you mean '{meant}'?" if meant else _did_you_mean(str(key), ctype.fields)
            raise ConfigError(f"{here}: unknown field '{key}' (expected: {', '.join(sorted(ctype.fields))}{hint})")
        why = _type_error(f, value)
        if why:
            raise ConfigError(f"{here}: field '{key}' {why}, got {value!r}")
        params[key] = value
    for f in ctype.fields.values():
        if f.name not in params:
            if f.required:
                raise ConfigError(f"{here}: missing field '{f.name}' ({f.type})")
            params[f.name] = f.default
    if "labels" in params and params["labels"] is not None:
        params["labels"] = {k: str(v) for k, v in params["labels"].items()}
    _validate_extra(kind, params, here)
    title = params.pop("title") or ctype.label(params)
    return Check(name=title, kind=kind, params=params)


def _validate_extra(kind: str, params: dict, here: str) -> None:
    """Checks across fields: metric names against the catalog, regexes compile."""
    if kind in ("metric_increased", "cancellations_counted") and not params.get("allow_unknown_metric"):
        metric = params["name"]
        if not is_known_metric(metric):
            hint = _did_you_mean(metric, KNOWN_METRICS)
            raise ConfigError(
                f"{here}: field 'name': unknown metric '{metric}'{hint} "
                f"(set allow_unknown_metric: true to use it anyway)"
            )
    if params.get("regex") and "pattern" in params:
        try:
            re.compile(params["pattern"])
        except re.error as e:
            raise ConfigError(f"{here}: field 'pattern' is not a valid regex: {e}") from None


def build_checks(specs: Iterable[Mapping | str] | None, where: str = "checks") -> list[Check]:
    """Validate and build every spec; the first bad one raises `ConfigError` naming
    `where[i]`, the check kind and the field."""
    if specs is None:
        return []
    if isinstance(specs, (str, Mapping)):
        raise ConfigError(f"{where}: expected a list of checks, got {type(specs).__name__}")
    return [build_check(spec, f"{where}[{i}]") for i, spec in enumerate(specs)]


def evaluate(checks: Iterable[Check], result: RunResult) -> list[Verdict]:
    """Run every check; one that raises becomes a failed verdict carrying the error."""
    verdicts = []
    for check in checks:
        try:
            verdicts.append(check.evaluate(result))
        except Exception as e:  # a broken check must not cost the report
            verdicts.append(Verdict(check.name, False, f"check raised {type(e).__name__}: {e}"))
    return verdicts


def all_passed(verdicts: Iterable[Verdict]) -> bool:
    return all(v.passed for v in verdicts)


# --- helpers for check bodies -----------------------------------------------------------------


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
        return False, f"no ok or failed request in phase '{p['phase']}'"
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
        return bool(p["allow_missing"]), f"{p['metric']} not measured (no recovery observed)"
    return value <= p["max_s"] + _EPS, f"{p['metric']} = {value:.3f}s (max {p['max_s']}s)"


@register_check(
    "no_truncated_streams",
    [Field("phase", "str", default=ALL, choices=STAT_GROUPS)],
    label=lambda p: "no_truncated_streams" + ("" if p["phase"] == ALL else f"[{p['phase']}]"),
)
def _no_truncated_streams(p: dict, result: RunResult) -> tuple[bool, str]:
    cut = [r for r in _records_in(result, p["phase"]) if r.outcome == TRUNCATED]
    if not cut:
        return True, "no truncated stream"
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
    ],
    label=lambda p: f"metric_increased[{p['role']}] {p['name']}{_labels_text(p['labels'])} by >= {_fmt(p['min_delta'])}",
)
def _metric_increased(p: dict, result: RunResult) -> tuple[bool, str]:
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
    before, after = (s.value(metric, **labels) for s in snaps)
    change = after - before
    ok = change >= p["min_delta"] - _EPS and (p["max_delta"] is None or change <= p["max_delta"] + _EPS)
    bound = f"min +{_fmt(p['min_delta'])}" + ("" if p["max_delta"] is None else f", max +{_fmt(p['max_delta'])}")
    seen = "" if snaps[1].has(metric, **labels) else " (no such series after the run)"
    return ok, f"{role} {metric}{_labels_text(labels)}: {_fmt(before)} -> {_fmt(after)} ({bound}){seen}"


@register_check(
    "log_pattern",
    [
        Field("role", "str", required=True),
        Field("pattern", "str", required=True),
        Field("present", "bool", default=True),
        Field("regex", "bool", default=False),
        Field("ignore", "str_list", default=BENIGN_LOG_LINES),
    ],
    label=lambda p: f"log[{p['role']}] {'has' if p['present'] else 'lacks'} {p['pattern']!r}",
)
def _log_pattern(p: dict, result: RunResult) -> tuple[bool, str]:
    role = p["role"]
    # A glob role ("worker-*") reads every matching role's log: which worker served (or was
    # faulted) is only known at run time.
    roles = sorted(r for r in result.log_paths if fnmatch.fnmatchcase(r, role)) if _is_glob(role) else [role]
    paths = [result.log_paths[r] for r in roles if r in result.log_paths]
    if not paths:
        return False, f"no log for role '{role}' (have: {', '.join(sorted(result.log_paths)) or 'none'})"
    files = [f for path in paths for f in log_files(path)]
    if not files:
        return False, f"log of '{role}' not found: {', '.join(paths)}"
    hits = [line for f in files for line in scan_log(f, p["pattern"], p["ignore"], p["regex"])]
    first = (hits[0][:200] + ("…" if len(hits[0]) > 200 else "")) if hits else ""
    if p["present"]:
        return (True, f"{len(hits)} line(s), first: {first}") if hits else (False, f"not found in {', '.join(files)}")
    return (False, f"{len(hits)} line(s), first: {first}") if hits else (True, "not found, as expected")


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
        return False, f"no successful request in phase '{missing}'"
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
    s = _phase(result, p["phase"])
    decided = s["success"] + s["failed"]
    if decided < p["min_requests"]:
        return False, f"{decided} ok/failed request(s) in '{p['phase']}', need at least {p['min_requests']}"
    if s["failed"]:
        return False, f"{s['failed']} failed of {decided}: {_failure_breakdown(s)}"
    return True, f"{s['success']} ok, 0 failed"


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
    if p["outcome"]:
        n = s["outcomes"].get(p["outcome"], 0)
        detail = f"{n} {p['outcome']} (need >= {p['n']}); all failed: {_failure_breakdown(s)}"
        return n >= p["n"], detail
    detail = f"{s['failed']} failed (need >= {p['n']}): {_failure_breakdown(s)}"
    return s["failed"] >= p["n"], detail


@register_check(
    "cancellations_counted",
    [
        Field("roles", "str", required=True),  # a role or a glob, e.g. "worker-*"
        Field("name", "str", required=True),
        Field("labels", "labels", default=None),
        Field("request_type", "str", default=None, choices=("stream", "unary")),
        Field("allow_unknown_metric", "bool", default=False),
    ],
    label=lambda p: f"cancellations_counted[{p['roles']}] {p['name']}{_labels_text(p['labels'])}",
)
def _cancellations_counted(p: dict, result: RunResult) -> tuple[bool, str]:
    """Every request the clients cancelled is counted by the server, exactly once: the metric's
    increase, summed over the matching roles, equals the number of `cancelled` records (of the
    given request_type: stream or unary)."""
    roles = sorted(r for r in result.metrics_after if fnmatch.fnmatchcase(r, p["roles"]))
    if not roles:
        return False, f"no /metrics snapshot for roles '{p['roles']}' (have: {', '.join(sorted(result.metrics_after)) or 'none'})"
    labels = p["labels"] or {}
    change = 0.0
    for role in roles:
        after, before = result.metrics_after[role], result.metrics_before.get(role)
        if after.error or (before is not None and before.error):
            return False, f"/metrics of '{role}' failed: {after.error or before.error}"
        change += after.value(p["name"], **labels) - (before.value(p["name"], **labels) if before else 0.0)
    wanted = {"stream": True, "unary": False}.get(p["request_type"] or "")
    cancelled = sum(1 for r in result.records if r.outcome == CANCELLED and (wanted is None or r.stream == wanted))
    ok = abs(change - cancelled) < 0.5 and cancelled > 0
    return ok, f"clients cancelled {cancelled}, server counted {_fmt(change)} ({', '.join(roles)})"
