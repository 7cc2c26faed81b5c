"""report.html and timeline.png from hand-built records (no network)."""
from ftlocust import plot, report
from ftlocust.checks import Verdict
from ftlocust.phases import FaultEvent, phase_stats, recovery
from ftlocust.records import CONNECTION_ERROR, OK
from tests.support.factories import T_F, rec


def _run():
    records = [rec(90 + i * 0.5, 91 + i * 0.5, OK, output_tokens=10) for i in range(20)]
    records += [rec(99.5, 100.5, CONNECTION_ERROR), rec(100.2, 100.4, CONNECTION_ERROR)]
    faults = [FaultEvent(name="kill-worker-1", kind="process-signal", target="worker-1", injected_at=T_F,
                         recovered_at=T_F + 5, detail={"signal": "SIGKILL"})]
    verdicts = [Verdict("no_failures[all]", False, "2 failed of 22"), Verdict("max_recovery", True, "1.0 s")]
    phases = phase_stats(records, T_F)
    summary = report.build_summary("kill", faults, phases, recovery(records, T_F), 0.7, verdicts)
    return records, faults, summary


def test_timeline_png_is_a_picture(tmp_path):
    records, faults, _ = _run()
    path = plot.timeline_png(records, faults, str(tmp_path / "timeline.png"), title="kill")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_timeline_of_an_empty_run_still_draws(tmp_path):
    assert open(plot.timeline_png([], [], str(tmp_path / "t.png")), "rb").read()[:4] == b"\x89PNG"


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
