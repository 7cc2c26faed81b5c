"""Results table (seed columns + extended), summary.json, results.txt, verdict lines."""

import json

import pytest

from ftlocust.checks import Verdict
from ftlocust.phases import FaultEvent, phase_stats, recovery
from ftlocust.records import CANCELLED, REJECTED, TRUNCATED
from ftlocust.report import (
    EXTENDED_COLUMNS,
    SEED_COLUMNS,
    build_summary,
    format_cell,
    format_table,
    format_verdicts,
    results_table,
    row_from,
    table_row,
    write_artifacts,
)

from tests.support.factories import T_F, rec  # noqa: E402


def records():
    return [
        rec(90.0, 92.0, ttft_s=0.5),  # before, latency 2
        rec(91.0, 95.0, ttft_s=0.75),  # before, latency 4
        rec(96.0, 97.0, REJECTED),  # before, failed
        rec(99.0, 105.0, ttft_s=0.25),  # spanning ok, latency 6
        rec(99.0, 101.0, TRUNCATED, output_tokens=3),  # spanning, cut
        rec(100.0, 101.0, ttft_s=1.25),  # after ok, latency 1
        rec(101.0, 102.0, CANCELLED),
    ]


def summary(faults=None, server_recovery_s=None, verdicts=(), startup_s=12.3456):
    if faults is None:
        faults = [FaultEvent("decode_worker", "process", "worker-1", T_F, 104.0, {"signal": "SIGKILL"})]
    t_f = min((f.injected_at for f in faults), default=None)
    rec_dict = recovery(records(), t_f)
    if server_recovery_s is not None:
        rec_dict["server_recovery_s"] = server_recovery_s
    return build_summary("migration", faults, phase_stats(records(), t_f), rec_dict, startup_s, list(verdicts),
                         {"requests": 7})


def test_format_cell():
    assert format_cell(None) == "N/A"
    assert format_cell(1.005) == "1.00" and format_cell(2.0) == "2.00" and format_cell(12.3456) == "12.35"
    assert format_cell(3) == "3" and format_cell("x") == "x" and format_cell(True) == "True"


def test_format_table_layout():
    text = format_table(["Name", "Value"], [["a", 1.5], ["longer", None]])
    assert text == (
        "Name    Value\n"
        "------  -----\n"
        "a        1.50\n"
        "longer    N/A\n"
    )
    with pytest.raises(ValueError):
        format_table(["a", "b"], [[1]])


def test_table_row_seed_semantics():
    row = table_row(summary())
    cols = dict(zip(SEED_COLUMNS + EXTENDED_COLUMNS, row))
    assert cols == {
        "Failure": "decode_worker",
        "Startup": 12.3456,
        "Success Before": 2,
        "Failed Before": 1,
        "Success After": 2,  # spanning ok + after ok (by completion time)
        "Failed After": 1,
        "Latency Before": 3.0,
        "Latency After": 3.5,  # mean(6, 1)
        "Recovery": 1.0,  # no server view → time_to_first_success
        "Spanning OK": 1,
        "Spanning Failed": 1,
        "TTFT p50 Before": 0.625,
        "TTFT p50 After": 1.25,
        "Cut Streams": 1,
        "Cancelled": 1,
    }


def test_recovery_column_prefers_the_server_view():
    cols = dict(zip(SEED_COLUMNS, table_row(summary(server_recovery_s=7.5), extended=False)))
    assert cols["Recovery"] == 7.5
    assert len(table_row(summary(), extended=False)) == len(SEED_COLUMNS)


def test_results_table_text():
    text = results_table([summary()])
    lines = text.splitlines()
    assert lines[0].split("  ")[0] == "Failure"
    for header in SEED_COLUMNS + EXTENDED_COLUMNS:
        assert header in lines[0]
    assert lines[0].index("Failure") < lines[0].index("Startup") < lines[0].index("Recovery") < lines[0].index("Spanning OK")
    assert lines[2].split() == ["decode_worker", "12.35", "2", "1", "2", "1", "3.00", "3.50", "1.00",
                                "1", "1", "0.62", "1.25", "1", "1"]
    seed_only = results_table([summary()], extended=False).splitlines()
    assert seed_only[0].split("  ")[-1].strip() == "Recovery"


def test_results_table_without_fault_shows_na_after():
    lines = results_table([summary(faults=[])]).splitlines()
    assert lines[2].split() == ["none", "12.35", "4", "2", "N/A", "N/A", "3.25", "N/A", "N/A",
                                "N/A", "N/A", "0.62", "N/A", "1", "1"]


