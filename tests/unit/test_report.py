"""Results table (seed columns + extended), summary.json, results.txt, verdict lines."""

import json

import pytest

from ftlocust.checks import Verdict
from ftlocust.phases import FaultEvent, analyse, phase_stats, recovery
from ftlocust.records import CANCELLED, REJECTED, TRUNCATED
from ftlocust.report import (
    EXTENDED_COLUMNS,
    SEED_COLUMNS,
    build_summary,
    fault_rows,
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


def summary(faults=None, server_recovery=None, verdicts=(), startup_s=12.3456, rows=records):
    if faults is None:
        faults = [FaultEvent("decode_worker", "process", "worker-1", T_F, 104.0, detail={"signal": "SIGKILL"})]
    analysis = analyse(rows(), faults, server_recovery)
    return build_summary("migration", analysis, startup_s, list(verdicts), {"requests": 7})


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
    (row,) = [table_row(r) for r in fault_rows(summary())]
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
        "Recovery": None,  # the server view only: not measured here
        "Spanning OK": 1,
        "Spanning Failed": 1,
        "TTFT p50 Before": 0.625,
        "TTFT p50 After": 1.25,
        "Cut Streams": 1,
        "Cancelled": 1,
        # W 5 s, baseline 2/3 → threshold 0.62: at 101 the window holds the cut stream and the
        # first success (0.5); at 105 the spanning success joins (0.67) and stays
        "First OK": 1.0,
        "Disruption": 1.0,
        "Sustained": 5.0,
        "Latency Back": 5.0,
        "Steady": 5.0,
    }


def test_recovery_column_is_the_server_view_only():
    cols = dict(zip(SEED_COLUMNS, table_row(fault_rows(summary(server_recovery={"decode_worker": 7.5}))[0],
                                            extended=False)))
    assert cols["Recovery"] == 7.5
    assert len(table_row(fault_rows(summary())[0], extended=False)) == len(SEED_COLUMNS)


def test_results_table_text():
    text = results_table([summary()])
    lines = text.splitlines()
    assert lines[0].split("  ")[0] == "Failure"
    for header in SEED_COLUMNS + EXTENDED_COLUMNS:
        assert header in lines[0]
    assert lines[0].index("Failure") < lines[0].index("Startup") < lines[0].index("Recovery") < lines[0].index("Spanning OK")
    assert lines[0].index("Cancelled") < lines[0].index("First OK") < lines[0].index("Disruption") \
        < lines[0].index("Sustained") < lines[0].index("Latency Back") < lines[0].index("Steady")
    assert lines[2].split() == ["decode_worker", "12.35", "2", "1", "2", "1", "3.00", "3.50", "N/A",
                                "1", "1", "0.62", "1.25", "1", "1", "1.00", "1.00", "5.00", "5.00", "5.00"]
    seed_only = results_table([summary()], extended=False).splitlines()
    assert seed_only[0].split("  ")[-1].strip() == "Recovery"


def test_results_table_without_fault_shows_na_after():
    lines = results_table([summary(faults=[])]).splitlines()
    assert len(lines) == 3
    assert lines[2].split() == ["none", "12.35", "4", "2", "N/A", "N/A", "3.25", "N/A", "N/A",
                                "N/A", "N/A", "0.62", "N/A", "1", "1", "N/A", "N/A", "N/A", "N/A", "N/A"]


def _two_kills():
    return [
        rec(90.0, 91.0), rec(91.0, 92.0),  # before kill-a
        rec(99.0, 101.0, TRUNCATED, output_tokens=3),  # cut by kill-a
        rec(101.0, 102.0), rec(150.0, 151.0),  # after kill-a, before kill-b
        rec(199.0, 202.0), rec(199.5, 200.5, REJECTED),  # spanning kill-b
        rec(201.0, 203.0), rec(202.0, 204.0),  # after kill-b
    ]


def _four_faults():
    return [  # the scenario's order: kill-b was planned first
        FaultEvent("kill-b", "process-signal", "worker-2", 200.0),
        FaultEvent("stall", "process-signal", "worker-1", None, status="not_fired", error="trigger never reached"),
        FaultEvent("kill-a", "process-signal", "worker-1", T_F),
        FaultEvent("kill-fe", "process-signal", "frontend", None, status="failed", error="OSError: denied"),
    ]


def test_results_table_one_row_per_fault_in_scenario_order():
    s = summary(faults=_four_faults(), server_recovery={"kill-a": 1.5, "kill-b": 2.5}, rows=_two_kills, startup_s=3.0)
    lines = results_table([s]).splitlines()
    assert len(lines) == 2 + 4
    kill_b, stall, kill_a, kill_fe = (line.split() for line in lines[2:])
    # kill-b: what ended after kill-a; before: 2 ok + the stream kill-a cut, spanning 1 ok + 1
    # rejected, after 2 ok
    assert kill_b[:9] == ["kill-b", "3.00", "2", "1", "3", "1", "1.00", "2.33", "2.50"]
    assert kill_b[9:11] == ["1", "1"]
    # kill-a: ended up to kill-b: before 2 ok, spanning 1 cut, after 2 ok
    assert kill_a[:9] == ["kill-a", "3.00", "2", "0", "2", "1", "1.00", "1.00", "1.50"]
    assert kill_a[9:11] == ["0", "1"] and kill_a[13] == "1"  # Cut Streams
    assert kill_a[15:17] == ["2.00", "1.00"]  # First OK, Disruption
    assert stall[0] == "stall" and stall[1] == "3.00"
    assert " ".join(stall[2:]) == " ".join(["not fired"] * (len(SEED_COLUMNS) + len(EXTENDED_COLUMNS) - 2))
    assert kill_fe[0] == "kill-fe" and " ".join(kill_fe[2:4]) == "not injected"
    assert lines[2 + 3].count("not injected") == len(SEED_COLUMNS) + len(EXTENDED_COLUMNS) - 2


