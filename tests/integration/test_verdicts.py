"""Verdicts that cannot lie, as a user runs drills: a fault that did not happen never passes, a
run without checks keeps Locust's exit code, unreachable triggers are refused before load."""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.support.stream_server import StreamServer

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _locust(locustfile, args, timeout=120):
    return subprocess.run([sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "locustfiles", locustfile),
                           "--headless", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_a_fault_whose_target_exits_before_the_trigger_fails_the_run(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        scenario = tmp_path / "gone.yaml"
        scenario.write_text(f"""
name: target-gone
target: {{kind: reference, workers: 1}}
load: {{requests_per_client: 12, rate: 2}}
faults:
  - {{name: kill-helper, kind: process-signal, target: "pid:{sleeper.pid}", signal: SIGKILL, trigger: {{after_requests: 8}}}}
""")
        art = tmp_path / "run"
        proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "locustfiles", "load.py"),
                                 "--headless", "-u", "2", "-r", "2", "--ft-target-token-delay", "0.005",
                                 "--ft-scenario", str(scenario), "--ft-artifacts", str(art)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 60  # the target goes away after preflight, before the trigger
        log = art / "requests.jsonl"
        while (not log.exists() or log.read_text().count("\n") < 2) and time.time() < deadline:
            time.sleep(0.05)
        sleeper.kill()
        sleeper.wait(timeout=10)
        out, _ = proc.communicate(timeout=120)
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, out[-3000:]
    assert "FAIL every fault injected" in out and "kill-helper not injected" in out
    summary = json.loads((art / "summary.json").read_text())
    (fault,) = summary["faults"]
    assert fault["status"] == "failed" and fault["injected_at"] is None and "no longer the process" in fault["error"]
    assert summary["fault_time"] is None
    assert summary["phases"]["spanning"]["count"] == 0 and summary["phases"]["after"]["count"] == 0
    assert "not injected" in (art / "results.txt").read_text()


def test_without_checks_a_run_whose_requests_fail_exits_non_zero(tmp_path):
    with StreamServer("--fail-every", "2") as server:
        proc = _locust("load.py", ["--host", server.url, "-u", "2", "-r", "2", "--ft-requests-per-client", "5",
                                   "--ft-rate", "20", "--ft-output-tokens", "4", "--ft-artifacts", str(tmp_path / "run")])
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]  # Locust's own: a request failed
    assert "no checks: exit code 1 from Locust" in proc.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["phases"]["all"]["failed"] >= 4


def test_without_checks_a_clean_run_exits_0(tmp_path):
    with StreamServer() as server:
        proc = _locust("load.py", ["--host", server.url, "-u", "2", "-r", "2", "--ft-requests-per-client", "4",
                                   "--ft-rate", "20", "--ft-output-tokens", "4", "--ft-artifacts", str(tmp_path / "run")])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("probe, message", [
    ("{max_tokens: 50}", "faults[0].trigger.mid_stream_chunks: expected at most probe.max_tokens 50"),
    ("{max_tokens: many}", "probe.max_tokens: expected an integer >= 1, got 'many'"),
])
def test_an_unreachable_mid_stream_trigger_is_refused_before_load(tmp_path, probe, message):
    scenario = tmp_path / "probe.yaml"
    scenario.write_text(f"""
name: unreachable
probe: {probe}
faults:
  - {{kind: process-signal, target: serving-worker, signal: SIGKILL, trigger: {{mid_stream_chunks: 400}}}}
""")
    art = tmp_path / "run"
    proc = _locust("migration.py", ["--ft-scenario", str(scenario), "--ft-artifacts", str(art)], timeout=60)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    (line,) = [l for l in proc.stderr.splitlines() if l.startswith("ftlocust:")]
    assert message in line
    assert not (art / "requests.jsonl").exists() and not (art / "deployment").exists()


def test_an_after_seconds_trigger_past_the_run_time_is_refused(tmp_path):
    proc = _locust("migration.py", ["-t", "5s", "--ft-fault-after-seconds", "30", "--ft-artifacts", str(tmp_path / "r")],
                   timeout=60)
    assert proc.returncode == 2 and "--ft-fault-after-seconds" in proc.stderr and "Traceback" not in proc.stderr
