"""The main drill as a user runs it: `locust -f locustfiles/migration.py --headless`.

Each test starts the whole thing as a subprocess (Locust + the embedded reference deployment on
127.0.0.1) with a small request budget, then reads the artifacts it wrote.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ftlocust.processes import process_identity
from ftlocust.records import read_records
from tests.support.distributed import free_port, run_distributed

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOCUST = [sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "locustfiles", "migration.py"), "--headless"]
SMALL = ["--ft-requests-per-client", "12", "--ft-target-token-delay", "0.01"]


def _run(args, artifacts, timeout=240):
    return subprocess.run(LOCUST + ["--ft-artifacts", str(artifacts)] + args, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _pids(artifacts):
    """Every process the deployment started, from its ground-truth event log."""
    path = os.path.join(artifacts, "deployment", "events.jsonl")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        events = [json.loads(line) for line in f if line.strip()]
    return {f"{e['role']}:{e['pid']}": e["pid"] for e in events if e["event"] == "process_started"}


def _alive(pid):
    return process_identity(pid) is not None  # None: gone, or a zombie


def _assert_torn_down(artifacts):
    pids = _pids(artifacts)
    assert pids, "the deployment wrote no pid files"
    deadline = time.time() + 20
    while any(_alive(p) for p in pids.values()) and time.time() < deadline:
        time.sleep(0.1)
    assert not [n for n, p in pids.items() if _alive(p)]


def test_main_drill_passes_with_migration(tmp_path):
    art = tmp_path / "run"
    proc = _run(SMALL, art)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    assert summary["passed"] is True
    (fault,) = summary["faults"]
    assert fault["kind"] == "process-signal" and fault["target"].startswith("worker-")
    assert summary["phases"]["before"]["success"] > 0 and summary["phases"]["after"]["success"] > 0
    assert summary["phases"]["all"]["failed"] == 0
    rec = summary["recovery"]
    # each client figure is >= the one before it, and steady state is after the disruption ends
    order = [rec[k] for k in ("time_to_first_success_s", "time_to_sustained_success_s", "time_to_latency_back_s",
                              "time_to_steady_state_s")]
    assert None not in order and order == sorted(order), rec
    assert rec["time_to_steady_state_s"] >= rec["disruption_window_s"]
    assert fault["recovered_at"] is None  # a SIGKILL nothing restarted has no end of effect
    assert summary["startup_s"] > 0
    records = read_records(str(art / "requests.jsonl"))
    assert len(records) == summary["phases"]["all"]["count"]
    probe = [r for r in records if r.client_id.endswith("/probe")]
    assert len(probe) == 1 and probe[0].outcome == "ok" and probe[0].output_tokens == probe[0].expected_tokens
    assert probe[0].token_check == "ok"
    # The fault landed in flight, on the clock of the probe's own chunks: 40 before it (the
    # trigger), the rest after it, on the worker the stream migrated to.
    progress = fault["detail"]["probe"]
    assert progress["request_id"] == probe[0].request_id and progress["mid_stream"] is True
    assert progress["tokens_before"] >= 40 and progress["tokens_after"] > 0 and "too_late" not in progress
    assert progress["tokens_before"] + progress["tokens_after"] == probe[0].content_chunks
    # The server view has how the killed worker ended; nothing else ended during the run.
    assert summary["exits"] == [{"role": fault["target"], "pid": fault["detail"]["pid"], "exit_code": None,
                                 "signal": "SIGKILL"}]
    assert "<h2>Exits</h2>" in (art / "report.html").read_text()
    for name in ("results.txt", "test.log", "report.html", "timeline.png", "services/frontend/frontend.log",
                 "services/frontend/frontend.metrics.before.txt", "services/frontend/frontend.metrics.after.txt"):
        assert (art / name).is_file(), name
    table = (art / "results.txt").read_text()
    assert "Success Before" in table and "PASS" in table
    assert "Success Before" in proc.stdout
    _assert_torn_down(art)


def test_main_drill_fails_without_migration(tmp_path):
    art = tmp_path / "run"
    proc = _run(SMALL + ["--ft-target-migration-limit", "0"], art)
    assert proc.returncode not in (0, None), proc.stdout[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    assert summary["passed"] is False
    failed = {c["name"] for c in summary["checks"] if not c["passed"]}
    assert {"no_failures[all]", "migrations that succeeded (outcome=success) >= 1"} <= failed
    assert "FAIL no_failures[all]" in proc.stdout
    records = read_records(str(art / "requests.jsonl"))
    assert any(r.outcome == "stream_error_event" for r in records)
    _assert_torn_down(art)


def test_sigterm_mid_run_rolls_back_and_keeps_every_finished_request(tmp_path):
    art = tmp_path / "run"
    proc = subprocess.Popen(LOCUST + ["--ft-artifacts", str(art), "--ft-requests-per-client", "100"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = art / "requests.jsonl"
        deadline = time.time() + 90
        while time.time() < deadline and (not log.exists() or log.read_text().count("\n") < 15):
            time.sleep(0.2)
        assert log.exists(), "no request finished within 90 s"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = read_records(str(log))
    assert len(records) >= 15
    summary = json.loads((art / "summary.json").read_text())
    assert summary["phases"]["all"]["count"] == len(records)
    _assert_torn_down(art)


def test_dry_run_starts_nothing(tmp_path):
    art = tmp_path / "run"
    proc = _run(["--ft-dry-run"], art, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SIGKILL" in proc.stdout and "serving" in proc.stdout
    assert not (art / "requests.jsonl").exists() and not _pids(art)


@pytest.mark.parametrize("args, message", [
    (["--ft-fault-after-requests", "100000"], "--ft-fault-after-requests: expected at most the total request budget 1100"),
    (["--ft-scenario", "/nonexistent.yaml"], "--ft-scenario: expected a scenario file, got '/nonexistent.yaml' (no such file)"),
    (["--ft-target-workers", "0"], "--ft-target-workers: expected an integer > 0"),
    (["--ft-recovery-window", "0.05"], "--ft-recovery-window: expected a number >= 0.2 (the health poll interval"),
    (["--ft-rate", "0"], "--ft-rate"),
])
def test_bad_input_is_one_line_before_any_load(tmp_path, args, message):
    proc = _run(args, tmp_path / "run", timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "requests.jsonl").exists() or not read_records(str(tmp_path / "run" / "requests.jsonl"))


def test_distributed_master_and_two_workers_fire_once(tmp_path):
    """Locust's distributed mode: the master owns the trigger and the verdicts; the fault fires
    exactly once; every worker's requests reach the master's request log."""
    art = tmp_path / "run"
    code, out, worker_codes = run_distributed(os.path.join(ROOT, "locustfiles", "migration.py"),
                                              ["--ft-artifacts", str(art)] + SMALL)
    assert worker_codes == [0, 0]
    assert code == 0, out[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    assert summary["passed"] and len(summary["faults"]) == 1
    assert out.count("injected SIGKILL") == 1
    records = read_records(str(art / "requests.jsonl"))
    assert len({r.locust_worker for r in records}) == 2
    assert len(records) == 10 * 12 + 1  # every load user's budget + the probe
    _assert_torn_down(art)


HANG_SCENARIO = """
name: hang-worker
target: {kind: reference, workers: 2, migration_limit: 3, options: {token_delay_s: 0.01}}
faults:
  - {name: hang-worker-1, kind: process-signal, target: worker-1, signal: SIGSTOP, trigger: {after_requests: 5}}