def test_results_table_several_runs():
    lines = results_table([summary(), summary(faults=_four_faults()[:1], startup_s=None)]).split("\n\n")[0].splitlines()
    assert len(lines) == 4
    assert lines[3].split()[:2] == ["kill-b", "N/A"]


def test_row_from_without_a_summary():
    ps = phase_stats(records(), T_F)
    rec_dict = recovery(records(), T_F)  # carries fault_time
    row = table_row(row_from("kill-a, kill-b", 3.0, ps, rec_dict, records()))
    assert row == ["kill-a, kill-b", 3.0] + table_row(fault_rows(summary())[0])[2:]
    # no fault injected (the trigger never fired): After columns N/A even with a failure name
    no_fault = row_from("kill-a", 3.0, phase_stats(records(), None), {"server_recovery_s": None})
    cols = dict(zip(SEED_COLUMNS, table_row(no_fault)))
    assert cols["Failure"] == "kill-a" and cols["Success Before"] == 4
    assert cols["Success After"] is None and cols["Recovery"] is None
    assert results_table([no_fault]).splitlines()[2].split()[:5] == ["kill-a", "3.00", "4", "2", "N/A"]
    assert table_row(row_from("kill-a", 3.0, {}, {}, status="not_fired"))[2:4] == ["not fired", "not fired"]


def test_build_summary_shape():
    verdicts = [Verdict("a", True, "fine"), Verdict("b", False, "broke")]
    s = summary(verdicts=verdicts)
    assert list(s) == ["scenario", "fault_time", "faults", "phases", "recovery", "per_fault", "startup_s", "checks",
                       "passed", "extra"]
    assert s["scenario"] == "migration" and s["fault_time"] == T_F and s["startup_s"] == 12.3456
    assert s["faults"] == [{"name": "decode_worker", "kind": "process", "target": "worker-1",
                            "injected_at": T_F, "recovered_at": 104.0, "rolled_back_at": None,
                            "status": "injected", "error": None, "detail": {"signal": "SIGKILL"}}]
    for phase in ("before", "spanning", "after"):
        for key in ("success", "failed", "latency_mean_s", "latency_p50_s", "latency_p99_s", "ttft_p50_s"):
            assert key in s["phases"][phase]
    assert (s["phases"]["before"]["success"], s["phases"]["before"]["failed"]) == (2, 1)
    assert s["recovery"]["time_to_first_success_s"] == 1.0
    assert s["recovery"]["disruption_window_s"] == 1.0
    assert s["recovery"]["server_recovery_s"] is None
    for key in ("time_to_sustained_success_s", "time_to_latency_back_s", "time_to_steady_state_s"):
        assert s["recovery"][key] == 5.0
    (entry,) = s["per_fault"]
    assert (entry["name"], entry["status"], entry["error"]) == ("decode_worker", "injected", None)
    assert entry["fault"] == s["faults"][0] and entry["phases"]["before"]["success"] == 2
    assert entry["recovery"]["time_to_steady_state_s"] == 5.0
    assert s["checks"] == [{"name": "a", "passed": True, "detail": "fine"}, {"name": "b", "passed": False, "detail": "broke"}]
    assert s["passed"] is False
    assert s["extra"] == {"requests": 7}
    json.dumps(s, allow_nan=False)


def test_build_summary_keeps_faults_that_did_not_happen():
    s = summary(faults=_four_faults(), rows=_two_kills)
    assert [f["name"] for f in s["faults"]] == ["kill-b", "stall", "kill-a", "kill-fe"]
    assert [f["status"] for f in s["faults"]] == ["injected", "not_fired", "injected", "failed"]
    assert s["fault_time"] == T_F  # the first injected, not the first planned
    stall = s["per_fault"][1]
    assert (stall["phases"], stall["recovery"], stall["error"]) == (None, None, "trigger never reached")
    json.dumps(s, allow_nan=False)


def test_build_summary_passed_and_defaults():
    s = build_summary("x", {}, None, [{"name": "a", "passed": True, "detail": ""}])
    assert s["passed"] is True and s["fault_time"] is None and s["faults"] == [] and s["per_fault"] == []
    assert s["phases"]["after"]["count"] == 0 and s["phases"]["after"]["latency_p99_s"] is None
    assert s["recovery"] == {k: None for k in ("time_to_first_success_s", "disruption_window_s",
                                               "time_to_sustained_success_s", "time_to_latency_back_s",
                                               "time_to_steady_state_s", "server_recovery_s")}
    assert build_summary("x", {}, None, [])["passed"] is True  # no verdicts: nothing failed
    assert build_summary("x", {}, None, [Verdict("no load generator lost", False, "1 lost")])["passed"] is False
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


def test_client_columns_name_their_figures():
    from ftlocust.report import CLIENT_COLUMNS

    assert CLIENT_COLUMNS == {"First OK": "time_to_first_success_s", "Disruption": "disruption_window_s",
                              "Sustained": "time_to_sustained_success_s", "Latency Back": "time_to_latency_back_s",
                              "Steady": "time_to_steady_state_s"}
