"""Check specs (validation, ConfigError messages) and every check's pass and fail cases."""

import threading
import time

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
    rest.setdefault("wait_budget_s", 0)  # tests of waiting set their own
    return RunResult.from_records(records, faults, window_s=2.0, **rest)


def verdict(spec, result):
    [v] = evaluate(build_checks([spec]), result, builtin=False)
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
    assert built[1].params == {"phase": "after", "min": 0.99, "allow_empty": False}
    assert built[6].params == {"max_ratio": 3, "phase": "after", "baseline": "before", "allow_empty": False}
    assert build_checks(None) == [] and build_checks([]) == []


@pytest.mark.parametrize(
    "spec,fragments",
    [
        ({"check": "succes_ratio"}, ["checks[0].check: expected one of", "got 'succes_ratio'", "did you mean 'success_ratio'"]),
        ({"check": "success_ratio", "phase": "after", "mni": 0.9}, ["checks[0].mni: unknown field (expected one of allow_empty, min, phase, title)", "did you mean 'min'"]),
        ({"check": "success_ratio", "phase": "after", "min": "0.9"}, ["checks[0].min: expected a number >= 0 and <= 1", "got '0.9'"]),
        ({"check": "success_ratio", "phase": "after", "min": True}, ["checks[0].min: expected a number", "got True"]),
        ({"check": "success_ratio", "phase": "after", "min": 1.5}, ["checks[0].min: expected a number >= 0 and <= 1, got 1.5"]),
        ({"check": "success_ratio", "phase": "durring", "min": 0.9}, ["checks[0].phase: expected one of before, spanning, after", "got 'durring'"]),
        ({"check": "success_ratio", "phase": "after"}, ["checks[0].min: missing (required)"]),
        ({"phase": "after"}, ["checks[0].check: missing (required"]),
        (["success_ratio"], ["checks[0]: expected a check name or a mapping", "got ['success_ratio']"]),
        ({"check": "min_failures", "n": 0}, ["checks[0].n: expected an integer >= 1, got 0"]),
        ({"check": "min_failures", "n": 1.5}, ["checks[0].n: expected an integer >= 1, got 1.5"]),
        ({"check": "max_recovery", "metric": "recovery_s", "max_s": 5}, ["checks[0].metric: expected one of time_to_first_success_s", "got 'recovery_s'"]),
        ({"check": "log_pattern", "role": "frontend", "pattern": "x", "present": "no"}, ["checks[0].present: expected true or false, got 'no'"]),
        ({"check": "log_pattern", "role": "frontend", "pattern": "(", "regex": True}, ["checks[0].pattern: expected a valid regex", "got '('"]),
        ({"check": "log_pattern", "role": "frontend", "pattern": "x", "ignore": "abc"}, ["checks[0].ignore: expected a list of strings, got 'abc'"]),
        ({"check": "metric_increased", "role": "fe", "name": "dynamo_frontend_requests_total", "labels": ["a"]},
         ["checks[0].labels: expected a mapping of label name to value"]),
        ({"check": "metric_increased", "role": "frontend", "name": "dynamo_frontend_model_migrations_total"},
         ["checks[0].name: expected a metric of the target's catalogue", "got 'dynamo_frontend_model_migrations_total'",
          "did you mean 'dynamo_frontend_model_migration_total'", "allow_unknown_metric: true"]),
        ({"check": "metric_increased", "role": "frontend", "metric": "dynamo_frontend_requests_total"},
         ["checks[0].metric: unknown field", "did you mean 'name'"]),
        ({"check": "no_failures", "title": ""}, ["checks[0].title: expected a non-empty string, got ''"]),
        ({"check": "no_failures", "allow_empty": "yes"}, ["checks[0].allow_empty: expected true or false, got 'yes'"]),
        ({"check": "log_pattern", "role": "f", "pattern": "x", "within_s": -1}, ["checks[0].within_s: expected a number >= 0, got -1"]),
        ({"check": "metric_increased", "role": "f", "name": "dynamo_frontend_requests_total", "within_s": "5"},
         ["checks[0].within_s: expected a number >= 0, got '5'"]),
        ({"check": "max_recovery", "metric": "time_to_steady_state", "max_s": 5},
         ["time_to_sustained_success_s", "time_to_latency_back_s"]),
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
    with pytest.raises(ConfigError, match=r"^scenario\.checks\[1\]\.phse: unknown field \(expected one of .*\); did you mean 'phase'\?$"):
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


def test_every_kind_takes_allow_empty():
    for kind, ctype in checks.CHECK_TYPES.items():
        assert ctype.fields["allow_empty"].default is False, kind


def test_the_dynamo_catalogue_lives_with_its_target_and_loads_lazily(monkeypatch):
    from ftlocust.targets import dynamo_metrics

    assert not hasattr(checks, "_DYNAMO_METRICS")
    assert "dynamo_frontend_model_migration_total" in dynamo_metrics.METRICS
    monkeypatch.setattr(checks, "KNOWN_METRICS", set())
    monkeypatch.setattr(checks, "KNOWN_METRIC_PATTERNS", [])
    monkeypatch.setattr(checks, "_catalogue_loaded", False)
    build_checks([{"check": "metric_increased", "role": "frontend", "name": "dynamo_frontend_model_migration_total"}])
    assert "dynamo_frontend_model_migration_total" in checks.KNOWN_METRICS
    assert "dynamo_tokio_*" in checks.KNOWN_METRIC_PATTERNS
    dynamo_metrics.register()  # again: nothing doubles
    assert checks.KNOWN_METRIC_PATTERNS.count("dynamo_tokio_*") == 1


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
    for metric in ("time_to_sustained_success_s", "time_to_latency_back_s", "time_to_steady_state_s"):
        v = verdict({"check": "max_recovery", "metric": metric, "max_s": 3}, r)
        assert v.passed and v.detail == f"{metric} = {r.recovery[metric]:.3f}s (max 3s)"


def test_max_recovery_says_why_a_figure_is_missing():
    # no successful request before the fault: no latency baseline, no steady state
    v = verdict({"check": "max_recovery", "metric": "time_to_steady_state_s", "max_s": 10}, result_of(healthy()[4:]))
    assert not v.passed and "no latency baseline" in v.detail
    v = verdict({"check": "max_recovery", "metric": "time_to_first_success_s", "max_s": 10}, result_of(healthy(), fault=False))
    assert not v.passed and "no fault injected" in v.detail
    r = result_of(healthy()[:4] + [rec(100.0, 101.0, REJECTED)])
    v = verdict({"check": "max_recovery", "metric": "time_to_sustained_success_s", "max_s": 10}, r)
    assert not v.passed and "no request started after the fault succeeded" in v.detail


def test_no_truncated_streams():
    assert verdict("no_truncated_streams", result_of(healthy())).passed
    rs = healthy() + [rec(99.0, 101.0, TRUNCATED, request_id="cut-1"), rec(98.0, 99.0, TRUNCATED, request_id="early")]
    v = verdict("no_truncated_streams", result_of(rs))
    assert not v.passed and v.detail.startswith("2 truncated: ") and "cut-1" in v.detail
    assert not verdict({"check": "no_truncated_streams", "phase": "spanning"}, result_of(rs)).passed
    assert verdict({"check": "no_truncated_streams", "phase": "after"}, result_of(rs)).passed


def test_no_truncated_streams_over_no_stream_fails():
    unary = [rec(100.0, 101.0, stream=False), rec(100.0, 101.0, CANCELLED)]
    v = verdict("no_truncated_streams", result_of(unary))
    assert not v.passed and v.detail.startswith("empty: no stream (not cancelled) in phase 'all'")
    assert verdict({"check": "no_truncated_streams", "allow_empty": True}, result_of(unary)).passed


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
    r = result_of(healthy(), metrics_before={"frontend": _metrics(0)}, metrics_after={"frontend": _metrics(0)})
    v = verdict({**spec, "labels": {"migration_type": "x"}}, r)
    assert not v.passed and v.detail.startswith("empty: ") and "no such series before or after the run" in v.detail
    # "no sample" is not "did not increase": an exact 0 over a missing series fails unless allowed
    nothing = {**spec, "labels": {"migration_type": "x"}, "min_delta": 0, "max_delta": 0}
    v = verdict(nothing, r)
    assert not v.passed and v.detail.startswith("empty: ")
    v = verdict({**nothing, "allow_empty": True}, r)
    assert v.passed and "(no such series after the run)" in v.detail
    # allowed empty still has to meet min_delta
    assert not verdict({**spec, "labels": {"migration_type": "x"}, "allow_empty": True}, r).passed


def test_metric_increased_rescrapes_until_the_delta_is_met(monkeypatch):
    monkeypatch.setattr(checks, "_POLL_METRICS_S", 0.01)
    spec = {"check": "metric_increased", "role": "frontend", "name": "dynamo_frontend_model_migration_total",
            "labels": {"migration_type": "ongoing_request"}, "within_s": 5}
    calls = []

    def scrape():  # the counter the server bumps late: 0, 0, then 1
        calls.append(1)
        return {"frontend": _metrics(1 if len(calls) >= 3 else 0), "worker-1": MetricsSnapshot.failed("u", "down")}

    r = result_of(healthy(), metrics_before={"frontend": _metrics(0)}, metrics_after={"frontend": _metrics(0)},
                  scrape=scrape, wait_budget_s=5)
    first_after = r.metrics_after["frontend"]
    v = verdict(spec, r)
    assert v.passed and "0 -> 1" in v.detail and "re-scraped" in v.detail
    assert len(calls) == 3
    assert r.metrics_after["frontend"] is not first_after and r.metrics_after["frontend"].value(
        "dynamo_frontend_model_migration_total", migration_type="ongoing_request") == 1
    assert "worker-1" not in r.metrics_after  # only the checked role's snapshot is replaced


def test_metric_increased_waits_no_longer_than_within_s_and_not_without_scrape(monkeypatch):
    monkeypatch.setattr(checks, "_POLL_METRICS_S", 0.05)
    spec = {"check": "metric_increased", "role": "frontend", "name": "dynamo_frontend_model_migration_total",
            "labels": {"migration_type": "ongoing_request"}, "within_s": 0.3}
    calls = []
    r = result_of(healthy(), metrics_before={"frontend": _metrics(0)}, metrics_after={"frontend": _metrics(0)},
                  scrape=lambda: calls.append(1) or {"frontend": _metrics(0)}, wait_budget_s=10)
    t0 = time.monotonic()
    assert not verdict(spec, r).passed
    assert 0.2 <= time.monotonic() - t0 < 2.0 and 3 <= len(calls) <= 7
    # nothing to re-scrape with: judged at once
    r.scrape = None
    t0 = time.monotonic()
    assert not verdict({**spec, "within_s": 30}, r).passed
    assert time.monotonic() - t0 < 0.2
    # the counter over its max is never waited for (counters only grow)
    r.scrape = lambda: calls.append(1) or {"frontend": _metrics(0)}
    r.metrics_after["frontend"] = _metrics(3)
    before = len(calls)
    assert not verdict({**spec, "min_delta": 0, "max_delta": 1, "within_s": 30}, r).passed
    assert len(calls) == before


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


def test_log_pattern_over_an_empty_or_missing_log_fails_unless_allowed(tmp_path):
    (tmp_path / "frontend.log").write_text("")
    r = result_of(healthy(), log_paths={"frontend": str(tmp_path / "frontend.log"), "ghost": str(tmp_path / "ghost.log")})
    lacks = {"check": "log_pattern", "role": "frontend", "pattern": "ERROR", "present": False}
    v = verdict(lacks, r)
    assert not v.passed and v.detail.startswith("empty: log of 'frontend' is empty")
    assert verdict({**lacks, "allow_empty": True}, r).passed
    assert not verdict({**lacks, "allow_empty": True, "present": True}, r).passed  # still not found
    v = verdict({**lacks, "role": "ghost"}, r)
    assert not v.passed and v.detail.startswith("empty: log of 'ghost' not found")
    assert verdict({**lacks, "role": "ghost", "allow_empty": True}, r).passed


def test_log_pattern_waits_for_a_line_written_late(tmp_path):
    log = tmp_path / "worker-1.log"
    log.write_text("INFO serving\n")
    r = result_of(healthy(), log_paths={"worker-1": str(log)}, wait_budget_s=10)
    timer = threading.Timer(0.3, lambda: log.open("a").write("ERROR Failed to publish response\n"))
    timer.start()
    try:
        t0 = time.monotonic()
        v = verdict({"check": "log_pattern", "role": "worker-*", "pattern": "Failed to publish response",
                     "within_s": 5}, r)
    finally:
        timer.cancel()
    assert v.passed and "1 line(s) (after waiting" in v.detail, v.detail
    assert 0.25 <= time.monotonic() - t0 < 3.0


def test_log_pattern_waiting_is_bounded_per_check_and_per_run(tmp_path):
    log = tmp_path / "frontend.log"
    log.write_text("INFO nothing here\n")
    r = result_of(healthy(), log_paths={"frontend": str(log)}, wait_budget_s=0.6)
    built = build_checks([{"check": "log_pattern", "role": "frontend", "pattern": "never", "within_s": 0.4}] * 3
                         + [{"check": "log_pattern", "role": "frontend", "pattern": "never", "present": False,
                             "within_s": 30}])
    t0 = time.monotonic()
    verdicts = evaluate(built, r, builtin=False)
    elapsed = time.monotonic() - t0
    assert [v.passed for v in verdicts] == [False, False, False, True]
    assert "waited 0.4s" in verdicts[0].detail and "waited 0.2s" in verdicts[1].detail
    assert "waited 0s" in verdicts[2].detail  # the run's budget is spent
    assert 0.55 <= elapsed < 1.5  # and an absent pattern is not waited for


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
    assert not v.passed and v.detail.startswith("empty: no stream (not cancelled) in spanning/after")
    v = verdict({"check": "streams_complete_after_fault", "min_streams": 0}, result_of(healthy()[:4]))
    assert not v.passed and v.detail.startswith("empty: ")
    v = verdict({"check": "streams_complete_after_fault", "min_streams": 0, "allow_empty": True}, result_of(healthy()[:4]))
    assert v.passed and v.detail.startswith("0 stream(s) complete")
    v = verdict({"check": "streams_complete_after_fault", "allow_empty": True}, result_of(healthy()[:4]))
    assert not v.passed and "0 stream(s) in spanning/after, need at least 1" in v.detail


def test_p99_latency_ratio():
    r = result_of(healthy())  # before p99 1.0, after p99 1.5
    v = verdict({"check": "p99_latency_ratio", "max_ratio": 1.5}, r)
    assert v.passed and v.detail == "p99 after 1.500s / before 1.000s = 1.50 (max 1.5)"
    assert not verdict({"check": "p99_latency_ratio", "max_ratio": 1.4}, r).passed
    v = verdict({"check": "p99_latency_ratio", "max_ratio": 2}, result_of(healthy()[4:], fault=True))
    assert not v.passed and v.detail.startswith("empty: no successful request in phase 'before'")
    assert verdict({"check": "p99_latency_ratio", "max_ratio": 2, "allow_empty": True}, result_of(healthy()[4:])).passed


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


def test_no_failures_over_nothing_is_not_a_pass():
    # min_requests 0 accepted "0 ok, 0 failed" over a phase without a single request
    nothing = result_of(healthy()[:4])  # a fault, but no request after it
    v = verdict({"check": "no_failures", "phase": "after", "min_requests": 0}, nothing)
    assert not v.passed
    assert v.detail == "empty: no request in 'after' (set allow_empty: true to accept that)"
    allowed = verdict({"check": "no_failures", "phase": "after", "min_requests": 0, "allow_empty": True}, nothing)
    assert allowed.passed and allowed.detail == "0 ok, 0 failed"
    # requests that were all cancelled on purpose (the cancellation drill) did not fail: they
    # are something to judge, and the detail says what they were
    only_cancelled = result_of([rec(100.0, 101.0, CANCELLED)] * 3, fault=False)
    v = verdict({"check": "no_failures", "phase": "all", "min_requests": 0}, only_cancelled)
    assert v.passed and v.detail == "0 ok, 0 failed, 3 cancelled"
    assert not verdict({"check": "no_failures", "phase": "all"}, only_cancelled).passed  # min_requests 1


def test_success_ratio_and_min_failures_over_an_empty_phase():
    r = result_of(healthy()[:4])
    v = verdict({"check": "success_ratio", "phase": "after", "min": 0.9}, r)
    assert not v.passed and v.detail.startswith("empty: ")
    assert verdict({"check": "success_ratio", "phase": "after", "min": 0.9, "allow_empty": True}, r).passed
    v = verdict({"check": "min_failures", "n": 1, "phase": "after"}, r)
    assert not v.passed and v.detail.startswith("empty: ")
    assert not verdict({"check": "min_failures", "n": 1, "phase": "after", "allow_empty": True}, r).passed


# --- evaluate -----------------------------------------------------------------------------------


def test_a_check_that_raises_becomes_a_failed_verdict(monkeypatch):
    monkeypatch.setattr(checks, "CHECK_TYPES", dict(checks.CHECK_TYPES))

    @register_check("explodes", [Field("x", "int", default=1)], label=lambda p: f"explodes({p['x']})")
    def _explodes(p, result):
        return 1 / 0, "never"

    built = build_checks([{"check": "explodes"}, "no_truncated_streams"])
    verdicts = evaluate(built, result_of(healthy()), builtin=False)
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
    never = FaultEvent("third", "process", "worker-3", None, status="not_fired", error="trigger never reached")
    r = RunResult.from_records(healthy(), [f2, never, f1], log_paths={"fe": "x"}, expected_tokens=10,
                               server_recovery={"first": 0.5})
    assert r.fault_time == T_F and [f.name for f in r.faults] == ["second", "third", "first"]  # scenario order
    assert [e["name"] for e in r.per_fault] == ["second", "third", "first"]
    assert r.recovery["server_recovery_s"] == 0.5
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

    def verdict(after, records=records, check=check):
        result = RunResult(records=records, fault_time=None, faults=[], phases={}, recovery={},
                           metrics_before={"worker-1": snap(0), "worker-2": snap(0)},
                           metrics_after={"worker-1": snap(after[0]), "worker-2": snap(after[1])},
                           log_paths={}, expected_tokens=None)
        return evaluate([check], result, builtin=False)[0]

    assert verdict((1, 2)).passed
    assert "clients cancelled 3, server counted 3" in verdict((1, 2)).detail
    assert not verdict((1, 1)).passed  # one cancel the server never saw
    assert not verdict((2, 2)).passed  # counted twice
    # nobody cancelled: nothing to compare
    v = verdict((0, 0), records=records[3:])
    assert not v.passed and v.detail.startswith("empty: clients cancelled 0, server counted 0")
    (allowing,) = build_checks([{"check": "cancellations_counted", "roles": "worker-*", "allow_empty": True,
                                 "name": "dynamo_component_cancellation_total"}])
    assert verdict((0, 0), records=records[3:], check=allowing).passed
    assert not verdict((1, 0), records=records[3:], check=allowing).passed


def test_cancellations_counted_rescrapes_while_a_worker_has_not_heard_of_the_last_cancel(monkeypatch):
    from ftlocust.checks import RunResult, build_checks, evaluate
    from ftlocust.evidence import MetricsSnapshot
    from ftlocust.records import CANCELLED, RequestRecord

    monkeypatch.setattr(checks, "_POLL_METRICS_S", 0.01)

    def snap(n):
        return MetricsSnapshot(f'# TYPE dynamo_component_cancellation_total counter\n'
                               f'dynamo_component_cancellation_total{{dynamo_endpoint="generate"}} {n}\n')

    records = [RequestRecord(kind="chat-stream", endpoint="/v1/chat/completions", stream=True, outcome=CANCELLED)
               for _ in range(3)]
    (check,) = build_checks([{"check": "cancellations_counted", "roles": "worker-*", "within_s": 5,
                              "name": "dynamo_component_cancellation_total"}])
    calls = []

    def scrape(late):  # worker-2 hears of its cancel on the third scrape, or never
        calls.append(1)
        return {"worker-1": snap(1), "worker-2": snap(2 if late and len(calls) >= 3 else 1)}

    def result(late, after=(1, 1)):
        return RunResult(records=records, fault_time=None, faults=[], phases={}, recovery={},
                         metrics_before={"worker-1": snap(0), "worker-2": snap(0)},
                         metrics_after={"worker-1": snap(after[0]), "worker-2": snap(after[1])},
                         log_paths={}, expected_tokens=None, scrape=lambda: scrape(late), wait_budget_s=5)

    r = result(late=True)
    v = evaluate([check], r, builtin=False)[0]
    assert v.passed and "server counted 3" in v.detail and "re-scraped" in v.detail and len(calls) == 3
    assert r.metrics_after["worker-2"].value("dynamo_component_cancellation_total", dynamo_endpoint="generate") == 2
    # never heard of: fails once within_s is spent
    calls.clear()
    (short,) = build_checks([{"check": "cancellations_counted", "roles": "worker-*", "within_s": 0.1,
                              "name": "dynamo_component_cancellation_total"}])
    v = evaluate([short], result(late=False), builtin=False)[0]
    assert not v.passed and "server counted 2" in v.detail and 1 <= len(calls) <= 12
    # counted twice is never waited for: a counter only grows
    calls.clear()
    v = evaluate([check], result(late=True, after=(2, 2)), builtin=False)[0]
    assert not v.passed and "server counted 4" in v.detail and calls == []


def _result_with(records, log_paths=None):
    return RunResult(records=records, fault_time=T_F, faults=[], phases=phase_stats(records, T_F), recovery={},
                     metrics_before={}, metrics_after={}, log_paths=log_paths or {}, expected_tokens=None,
                     wait_budget_s=0)


def test_min_failures_of_one_outcome_counts_only_that_outcome():
    records = [rec(101, 102, TRUNCATED), rec(101, 103, TRUNCATED), rec(101, 104, REJECTED)]
    (check,) = build_checks([{"check": "min_failures", "n": 2, "outcome": "truncated"}])
    assert evaluate([check], _result_with(records), builtin=False)[0].passed
    (check,) = build_checks([{"check": "min_failures", "n": 2, "outcome": "rejected"}])
    assert not evaluate([check], _result_with(records), builtin=False)[0].passed
    with pytest.raises(ConfigError, match="outcome"):
        build_checks([{"check": "min_failures", "n": 1, "outcome": "ok"}])


def test_log_pattern_with_a_role_glob_reads_every_matching_log(tmp_path):
    (tmp_path / "w1.log").write_text("INFO request received request_id=a\n")
    (tmp_path / "w2.log").write_text("INFO request cancellation received request_id=b\n")
    logs = {"worker-1": str(tmp_path / "w1.log"), "worker-2": str(tmp_path / "w2.log"), "frontend": str(tmp_path / "w1.log")}
    (check,) = build_checks([{"check": "log_pattern", "role": "worker-*", "pattern": "cancellation received"}])
    assert evaluate([check], _result_with([], logs), builtin=False)[0].passed
    (check,) = build_checks([{"check": "log_pattern", "role": "frontend", "pattern": "cancellation received"}])
    assert not evaluate([check], _result_with([], logs), builtin=False)[0].passed


# --- built-in verdicts --------------------------------------------------------------------------


def _planned():
    return [
        FaultEvent("kill-1", "process-signal", "worker-1", T_F),
        FaultEvent("stall", "process-signal", "worker-2", None, status="not_fired",
                   error="trigger never reached: after 900 finished requests"),
        FaultEvent("kill-fe", "process-signal", "frontend", None, status="failed",
                   error="PermissionError: [Errno 1] Operation not permitted"),
    ]


def test_builtin_every_fault_injected_names_what_did_not_happen():
    r = RunResult.from_records(healthy(), _planned(), wait_budget_s=0)
    by_name = {v.name: v for v in checks.builtin_verdicts(r)}
    v = by_name["every fault injected"]
    assert not v.passed
    assert v.detail == ("1 of 3 injected; stall not fired: trigger never reached: after 900 finished requests; "
                        "kill-fe not injected: PermissionError: [Errno 1] Operation not permitted")
    ok = checks.builtin_verdicts(RunResult.from_records(healthy(), _planned()[:1]))
    assert ok[0] == Verdict("every fault injected", True, "1 of 1 injected: kill-1")
    # no fault in the scenario: nothing to say about faults
    assert "every fault injected" not in {v.name for v in checks.builtin_verdicts(result_of(healthy(), fault=False))}


def test_builtin_every_rollback_succeeded():
    r = result_of(healthy())
    assert "every rollback succeeded" not in {v.name for v in checks.builtin_verdicts(r)}  # none ran
    r.rollbacks = [{"fault": "kill-1", "action": "restart worker-1", "at": 0.0, "ok": True, "error": None}]
    v = {v.name: v for v in checks.builtin_verdicts(r)}["every rollback succeeded"]
    assert v.passed and v.detail == "1 ok: kill-1 (restart worker-1)"
    r.rollbacks.append({"fault": "stall", "action": "SIGCONT", "at": 3600.25, "ok": False,
                        "error": "ProcessLookupError: no such process"})
    v = {v.name: v for v in checks.builtin_verdicts(r)}["every rollback succeeded"]
    assert not v.passed
    assert v.detail == "1 of 2 failed: stall: SIGCONT failed at 01:00:00.250Z: ProcessLookupError: no such process"


def test_builtin_no_load_generator_lost():
    r = result_of(healthy())
    assert checks.builtin_verdicts(r)[-1] == Verdict("no load generator lost", True, "none lost")
    r.lost_workers = [{"worker": "host_1234", "lost_at": 7200.0, "in_flight": 3, "unsent": 40}]
    v = checks.builtin_verdicts(r)[-1]
    assert not v.passed
    assert v.detail == "1 lost: host_1234 lost at 02:00:00.000Z with 3 request(s) in flight and 40 of its budget unsent"


def test_evaluate_gives_builtin_verdicts_first_and_they_fail_the_run():
    r = RunResult.from_records(healthy(), _planned(), wait_budget_s=0)
    verdicts = evaluate(build_checks(["no_truncated_streams"]), r)
    assert [v.name for v in verdicts] == ["every fault injected", "no load generator lost", "no_truncated_streams"]
    assert verdicts[-1].passed and not all_passed(verdicts)


def test_cancellations_counted_with_received_line_owes_only_the_cancels_that_reached_the_roles(tmp_path):
    from ftlocust.checks import RunResult, build_checks, evaluate
    from ftlocust.evidence import MetricsSnapshot
    from ftlocust.records import CANCELLED, RequestRecord

    def snap(n):
        return MetricsSnapshot(f'# TYPE dynamo_component_cancellation_total counter\n'
                               f'dynamo_component_cancellation_total{{dynamo_endpoint="generate"}} {n}\n')

    def log(name, lines):
        path = tmp_path / f"{name}.log"
        path.write_text("".join(line + "\n" for line in lines))
        return str(path)

    ids = ["a1", "b2", "c3"]
    # the frontend names all three (beside its own span id); only a1 and b2 reached a worker
    frontend = log("frontend", [f'route request cancelled request_id=span-{i} request_id="{i}"' for i in ids])
    worker1 = log("worker-1", ["request received request_id=a1", "request cancellation received request_id=a1"])
    worker2 = log("worker-2", ['request received request_id="b2"'])
    records = [RequestRecord(kind="chat-stream", endpoint="/v1/chat/completions", stream=True, outcome=CANCELLED)
               for _ in ids]
    (check,) = build_checks([{"check": "cancellations_counted", "roles": "worker-*", "within_s": 0,
                              "name": "dynamo_component_cancellation_total", "received_line": "request received"}])

    def verdict(after, frontend_log=frontend):
        result = RunResult(records=records, metrics_before={"worker-1": snap(0), "worker-2": snap(0)},
                           metrics_after={"worker-1": snap(after[0]), "worker-2": snap(after[1])},
                           log_paths={"frontend": frontend_log, "worker-1": worker1, "worker-2": worker2})
        return evaluate([check], result, builtin=False)[0]

    v = verdict((1, 1))
    assert v.passed, v.detail
    assert "clients cancelled 3, frontend logged 3 'route request cancelled', 2 of them 'request received'" in v.detail
    assert not verdict((1, 0)).passed  # b2 reached worker-2, which never counted it
    assert not verdict((2, 1)).passed  # more than reached them
    # a frontend log without the lines cannot excuse a count of nothing
    silent = log("silent", ["nothing here"])
    v = verdict((0, 0), frontend_log=silent)
    assert not v.passed and "names fewer cancelled requests than the clients cancelled" in v.detail
    # a received_line that matches nothing owes nothing: judged as empty, not passed
    (typo,) = build_checks([{"check": "cancellations_counted", "roles": "worker-*", "within_s": 0,
                             "name": "dynamo_component_cancellation_total", "received_line": "request recieved"}])
    result = RunResult(records=records, metrics_before={"worker-1": snap(0), "worker-2": snap(0)},
                       metrics_after={"worker-1": snap(0), "worker-2": snap(0)},
                       log_paths={"frontend": frontend, "worker-1": worker1, "worker-2": worker2})
    v = evaluate([typo], result, builtin=False)[0]
    assert not v.passed and v.detail.startswith("empty: ") and "0 of them 'request recieved'" in v.detail