checks:
  - {check: success_ratio, phase: before, min: 0.9}
"""


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_run_still_rolls_back_the_fault(tmp_path, stop_signal):
    """Ctrl-C / SIGTERM while a worker is SIGSTOPped: the fault is recovered (SIGCONT) before the
    teardown, the partial results are written, nothing is left running."""
    scenario = tmp_path / "hang.yaml"
    scenario.write_text(HANG_SCENARIO)
    art = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "locustfiles", "load.py"),
                             "--headless", "--ft-scenario", str(scenario), "--ft-endpoint", "completion-stream",
                             "--ft-artifacts", str(art)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = art / "test.log"
        deadline = time.time() + 90
        while time.time() < deadline and not (log.exists() and "in effect" in log.read_text()):
            time.sleep(0.1)
        assert log.exists() and "in effect" in log.read_text(), "the fault never fired"
        time.sleep(1.0)
        proc.send_signal(stop_signal)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    summary = json.loads((art / "summary.json").read_text())
    (fault,) = summary["faults"]
    assert fault["detail"]["signal"] == "SIGSTOP"
    assert fault["recovered_at"] is not None and fault["recovered_at"] > fault["injected_at"]
    assert "recovered hang-worker-1" in (art / "test.log").read_text()
    assert summary["phases"]["all"]["count"] == len(read_records(str(art / "requests.jsonl")))
    _assert_torn_down(art)


def test_recovery_window_ends_the_run_after_the_fault(tmp_path):
    art = tmp_path / "run"
    proc = _run(["--ft-requests-per-client", "100", "--ft-recovery-window", "3"], art)
    assert proc.returncode == 0, proc.stdout[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    (fault,) = summary["faults"]
    last_end = summary["phases"]["all"]["last_end_wall"]
    assert fault["injected_at"] + 3 <= last_end + 1.5  # load went on through the window…
    assert last_end < fault["injected_at"] + 3 + 5  # …and stopped with it, long before 100 requests each
    assert summary["phases"]["all"]["count"] < 10 * 100
    assert "recovery window of 3.0 s after the last fault is over" in (art / "test.log").read_text()


def test_web_ui_mode_shows_phase_rows_and_ends_by_itself(tmp_path):
    """The same drill under the web UI (bound to loopback): the phase rows are in the UI's
    statistics; with --autostart --autoquit the run ends by itself and keeps its exit code."""
    import urllib.request

    art = tmp_path / "run"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "locustfiles", "migration.py"), "--autostart",
         "--autoquit", "1", "--web-host", "127.0.0.1", "--web-port", str(port), "--ft-artifacts", str(art)] + SMALL,
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    names = set()
    try:
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and not any("[after]" in n for n in names):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats/requests", timeout=2) as r:
                    names |= {s["name"] for s in json.load(r)["stats"]}
            except OSError:
                pass
            time.sleep(0.5)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    assert "completion-stream [before]" in names and "completion-stream [after]" in names
    assert json.loads((art / "summary.json").read_text())["passed"]
    _assert_torn_down(art)


def test_artifacts_folder_of_an_earlier_run_is_refused(tmp_path):
    art = tmp_path / "run"
    art.mkdir()
    (art / "requests.jsonl").write_text("{}\n")
    proc = _run([], art, timeout=60)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    assert (art / "requests.jsonl").read_text() == "{}\n"


LATE = """
name: late-fault
target: {kind: reference, workers: 2, options: {token_delay_s: 0.01}}
plugins: [%s]
probe: {max_tokens: 30, start_after_s: 1}
faults:
  - {name: too-slow, kind: late-noop, target: worker-1, delay_s: 2, trigger: {mid_stream_chunks: 5}}
"""


def test_a_mid_stream_fault_that_lands_after_the_probe_finished_fails_the_run(tmp_path):
    """An injector slower than the stream it was aimed at: the drill would pass without
    testing anything, so `every fault injected` fails it ("landed too late")."""
    scenario = tmp_path / "late.yaml"
    scenario.write_text(LATE % os.path.join(ROOT, "tests", "support", "late_fault_plugin.py"))
    art = tmp_path / "run"
    proc = _run(["--ft-scenario", str(scenario), "--ft-requests-per-client", "12", "-u", "2", "-r", "2"], art)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    (fault,) = summary["faults"]
    progress = fault["detail"]["probe"]
    assert fault["status"] == "injected" and progress["tokens_after"] == 0 and progress["tokens_before"] == 30
    assert progress["probe_ended"] < fault["injected_at"]
    (verdict,) = [c for c in summary["checks"] if c["name"] == "every fault injected"]
    assert not verdict["passed"] and "too-slow landed too late: the probe stream had finished" in verdict["detail"]
    assert verdict["detail"].startswith("0 of 1 injected in time")
    _assert_torn_down(art)
