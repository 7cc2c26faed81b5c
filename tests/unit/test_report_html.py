"""report.html and timeline.png from hand-built records (no network)."""
from ftlocust import plot, report
from ftlocust.checks import Verdict
from ftlocust.phases import FaultEvent, analyse
from ftlocust.records import CONNECTION_ERROR, OK
from tests.support.factories import T_F, rec


def _faults():
    return [
        FaultEvent(name="kill-worker-1", kind="process-signal", target="worker-1", injected_at=T_F,
                   recovered_at=T_F + 5, rolled_back_at=T_F + 9, detail={"signal": "SIGKILL"}),
        FaultEvent(name="stall-worker-2", kind="process-signal", target="worker-2", injected_at=None,
                   status="not_fired", error="trigger never reached: 30 s after load start"),
        FaultEvent(name="kill-frontend", kind="process-signal", target="frontend", injected_at=None,
                   status="failed", error="PermissionError: <denied>"),
    ]


def _run(faults=None):
    records = [rec(90 + i * 0.5, 91 + i * 0.5, OK, output_tokens=10) for i in range(20)]
    records += [rec(99.5, 100.5, CONNECTION_ERROR), rec(100.2, 100.4, CONNECTION_ERROR)]
    faults = _faults()[:1] if faults is None else faults
    verdicts = [Verdict("no_failures[all]", False, "2 failed of 22"), Verdict("max_recovery", True, "1.0 s")]
    summary = report.build_summary("kill", analyse(records, faults, {"kill-worker-1": 2.0}), 0.7, verdicts)
    return records, faults, summary


def test_timeline_png_is_a_picture(tmp_path):
    records, faults, _ = _run(_faults())
    path = plot.timeline_png(records, faults, str(tmp_path / "timeline.png"), title="kill")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_timeline_of_an_empty_run_still_draws(tmp_path):
    assert open(plot.timeline_png([], [], str(tmp_path / "t.png")), "rb").read()[:4] == b"\x89PNG"


def test_timeline_marks_only_injected_faults_and_their_recovery_and_rollback():
    marks = [(when, mark, fault.name) for when, mark, fault in plot.fault_marks(_faults())]
    assert marks == [(T_F, "injected", "kill-worker-1"), (T_F + 5, "recovered", "kill-worker-1"),
                     (T_F + 9, "rolled_back", "kill-worker-1")]
    sigkill = FaultEvent("kill", "process-signal", "worker-1", T_F)  # nothing undid it
    assert [m for _, m, _ in plot.fault_marks([sigkill])] == ["injected"]


def test_report_html_holds_verdicts_table_phases_faults_and_the_picture(tmp_path):
    records, faults, summary = _run()
    png = plot.timeline_png(records, faults, str(tmp_path / "timeline.png"))
    table = report.results_table([summary])
    page = open(report.write_html(str(tmp_path), summary, table, png), encoding="utf-8").read()
    assert "FAILED: 1 of 2 checks" in page
    assert '<td>FAIL</td><td>no_failures[all]</td><td>2 failed of 22</td>' in page
    assert "Success Before" in page and "kill-worker-1" in page and "worker-1" in page
    assert 'src="data:image/png;base64,' in page
    assert "<th>before</th><th>spanning</th><th>after</th><th>all</th>" in page
    assert "<th>time_to_sustained_success_s</th>" in page and "<th>time_to_latency_back_s</th>" in page


def test_report_html_shows_every_fault_its_status_and_error(tmp_path):
    records, faults, summary = _run(_faults())
    table = report.results_table([summary])
    main, windows = table.split("\n\n")  # kill-worker-1 was recovered at T_F + 5: it has a window
    assert len(main.splitlines()) == 2 + 3 and len(windows.splitlines()) == 2 + 1
    page = open(report.write_html(str(tmp_path), summary, table), encoding="utf-8").read()
    for name in ("kill-worker-1", "stall-worker-2", "kill-frontend"):
        assert f"<td>{name}</td>" in page
    assert "<td>not_fired</td><td>stall-worker-2</td>" in page
    assert "trigger never reached: 30 s after load start" in page
    assert "<td>failed</td><td>kill-frontend</td>" in page and "PermissionError: &lt;denied&gt;" in page
    assert "not fired" in page and "not injected" in page  # their rows in the results table
    assert "<td>00:01:49.000Z</td>" in page  # rolled back at T_F + 9 (epoch 109 s)
    # recovery: the whole run and one column per injected fault only
    assert "<tr><th></th><th>whole run</th><th>kill-worker-1</th></tr>" in page
    assert "<tr><th>server_recovery_s</th><td>2.00</td><td>2.00</td></tr>" in page