def test_results_table_several_rows_and_faults():
    two = [FaultEvent("kill-b", "process", "worker-2", 200.0), FaultEvent("kill-a", "process", "worker-1", T_F)]
    lines = results_table([summary(), summary(faults=two, startup_s=None)]).splitlines()
    assert len(lines) == 4
    assert lines[3].split()[:2] == ["kill-a+kill-b", "N/A"]


def test_row_from_without_a_summary():
    ps = phase_stats(records(), T_F)
    rec_dict = recovery(records(), T_F)  # carries fault_time
    row = table_row(row_from("kill-a, kill-b", 3.0, ps, rec_dict, records()))
    assert row == ["kill-a, kill-b", 3.0] + table_row(summary())[2:]
    # no fault injected (the trigger never fired): After columns N/A even with a failure name
    no_fault = row_from("kill-a", 3.0, phase_stats(records(), None), {"server_recovery_s": None})
    cols = dict(zip(SEED_COLUMNS, table_row(no_fault)))
    assert cols["Failure"] == "kill-a" and cols["Success Before"] == 4
    assert cols["Success After"] is None and cols["Recovery"] is None
    assert results_table([no_fault]).splitlines()[2].split()[:5] == ["kill-a", "3.00", "4", "2", "N/A"]


def test_build_summary_shape():
    verdicts = [Verdict("a", True, "fine"), Verdict("b", False, "broke")]
    s = summary(verdicts=verdicts)
    assert list(s) == ["scenario", "fault_time", "faults", "phases", "recovery", "startup_s", "checks", "passed", "extra"]
    assert s["scenario"] == "migration" and s["fault_time"] == T_F and s["startup_s"] == 12.3456
    assert s["faults"] == [{"name": "decode_worker", "kind": "process", "target": "worker-1",
                            "injected_at": T_F, "recovered_at": 104.0, "detail": {"signal": "SIGKILL"}}]
    for phase in ("before", "spanning", "after"):
        for key in ("success", "failed", "latency_mean_s", "latency_p50_s", "latency_p99_s", "ttft_p50_s"):
            assert key in s["phases"][phase]
    assert (s["phases"]["before"]["success"], s["phases"]["before"]["failed"]) == (2, 1)
    assert s["recovery"]["time_to_first_success_s"] == 1.0
    assert s["recovery"]["disruption_window_s"] == 1.0
    assert s["recovery"]["server_recovery_s"] is None
    assert "time_to_steady_state_s" in s["recovery"]
    assert s["checks"] == [{"name": "a", "passed": True, "detail": "fine"}, {"name": "b", "passed": False, "detail": "broke"}]
    assert s["passed"] is False
    assert s["extra"] == {"requests": 7}
    json.dumps(s, allow_nan=False)


def test_build_summary_passed_and_defaults():
    s = build_summary("x", [], {}, {}, None, [{"name": "a", "passed": True, "detail": ""}])
    assert s["passed"] is True and s["fault_time"] is None and s["faults"] == []
    assert s["phases"]["after"]["count"] == 0 and s["phases"]["after"]["latency_p99_s"] is None
    assert s["recovery"] == {k: None for k in ("time_to_first_success_s", "disruption_window_s",
                                               "time_to_steady_state_s", "server_recovery_s")}
    assert build_summary("x", [], {}, {}, None, [])["passed"] is True  # no checks: nothing failed
    assert s["extra"] == {}


def test_format_verdicts():
    text = format_verdicts([Verdict("success_ratio[after] >= 0.99", True, "after: 10/10 ok"),
                            {"name": "no_truncated_streams", "passed": False, "detail": "1 truncated: r1"}])
    assert text == ("PASS success_ratio[after] >= 0.99 — after: 10/10 ok\n"
                    "FAIL no_truncated_streams — 1 truncated: r1")
    assert format_verdicts([]) == "(no checks)"


def test_write_artifacts(tmp_path):
    verdicts = [Verdict("a", True, "fine")]
    s = summary(verdicts=verdicts)
    table = results_table([s])
    paths = write_artifacts(str(tmp_path / "out"), s, table, verdicts)
    assert paths == {"summary": str(tmp_path / "out" / "summary.json"), "results": str(tmp_path / "out" / "results.txt")}
    assert json.loads(open(paths["summary"]).read()) == s
    assert open(paths["results"]).read() == table + "\nPASS a — fine\n"
