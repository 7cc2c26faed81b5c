"""Check specs (validation, ConfigError messages) and every check's pass and fail cases."""

import pytest

from ftlocust import checks
from ftlocust.checks import (
    KNOWN_METRICS,
    Field,
    RunResult,
    Verdict,
    all_passed,
    build_check,
    build_checks,
    evaluate,
    is_known_metric,
    register_check,
    register_metrics,
)
from ftlocust.errors import ConfigError
from ftlocust.evidence import MetricsSnapshot
from ftlocust.phases import FaultEvent, phase_stats
from ftlocust.records import CANCELLED, CONNECTION_ERROR, OK, REJECTED, STREAM_ERROR_EVENT, TRUNCATED

from tests.support.factories import T_F, rec  # noqa: E402


def result_of(records, fault=True, **rest):
    faults = [FaultEvent("kill", "process", "worker-1", T_F)] if fault else []
    return RunResult.from_records(records, faults, window_s=2.0, **rest)


def verdict(spec, result):
    [v] = evaluate(build_checks([spec]), result)
    return v


def healthy():
    """4 ok before, 2 ok spanning, 4 ok after; streams of 10 tokens."""
    rs = [rec(90.0 + i, 91.0 + i, latency_s=1.0, output_tokens=10, expected_tokens=10) for i in range(4)]
    rs += [rec(99.0, 101.0 + i, output_tokens=10, expected_tokens=10, token_check="ok", request_id=f"s{i}") for i in range(2)]
    rs += [rec(100.0 + i, 101.5 + i, latency_s=1.5, output_tokens=10, expected_tokens=10, request_id=f"a{i}") for i in range(4)]
    return rs


# --- building specs ---------------------------------------------------------------------------


def test_build_checks_from_data_and_names():
    built = build_checks(
        [
            "no_truncated_streams",
            {"check": "success_ratio", "phase": "after", "min": 0.99},
            {"check": "success_ratio", "phase": "before", "min": 1, "title": "baseline clean"},
            {"check": "metric_increased", "role": "frontend", "name": "dynamo_frontend_model_migration_total",
             "labels": {"migration_type": "ongoing_request"}},
            {"check": "log_pattern", "role": "frontend", "pattern": "Cannot recreate stream", "present": False},
            {"check": "max_recovery", "metric": "time_to_first_success_s", "max_s": 10},
            {"check": "p99_latency_ratio", "max_ratio": 3},
            {"check": "no_failures", "phase": "before"},
            {"check": "min_failures", "phase": "seed_after", "n": 1},
            "streams_complete_after_fault",
        ]
    )
    assert [c.name for c in built] == [
        "no_truncated_streams",
        "success_ratio[after] >= 0.99",
        "baseline clean",
        'metric_increased[frontend] dynamo_frontend_model_migration_total{migration_type="ongoing_request"} by >= 1',
        "log[frontend] lacks 'Cannot recreate stream'",
        "time_to_first_success_s <= 10s",
        "p99_latency[after] <= 3 x before",
        "no_failures[before]",
        "min_failures[seed_after] >= 1",
        "streams_complete_after_fault",
    ]
    assert built[1].params == {"phase": "after", "min": 0.99}
    assert built[6].params == {"max_ratio": 3, "phase": "after", "baseline": "before"}
    assert build_checks(None) == [] and build_checks([]) == []


