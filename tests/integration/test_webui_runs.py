"""Web UI mode: every Stop ends a run (rollback, verdicts, artifacts) while the embedded
deployment keeps running; the next start is a new run in `<artifacts>/run-2/`; quitting tears
the deployment down. Driven over HTTP as the UI does it, bound to 127.0.0.1."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from ftlocust.processes import process_identity
from ftlocust.records import read_records
from tests.support.distributed import free_port

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIO = """
name: hang-worker-webui
target: {kind: reference, workers: 2, migration_limit: 3}
load: {endpoint: completion-stream, requests_per_client: 100, rate: 2, output_tokens: 20}
faults:
  - {name: hang-worker-1, kind: process-signal, target: worker-1, signal: SIGSTOP, trigger: {after_requests: 6}}
checks:
  - {check: success_ratio, phase: before, min: 0.9}
"""


def _post(port, path, form=None):
    data = urllib.parse.urlencode(form or {}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data), timeout=60) as r:
        return json.load(r)


def _wait_for(what, predicate, timeout_s, proc):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"locust exited ({proc.returncode}) while waiting for {what}: {proc.stdout.read()[-3000:]}")
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _alive(pid):
    return process_identity(pid) is not None  # None: gone, or a zombie


def _swarm_until_fault_then_stop(port, host, folder, proc):
    started = _post(port, "/swarm", {"user_count": 4, "spawn_rate": 4, "host": host})
    assert started["success"], started
    _wait_for(f"the fault in {folder}", lambda: "in effect" in _read(os.path.join(folder, "test.log")), 60, proc)
    time.sleep(1.0)  # the worker stays stopped for a while: requests hang on it
    assert _post(port, "/stop")["success"]  # returns once the run is finished
    summary = json.loads(_read(os.path.join(folder, "summary.json")))
    assert os.path.isfile(os.path.join(folder, "results.txt")) and os.path.isfile(os.path.join(folder, "report.html"))
    return summary


def test_each_stop_finishes_a_run_and_quitting_tears_the_target_down(tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(SCENARIO)
    art = tmp_path / "run"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "locustfiles", "load.py"), "--web-host",
         "127.0.0.1", "--web-port", str(port), "--ft-scenario", str(scenario), "--ft-artifacts", str(art),
         "--ft-target-token-delay", "0.01"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        host = _wait_for("the deployment", lambda: (m := re.search(r"deployment ready at (\S+)",
                                                                   _read(art / "test.log"))) and m.group(1), 60, proc)

        def ui_up():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                    return True
            except OSError:
                return False

        _wait_for("the web UI", ui_up, 30, proc)
        pids = {p: int(_read(art / "deployment" / "pids" / p)) for p in os.listdir(art / "deployment" / "pids")}
        assert len(pids) == 3 and all(_alive(p) for p in pids.values())

        first = _swarm_until_fault_then_stop(port, host, str(art), proc)
        assert all(_alive(p) for p in pids.values()), "a Stop must keep the deployment running"
        second = _swarm_until_fault_then_stop(port, host, str(art / "run-2"), proc)
        assert all(_alive(p) for p in pids.values())

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 0, out[-3000:]  # the worst exit code of the runs: both passed
    for summary, folder in ((first, art), (second, art / "run-2")):
        (fault,) = summary["faults"]
        assert fault["detail"]["signal"] == "SIGSTOP" and fault["detail"]["finished_requests_at_trigger"] == 6
        assert fault["recovered_at"] is not None and fault["recovered_at"] > fault["injected_at"]  # SIGCONT at Stop
        checks = {c["name"]: c for c in summary["checks"]}
        assert checks["every rollback succeeded"]["passed"], checks
        assert summary["passed"], summary["checks"]
        records = read_records(str(folder / "requests.jsonl"))
        assert summary["phases"]["all"]["count"] == len(records) >= 6
        assert summary["extra"]["artifacts"] == str(folder)
    first_ids = {r.request_id for r in read_records(str(art / "requests.jsonl"))}
    assert not first_ids & {r.request_id for r in read_records(str(art / "run-2" / "requests.jsonl"))}
    assert second["faults"][0]["injected_at"] > first["faults"][0]["recovered_at"]
    assert f"run 1 PASSED: {art}" in out and f"run 2 PASSED: {art / 'run-2'}" in out
    assert "recovered hang-worker-1" in _read(art / "run-2" / "test.log")
    deadline = time.time() + 20
    while any(_alive(p) for p in pids.values()) and time.time() < deadline:
        time.sleep(0.1)
    assert not [name for name, p in pids.items() if _alive(p)], "the deployment outlived Locust"
