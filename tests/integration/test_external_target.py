"""A drill against a deployment ftlocust did not start (`--host`): the scenario names the
processes by identity (pid files) and where their evidence is (metrics URLs, log files)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ftlocust.records import read_records

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def deployment(tmp_path, request):
    """A reference deployment started here (not by ftlocust): (run_dir, role -> URL). A test may
    pass the reference's extra arguments as the fixture's parameter (indirect)."""
    run_dir = tmp_path / "dep"
    proc = subprocess.Popen([sys.executable, "-m", "ftlocust.targets.reference", "--workers", "2", "--port", "0",
                             "--run-dir", str(run_dir), "--token-delay-s", "0.01", *getattr(request, "param", [])],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        addr = run_dir / "addr"
        while time.time() < deadline and not all((addr / f"{r}.json").exists() for r in ("frontend", "worker-1", "worker-2")):
            time.sleep(0.1)
        urls = {r: json.loads((addr / f"{r}.json").read_text())["url"] for r in ("frontend", "worker-1", "worker-2")}
        yield run_dir, urls
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_external_deployment_fault_by_pidfile_with_evidence(tmp_path, deployment):
    run_dir, urls = deployment
    scenario = tmp_path / "external.yaml"
    scenario.write_text(f"""
name: external-kill
target:
  kind: external
  metrics: {{frontend: "{urls['frontend']}/metrics", worker-1: "{urls['worker-1']}/metrics"}}
  logs: {{frontend: "{run_dir}/logs/frontend.log", worker-1: "{run_dir}/logs/worker-1.log"}}
  pids: {{worker-1: "pidfile:{run_dir}/pids/worker-1.pid"}}
load: {{endpoint: completion-stream, requests_per_client: 6}}
faults:
  - {{name: kill-worker-1, kind: process-signal, target: worker-1, signal: SIGKILL, trigger: {{after_seconds: 2.5}}}}
checks:
  - {{check: no_failures, phase: all}}
  - {{check: log_pattern, role: frontend, pattern: "Stream disconnected, recreating stream"}}
  - {{check: metric_increased, role: frontend, name: dynamo_frontend_requests_total, min_delta: 60}}
""")
    pid = int((run_dir / "pids" / "worker-1.pid").read_text())
    art = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "locustfiles", "load.py"),
                           "--headless", "--host", urls["frontend"], "--ft-scenario", str(scenario),
                           "--ft-artifacts", str(art)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    assert summary["exits"] is None  # a deployment ftlocust did not start: how its processes ended is unknown
    (fault,) = summary["faults"]
    assert fault["target"] == "worker-1" and fault["detail"]["pid"] == pid
    assert len(read_records(str(art / "requests.jsonl"))) == 60
    assert (art / "services" / "frontend" / "frontend.metrics.after.txt").is_file()
    assert (art / "services" / "worker-1" / "worker-1.log").is_file()
    with open(f"/proc/{pid}/stat") if os.path.exists(f"/proc/{pid}") else open(os.devnull) as f:
        state = f.read()
    assert not state or state.rsplit(")", 1)[1].split()[0] == "Z"  # the worker we named is gone


def test_external_dry_run_shows_the_resolved_process(tmp_path, deployment):
    run_dir, urls = deployment
    scenario = tmp_path / "external.yaml"
    scenario.write_text(f"""
name: external-stop
target: {{kind: external, pids: {{worker-2: "pidfile:{run_dir}/pids/worker-2.pid"}}}}
faults:
  - {{kind: process-signal, target: worker-2, signal: SIGSTOP, trigger: {{after_seconds: 5}}}}
""")
    pid = int((run_dir / "pids" / "worker-2.pid").read_text())
    proc = subprocess.run([sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "locustfiles", "load.py"),
                           "--headless", "--host", urls["frontend"], "--ft-scenario", str(scenario), "--ft-dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"pid {pid}" in proc.stdout and "ftlocust.targets.reference" in proc.stdout and "SIGSTOP" in proc.stdout