@pytest.mark.parametrize(
    "spec,fragments",
    [
        ({"check": "succes_ratio"}, ["checks[0]", "unknown check 'succes_ratio'", "did you mean 'success_ratio'"]),
        ({"check": "success_ratio", "phase": "after", "mni": 0.9}, ["checks[0] (success_ratio)", "unknown field 'mni'", "did you mean 'min'"]),
        ({"check": "success_ratio", "phase": "after", "min": "0.9"}, ["(success_ratio)", "field 'min' must be a number", "'0.9'"]),
        ({"check": "success_ratio", "phase": "after", "min": True}, ["field 'min' must be a number"]),
        ({"check": "success_ratio", "phase": "after", "min": 1.5}, ["field 'min' must be between 0 and 1", "1.5"]),
        ({"check": "success_ratio", "phase": "durring", "min": 0.9}, ["field 'phase' must be one of before, spanning, after", "'durring'"]),
        ({"check": "success_ratio", "phase": "after"}, ["(success_ratio)", "missing field 'min'"]),
        ({"phase": "after"}, ["checks[0]", "missing field 'check'"]),
        (["success_ratio"], ["checks[0]", "expected a check name or a mapping", "list"]),
        ({"check": "min_failures", "n": 0}, ["(min_failures)", "field 'n' must be >= 1"]),
        ({"check": "min_failures", "n": 1.5}, ["field 'n' must be an integer"]),
        ({"check": "max_recovery", "metric": "recovery_s", "max_s": 5}, ["(max_recovery)", "field 'metric' must be one of time_to_first_success_s"]),
        ({"check": "log_pattern", "role": "frontend", "pattern": "x", "present": "no"}, ["field 'present' must be true or false"]),
        ({"check": "log_pattern", "role": "frontend", "pattern": "(", "regex": True}, ["(log_pattern)", "field 'pattern' is not a valid regex"]),
        ({"check": "log_pattern", "role": "frontend", "pattern": "x", "ignore": "abc"}, ["field 'ignore' must be a list of strings"]),
        ({"check": "metric_increased", "role": "fe", "name": "dynamo_frontend_requests_total", "labels": ["a"]},
         ["(metric_increased)", "field 'labels' must be a mapping"]),
        ({"check": "metric_increased", "role": "frontend", "name": "dynamo_frontend_model_migrations_total"},
         ["(metric_increased)", "field 'name'", "unknown metric 'dynamo_frontend_model_migrations_total'",
          "did you mean 'dynamo_frontend_model_migration_total'", "allow_unknown_metric: true"]),
        ({"check": "metric_increased", "role": "frontend", "metric": "dynamo_frontend_requests_total"},
         ["(metric_increased)", "unknown field 'metric'", "did you mean 'name'"]),
        ({"check": "no_failures", "title": ""}, ["field 'title' must be a non-empty string"]),
    ],
)
def test_bad_specs_give_one_line_config_errors(spec, fragments):
    with pytest.raises(ConfigError) as e:
        build_checks([spec])
    msg = str(e.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg


def test_error_names_the_position_of_the_bad_check():
    with pytest.raises(ConfigError, match=r"^scenario\.checks\[1\] \(no_failures\): unknown field 'phse'"):
        build_checks(["no_truncated_streams", {"check": "no_failures", "phse": "after"}], where="scenario.checks")
    with pytest.raises(ConfigError, match="expected a list of checks"):
        build_checks({"check": "no_failures"})


def test_metric_catalog():
    for name in (
        "dynamo_frontend_model_migration_total",
        "dynamo_frontend_model_migration",
        "dynamo_frontend_model_cancellation_total",
        "dynamo_frontend_failures_total",
        "dynamo_frontend_model_migration_duration_seconds_count",
        "dynamo_component_cancellation_total",
        "dynamo_component_requests_total",
        "dynamo_transport_tcp_errors_total",
        "dynamo_tokio_workers",
        "vllm:num_requests_running",
        "dynamo_frontend_tokenizer_cache_hits_total",
    ):
        assert is_known_metric(name), name
    for name in ("dynamo_frontend_model_migrations_total", "migration_total", "dynamo_frontend_whatever"):
        assert not is_known_metric(name), name


def test_unknown_metric_allowed_explicitly_and_registered_names(monkeypatch):
    spec = {"check": "metric_increased", "role": "w", "name": "my_engine_restarts_total", "allow_unknown_metric": True}
    assert build_check(spec).params["name"] == "my_engine_restarts_total"
    monkeypatch.setattr(checks, "KNOWN_METRICS", set(KNOWN_METRICS))
    monkeypatch.setattr(checks, "KNOWN_METRIC_PATTERNS", list(checks.KNOWN_METRIC_PATTERNS))
    register_metrics("reference_engine_restarts_total", "reference_kv_*")
    assert is_known_metric("reference_engine_restarts") and is_known_metric("reference_kv_blocks")
    build_check({"check": "metric_increased", "role": "w", "name": "reference_engine_restarts_total"})


# --- each check: pass and fail --------------------------------------------------------------


def test_success_ratio():
    rs = healthy() + [rec(100.0, 101.0, REJECTED, status=503)]
    r = result_of(rs)
    v = verdict({"check": "success_ratio", "phase": "after", "min": 0.8}, r)
    assert v.passed and v.detail.startswith("after: 4/5 ok = 0.8000 (min 0.8); failed: rejected 1")
    assert not verdict({"check": "success_ratio", "phase": "after", "min": 0.81}, r).passed
    assert verdict({"check": "success_ratio", "phase": "seed_after", "min": 0.85}, r).passed  # 6/7
    empty = verdict({"check": "success_ratio", "phase": "spanning", "min": 0.5}, result_of(healthy()[:4]))
    assert not empty.passed and "no ok or failed request in phase 'spanning'" in empty.detail


def test_success_ratio_float_edge():
    rs = [rec(101.0, 102.0)] * 9 + [rec(101.0, 102.0, REJECTED)] * 1  # 0.9 exactly
    assert verdict({"check": "success_ratio", "phase": "after", "min": 0.9}, result_of(rs)).passed


def test_max_recovery():
    r = result_of(healthy())
    v = verdict({"check": "max_recovery", "metric": "time_to_first_success_s", "max_s": 1.5}, r)
    assert v.passed and v.detail == "time_to_first_success_s = 1.500s (max 1.5s)"
    assert not verdict({"check": "max_recovery", "metric": "time_to_first_success_s", "max_s": 1.4}, r).passed
    missing = verdict({"check": "max_recovery", "metric": "server_recovery_s", "max_s": 5}, r)
    assert not missing.passed and "not measured" in missing.detail
    assert verdict({"check": "max_recovery", "metric": "server_recovery_s", "max_s": 5, "allow_missing": True}, r).passed
    r.recovery["server_recovery_s"] = 4.2
    assert verdict({"check": "max_recovery", "metric": "server_recovery_s", "max_s": 5}, r).passed


def test_no_truncated_streams():
    assert verdict("no_truncated_streams", result_of(healthy())).passed
    rs = healthy() + [rec(99.0, 101.0, TRUNCATED, request_id="cut-1"), rec(98.0, 99.0, TRUNCATED, request_id="early")]
    v = verdict("no_truncated_streams", result_of(rs))
    assert not v.passed and v.detail.startswith("2 truncated: ") and "cut-1" in v.detail
    assert not verdict({"check": "no_truncated_streams", "phase": "spanning"}, result_of(rs)).passed
    assert verdict({"check": "no_truncated_streams", "phase": "after"}, result_of(rs)).passed


def _metrics(ongoing):
    return MetricsSnapshot(
        "# TYPE dynamo_frontend_model_migration_total counter\n"
        f'dynamo_frontend_model_migration_total{{migration_type="ongoing_request",model="tiny"}} {ongoing}\n'
        'dynamo_frontend_model_migration_total{migration_type="new_request",model="tiny"} 2\n'
    )


def test_metric_increased():
    spec = {"check": "metric_increased", "role": "frontend", "name": "dynamo_frontend_model_migration_total",
            "labels": {"migration_type": "ongoing_request"}}
    r = result_of(healthy(), metrics_before={"frontend": MetricsSnapshot("")}, metrics_after={"frontend": _metrics(1)})
    v = verdict(spec, r)
    assert v.passed
    assert v.detail == ('frontend dynamo_frontend_model_migration_total{migration_type="ongoing_request"}: '
                        "0 -> 1 (min +1)")
    r.metrics_before["frontend"] = _metrics(1)
    v = verdict(spec, r)
    assert not v.passed and "1 -> 1" in v.detail
    # an exact expectation: no ongoing migration at all
    assert verdict({**spec, "min_delta": 0, "max_delta": 0}, r).passed
    r.metrics_after["frontend"] = _metrics(3)
    assert not verdict({**spec, "min_delta": 0, "max_delta": 1}, r).passed
    assert verdict({**spec, "min_delta": 2}, r).passed


def test_metric_increased_missing_or_failed_snapshots():
    spec = {"check": "metric_increased", "role": "frontend", "name": "dynamo_frontend_model_migration_total"}
    v = verdict(spec, result_of(healthy(), metrics_before={}, metrics_after={"frontend": _metrics(1)}))
    assert not v.passed and "no /metrics snapshot before for role 'frontend' (have: none)" in v.detail
    failed = MetricsSnapshot.failed("http://x", "ConnectionError: refused")
    v = verdict(spec, result_of(healthy(), metrics_before={"frontend": _metrics(0)}, metrics_after={"frontend": failed}))
    assert not v.passed and "/metrics after for role 'frontend' failed: ConnectionError: refused" in v.detail
    v = verdict({**spec, "labels": {"migration_type": "x"}},
                result_of(healthy(), metrics_before={"frontend": _metrics(0)}, metrics_after={"frontend": _metrics(0)}))
    assert not v.passed and "no such series after the run" in v.detail


def test_log_pattern(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "frontend.log").write_text(
        "INFO migration retry scheduled\n"
        "ERROR dynamo_llm::protocols::common::timing: Conflicting request tracker write field=x\n"
    )
    (logs / "worker-1.previous.log").write_text("INFO request received request_id=abc\n")
    (logs / "worker-1.log").write_text("INFO started again\n")
    paths = {"frontend": str(logs / "frontend.log"), "worker-1": str(logs / "worker-1.log"),
             "ghost": str(logs / "ghost.log")}
    r = result_of(healthy(), log_paths=paths)
    v = verdict({"check": "log_pattern", "role": "frontend", "pattern": "migration retry scheduled"}, r)
    assert v.passed and v.detail == "1 line(s), first: INFO migration retry scheduled"
    assert not verdict({"check": "log_pattern", "role": "frontend", "pattern": "Cannot recreate stream"}, r).passed
    assert verdict({"check": "log_pattern", "role": "frontend", "pattern": "Cannot recreate stream", "present": False}, r).passed
    # benign ERROR ignored by default, seen with ignore: []
    assert verdict({"check": "log_pattern", "role": "frontend", "pattern": "ERROR", "present": False}, r).passed
    v = verdict({"check": "log_pattern", "role": "frontend", "pattern": "ERROR", "present": False, "ignore": []}, r)
    assert not v.passed and v.detail.startswith("1 line(s), first: ERROR")
    # the previous log (before a restart) is searched too
    assert verdict({"check": "log_pattern", "role": "worker-1", "pattern": r"request_id=\w+", "regex": True}, r).passed
    v = verdict({"check": "log_pattern", "role": "ghost", "pattern": "x"}, r)
    assert not v.passed and "log of 'ghost' not found" in v.detail
    v = verdict({"check": "log_pattern", "role": "nobody", "pattern": "x", "present": False}, r)
    assert not v.passed and "no log for role 'nobody'" in v.detail


def test_streams_complete_after_fault_passes_on_complete_streams():
    v = verdict("streams_complete_after_fault", result_of(healthy()))
    assert v.passed
    assert v.detail == "6 stream(s) complete, 2 spanning (token count checked on 6, continuity on 2)"


def test_streams_complete_after_fault_fails_on_each_kind_of_break():
    rs = healthy() + [
        rec(99.0, 102.0, STREAM_ERROR_EVENT, output_tokens=4, expected_tokens=10, request_id="err"),
        rec(99.0, 102.0, OK, output_tokens=9, expected_tokens=10, request_id="short"),
        rec(99.0, 102.0, OK, output_tokens=10, expected_tokens=10, token_check="gap at 5", request_id="gap"),
        rec(99.0, 102.0, CANCELLED, output_tokens=3, expected_tokens=10, request_id="cancelled"),  # on purpose
        rec(98.0, 99.0, TRUNCATED, request_id="before"),  # before the fault: not this check's business
        rec(100.0, 101.0, CONNECTION_ERROR, stream=False, request_id="unary"),  # not a stream
    ]
    v = verdict("streams_complete_after_fault", result_of(rs))
    assert not v.passed
    assert v.detail.startswith("3 of 9 stream(s) incomplete (token count checked on 9, continuity on 3): ")
    assert "err: stream_error_event, tokens 4/10" in v.detail
    assert "short: tokens 9/10" in v.detail
    assert "gap: token_check gap at 5" in v.detail
    for absent in ("cancelled", "before", "unary"):
        assert absent + ":" not in v.detail


def test_streams_complete_expected_tokens_from_spec_or_result():
    rs = [rec(99.0, 101.0, output_tokens=8), rec(100.0, 101.0, output_tokens=8)]
    assert verdict("streams_complete_after_fault", result_of(rs)).passed  # no expectation known
    assert not verdict("streams_complete_after_fault", result_of(rs, expected_tokens=10)).passed
    assert verdict({"check": "streams_complete_after_fault", "expected_tokens": 8}, result_of(rs, expected_tokens=10)).passed


def test_streams_complete_needs_a_fault_and_streams():
    v = verdict("streams_complete_after_fault", result_of(healthy(), fault=False))
    assert not v.passed and v.detail == "no fault was injected"
    v = verdict("streams_complete_after_fault", result_of(healthy()[:4]))
    assert not v.passed and "0 stream(s) in spanning/after, need at least 1" in v.detail
    assert verdict({"check": "streams_complete_after_fault", "min_streams": 0}, result_of(healthy()[:4])).passed


def test_p99_latency_ratio():
    r = result_of(healthy())  # before p99 1.0, after p99 1.5
    v = verdict({"check": "p99_latency_ratio", "max_ratio": 1.5}, r)
    assert v.passed and v.detail == "p99 after 1.500s / before 1.000s = 1.50 (max 1.5)"
    assert not verdict({"check": "p99_latency_ratio", "max_ratio": 1.4}, r).passed
    v = verdict({"check": "p99_latency_ratio", "max_ratio": 2}, result_of(healthy()[4:], fault=True))
    assert not v.passed and "no successful request in phase 'before'" in v.detail


def test_no_failures_and_min_failures():
    rs = healthy() + [rec(100.0, 101.0, REJECTED), rec(100.0, 101.0, CANCELLED)]
    r = result_of(rs)
    assert verdict({"check": "no_failures", "phase": "before"}, r).passed
    v = verdict("no_failures", r)
    assert not v.passed and v.detail == "1 failed of 11: rejected 1"
    assert verdict({"check": "min_failures", "n": 1, "phase": "after"}, r).passed
    v = verdict({"check": "min_failures", "n": 2}, r)
    assert not v.passed and v.detail == "1 failed (need >= 2): rejected 1"
    v = verdict({"check": "no_failures", "phase": "spanning", "min_requests": 3}, r)
    assert not v.passed and "2 ok/failed request(s) in 'spanning', need at least 3" in v.detail
    # only cancelled requests: nothing decided, no pass by default
    assert not verdict("no_failures", result_of([rec(100.0, 101.0, CANCELLED)])).passed


# --- evaluate -----------------------------------------------------------------------------------


def test_a_check_that_raises_becomes_a_failed_verdict(monkeypatch):
    monkeypatch.setattr(checks, "CHECK_TYPES", dict(checks.CHECK_TYPES))

    @register_check("explodes", [Field("x", "int", default=1)], label=lambda p: f"explodes({p['x']})")
    def _explodes(p, result):
        return 1 / 0, "never"

    built = build_checks([{"check": "explodes"}, "no_truncated_streams"])
    verdicts = evaluate(built, result_of(healthy()))
    assert verdicts[0] == Verdict("explodes(1)", False, "check raised ZeroDivisionError: division by zero")
    assert verdicts[1].passed
    assert not all_passed(verdicts) and all_passed(verdicts[1:]) and all_passed([])


def test_missing_phase_statistics_fail_the_check_not_the_run():
    r = RunResult(records=healthy(), fault_time=T_F)  # phases not computed
    v = verdict({"check": "success_ratio", "phase": "after", "min": 0.5}, r)
    assert not v.passed and "LookupError" in v.detail and "no statistics for phase 'after'" in v.detail


def test_run_result_from_records():
    f2 = FaultEvent("second", "process", "worker-2", 150.0)
    f1 = FaultEvent("first", "process", "worker-1", T_F)
    r = RunResult.from_records(healthy(), [f2, f1], log_paths={"fe": "x"}, expected_tokens=10)
    assert r.fault_time == T_F and [f.name for f in r.faults] == ["first", "second"]
    assert r.phases["spanning"]["count"] == 2 and r.recovery["time_to_first_success_s"] == 1.5
    assert r.log_paths == {"fe": "x"} and r.expected_tokens == 10
    assert Verdict("a", True, "b").to_dict() == {"name": "a", "passed": True, "detail": "b"}


def test_cancellations_counted_compares_client_cancels_with_server_counters():
    from ftlocust.checks import RunResult, build_checks, evaluate
    from ftlocust.evidence import MetricsSnapshot
    from ftlocust.records import CANCELLED, OK, RequestRecord

    def snap(n):
        return MetricsSnapshot(f'# TYPE dynamo_component_cancellation_total counter\n'
                               f'dynamo_component_cancellation_total{{dynamo_endpoint="generate"}} {n}\n')

    records = [RequestRecord(kind="chat-stream", endpoint="/v1/chat/completions", stream=True, outcome=CANCELLED)
               for _ in range(3)] + [RequestRecord(kind="chat", endpoint="/v1/chat/completions", stream=False, outcome=OK)]
    (check,) = build_checks([{"check": "cancellations_counted", "roles": "worker-*",
                              "name": "dynamo_component_cancellation_total"}])

    def verdict(after):
        result = RunResult(records=records, fault_time=None, faults=[], phases={}, recovery={},
                           metrics_before={"worker-1": snap(0), "worker-2": snap(0)},
                           metrics_after={"worker-1": snap(after[0]), "worker-2": snap(after[1])},
                           log_paths={}, expected_tokens=None)
        return evaluate([check], result)[0]

    assert verdict((1, 2)).passed
    assert "clients cancelled 3, server counted 3" in verdict((1, 2)).detail
    assert not verdict((1, 1)).passed  # one cancel the server never saw
    assert not verdict((2, 2)).passed  # counted twice


def _result_with(records, log_paths=None):
    return RunResult(records=records, fault_time=T_F, faults=[], phases=phase_stats(records, T_F), recovery={},
                     metrics_before={}, metrics_after={}, log_paths=log_paths or {}, expected_tokens=None)


def test_min_failures_of_one_outcome_counts_only_that_outcome():
    records = [rec(101, 102, TRUNCATED), rec(101, 103, TRUNCATED), rec(101, 104, REJECTED)]
    (check,) = build_checks([{"check": "min_failures", "n": 2, "outcome": "truncated"}])
    assert evaluate([check], _result_with(records))[0].passed
    (check,) = build_checks([{"check": "min_failures", "n": 2, "outcome": "rejected"}])
    assert not evaluate([check], _result_with(records))[0].passed
    with pytest.raises(ConfigError, match="outcome"):
        build_checks([{"check": "min_failures", "n": 1, "outcome": "ok"}])


def test_log_pattern_with_a_role_glob_reads_every_matching_log(tmp_path):
    (tmp_path / "w1.log").write_text("INFO request received request_id=a\n")
    (tmp_path / "w2.log").write_text("INFO request cancellation received request_id=b\n")
    logs = {"worker-1": str(tmp_path / "w1.log"), "worker-2": str(tmp_path / "w2.log"), "frontend": str(tmp_path / "w1.log")}
    (check,) = build_checks([{"check": "log_pattern", "role": "worker-*", "pattern": "cancellation received"}])
    assert evaluate([check], _result_with([], logs))[0].passed
    (check,) = build_checks([{"check": "log_pattern", "role": "frontend", "pattern": "cancellation received"}])
    assert not evaluate([check], _result_with([], logs))[0].passed
