"""A pod-delete drill through Locust, the real `kubernetes` client and the test API server
(tests/support/fake_kube.py), whose pods are backed by a running reference deployment's
workers: deleting the pod (force) SIGKILLs that worker, and its streams migrate.

    locust -f locustfiles/load.py --headless --host URL --ft-scenario pod-delete.yaml
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_external_target import deployment  # noqa: F401  (fixture)
from tests.support.fake_kube import FakeKube
from tests.support.procfs import gone, wait

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@dataclass
class Process:
    """A process the fake's pod stands for (the fake needs only its pid)."""

    pid: int


@pytest.fixture
def cluster(tmp_path, deployment):  # noqa: F811
    run_dir, urls = deployment
    fake = FakeKube(namespaces=["ft"]).start()
    pids = {role: int((run_dir / "pids" / f"{role}.pid").read_text()) for role in ("worker-1", "worker-2")}
    fake.add_pod("ft", "worker-a", {"app": "worker"}, process=Process(pids["worker-1"]), grace_s=1)
    fake.add_pod("ft", "worker-b", {"app": "worker"}, process=Process(pids["worker-2"]), grace_s=1)
    try:
        yield fake, fake.kubeconfig(tmp_path), urls, pids, run_dir
    finally:
        fake.stop()


def _drill(tmp_path, kubeconfig, urls, run_dir):
    scenario = tmp_path / "pod-delete.yaml"
    scenario.write_text(f"""
name: pod-delete-worker
target:
  kind: external
  logs: {{frontend: "{run_dir}/logs/frontend.log"}}
load: {{endpoint: completion-stream, requests_per_client: 6}}
faults:
  - {{name: delete-worker-pod, kind: pod-delete, target: decode_worker, namespace: ft, selector: "app=worker",
     expect: 2, force: true, kubeconfig: "{kubeconfig}", trigger: {{after_seconds: 2.5}}}}
checks:
  - {{check: no_failures, phase: all}}
  - {{check: log_pattern, role: frontend, pattern: "Stream disconnected, recreating stream"}}
""")
    art = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / "load.py"), "--headless",
                           "--host", urls["frontend"], "--ft-scenario", str(scenario), "--ft-artifacts", str(art)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    return proc, art


def test_pod_delete_drill_kills_the_pods_process_and_its_streams_migrate(tmp_path, cluster):
    fake, kubeconfig, urls, pids, run_dir = cluster
    proc, art = _drill(tmp_path, kubeconfig, urls, run_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    (fault,) = summary["faults"]
    assert fault["status"] == "injected" and [p["name"] for p in fault["detail"]["pods"]] == ["worker-a"]
    assert wait(lambda: gone(pids["worker-1"]), 10) and not gone(pids["worker-2"])
    (delete,) = fake.requested("DELETE", "/pods/worker-a")
    assert delete["body"]["gracePeriodSeconds"] == 0 and delete["body"]["preconditions"]["uid"]
    assert not fake.requested("DELETE", "/pods/worker-b")


def test_an_api_failure_at_injection_fails_the_run_and_deletes_nothing(tmp_path, cluster):
    fake, kubeconfig, urls, pids, run_dir = cluster
    fake.fail("delete", "pods", status=500)
    proc, art = _drill(tmp_path, kubeconfig, urls, run_dir)
    assert proc.returncode == 3, proc.stdout[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    (fault,) = summary["faults"]
    assert fault["status"] == "failed" and "500" in fault["error"] and "\n" not in fault["error"]
    verdicts = {c["name"]: c["passed"] for c in summary["checks"]}
    assert verdicts["every fault injected"] is False
    assert not gone(pids["worker-1"]) and not gone(pids["worker-2"])
