"""The fault-service kind in real drills, against tests/support/fault_service.py (the seed API's
routes, in a thread of this test process) while the reference deployment serves the load:

    locust -f locustfiles/migration.py --headless --ft-scenario <an XID 79 through the service>

The service must see exactly one inject and one recover for the fault's id, and the summary the
fault injected and recovered; and when the driver is SIGKILLed while the service's fault is
active, the guardian recovers it through the API within 2 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftlocust.guardian import read_lines
from tests.integration.test_guardian_drills import KilledDrill
from tests.support.fault_service import FaultService
from tests.support.procfs import wait as _wait

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

SCENARIO = """
name: fault-service-xid
target: {{kind: reference, workers: 2, options: {{token_delay_s: 0.01}}}}
load: {{endpoint: completion-stream, input_tokens: 20, output_tokens: 40, requests_per_client: 1000}}
faults:
  - name: xid-79
    kind: fault-service
    target: gpu-node-1
    url: "{url}"
    headers: {{Authorization: "Bearer ${{FI_TEST_TOKEN}}"}}
    xid: {{code: 79, node_name: gpu-node-1, gpu_id: 1}}
    {duration}
    trigger: {{after_seconds: 2}}
stop: {{recovery_window_s: {window}}}
checks:
  - {{check: success_ratio, phase: before, min: 0.9}}
"""


@pytest.fixture
def svc():
    with FaultService(require_headers={"Authorization": "Bearer t0ken"}) as server:
        yield server


def _scenario(tmp_path: Path, svc: FaultService, duration: str, window: float) -> Path:
    path = tmp_path / "fault-service.yaml"
    path.write_text(SCENARIO.format(url=svc.url, duration=duration, window=window))
    return path


def test_a_timed_xid_through_the_service_is_injected_once_and_recovered_once(tmp_path, svc, monkeypatch):
    monkeypatch.setenv("FI_TEST_TOKEN", "t0ken")
    scenario = _scenario(tmp_path, svc, "duration_s: 2", 4)
    art = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / "migration.py"),
                           "--headless", "--ft-scenario", str(scenario), "--ft-artifacts", str(art), "-u", "5", "-r", "5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    (fault,) = summary["faults"]
    fault_id = fault["detail"]["fault_id"]
    assert fault["status"] == "injected" and fault["kind"] == "fault-service"
    assert fault["detail"]["fault_type"] == "gpu_xid_79" and fault["detail"]["target"] == "gpu-node-1/gpu1"
    assert 1.9 < fault["recovered_at"] - fault["injected_at"] < 3.5, fault
    (inject,) = svc.injects()
    assert inject.path == "/api/v1/faults/gpu/inject/xid-79"
    assert inject.body == {"node_name": "gpu-node-1", "xid_type": 79, "gpu_id": 1}
    assert len(svc.recovers(fault_id)) == 1 and len(svc.recovers()) == 1
    assert inject.t <= fault["injected_at"] <= svc.recovers(fault_id)[0].t <= fault["recovered_at"]
    assert svc.faults[fault_id]["status"] == "recovered"
    assert all(c.status != 401 for c in svc.calls)  # the header came from the environment
    (rollback,) = summary["rollbacks"]
    assert rollback["reason"] == "scheduled" and rollback["ok"] and rollback["action"].startswith(f"recovered {fault_id}")
    journal = read_lines(str(art / "guardian.jsonl"))
    assert journal[-1]["reason"] == "closed" and not [e for e in journal if e["event"] == "lifted"]
    assert "t0ken" not in (art / "test.log").read_text()


def test_sigkill_of_ftlocust_while_the_services_fault_is_active_the_guardian_recovers_it_within_2_s(
        tmp_path, svc, monkeypatch):
    monkeypatch.setenv("FI_TEST_TOKEN", "t0ken")  # the driver's environment, and so its guardian's
    scenario = _scenario(tmp_path, svc, "", "null")

    def in_effect(art: Path) -> bool:  # logged once the hold names the fault's id
        return (art / "test.log").exists() and "fault xid-79 in effect" in (art / "test.log").read_text()

    drill = KilledDrill(["-f", str(ROOT / "locustfiles" / "migration.py"), "--ft-scenario", str(scenario),
                         "-u", "5", "-r", "5"], tmp_path / "run", in_effect)
    try:
        (inject,) = svc.injects()
        (active,) = svc.active()
        assert svc.recovers() == [] and active["type"] == "gpu_xid_79"
        assert _wait(lambda: svc.recovers(active["id"]), 5, step=0.02), "the guardian never recovered the fault"
        killed_at_wall = time.time() - (time.monotonic() - drill.killed_at)
        took = svc.recovers(active["id"])[0].t - killed_at_wall
        assert took < 2.0, f"recover came {took:.2f} s after ftlocust died"
        assert svc.faults[active["id"]]["status"] == "recovered" and len(svc.recovers()) == 1
        lifted = [e for e in drill.journal() if e["event"] == "lifted" and e["kind"] == "fault-service-recover"]
        assert len(lifted) == 1 and lifted[0]["what"].startswith(f"recovered {active['id']}")
        assert _wait(lambda: not drill.left(), 15), f"left running: {drill.left()}"
        print(f"the guardian recovered {active['id']} {took:.3f} s after ftlocust died")
    finally:
        drill.cleanup()


def test_sigkill_of_ftlocust_during_the_inject_post_the_guardians_sweep_recovers_what_the_service_made(
        tmp_path, svc, monkeypatch):
    monkeypatch.setenv("FI_TEST_TOKEN", "t0ken")
    older = svc.add_fault("gpu_xid_79", "gpu-node-1/gpu1")  # someone else's, on the same GPU: left alone
    svc.plan("POST", r"/xid-79$", delay_s=4)  # the service records the fault, its agent is slow to answer
    scenario = _scenario(tmp_path, svc, "", "null")
    drill = KilledDrill(["-f", str(ROOT / "locustfiles" / "migration.py"), "--ft-scenario", str(scenario),
                         "-u", "5", "-r", "5"], tmp_path / "run", lambda art: bool(svc.injects()))
    try:
        ours = [f["id"] for f in svc.active() if f["id"] != older]
        assert len(ours) == 1 and svc.faults[ours[0]]["status"] == "pending"
        assert _wait(lambda: svc.recovers(ours[0]), 5, step=0.02), "the guardian never recovered the fault"
        killed_at_wall = time.time() - (time.monotonic() - drill.killed_at)
        took = svc.recovers(ours[0])[0].t - killed_at_wall
        assert took < 2.0, f"recover came {took:.2f} s after ftlocust died"
        assert svc.faults[older]["status"] == "injected" and len(svc.recovers()) == 1
        lifted = [e for e in drill.journal() if e["event"] == "lifted" and e["kind"] == "fault-service-recover"]
        assert len(lifted) == 1 and lifted[0]["what"].startswith(f"recovered {ours[0]}")
        assert _wait(lambda: svc.faults[ours[0]]["status"] == "recovered" and not drill.left(), 15)
        print(f"the guardian's sweep recovered {ours[0]} {took:.3f} s after ftlocust died")
    finally:
        drill.cleanup()
