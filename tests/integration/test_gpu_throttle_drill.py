"""GPU throttle and XID faults in real drills, through the fake NVML (the env var every process
of the run inherits: Locust, the guardian): a throttle lifted after its duration, a throttle
whose driver is SIGKILLed (the guardian unlocks the clocks within 2 s), and an XID written from
a privileged agent pod over the test API server's exec.

    locust -f locustfiles/load.py --headless --ft-scenario throttle.yaml
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftlocust.guardian import read_lines
from tests.integration.test_guardian_drills import KilledDrill, _in_effect
from tests.support import fake_nvml
from tests.support.procfs import wait

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

THROTTLE = """
name: throttle-gpu
target: {kind: reference, workers: 2, options: {token_delay_s: 0.01}}
load: {endpoint: completion-stream, input_tokens: 20, output_tokens: 50, requests_per_client: %(requests)d}
faults:
  - {name: slow-gpu, kind: gpu-throttle, target: gpu1, gpu: 1, max_clock_mhz: 600, %(duration)s trigger: {after_seconds: 1.5}}
stop: {recovery_window_s: 2}
checks:
  - {check: no_failures, phase: all}
"""


def _drill(tmp_path, requests=1000, duration="duration_s: 1.5,"):
    scenario = tmp_path / "throttle.yaml"
    scenario.write_text(THROTTLE % {"requests": requests, "duration": duration})
    return ["-f", str(ROOT / "locustfiles" / "load.py"), "--ft-scenario", str(scenario), "-u", "4", "-r", "4"]


def test_a_clock_throttle_is_set_then_reset_after_its_duration(monkeypatch, tmp_path):
    env = fake_nvml.install(monkeypatch, tmp_path)
    art = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "locust", *_drill(tmp_path), "--headless", "--ft-artifacts", str(art)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (f,) = json.loads((art / "summary.json").read_text())["faults"]
    assert f["status"] == "injected" and f["detail"]["after"]["sm_clock_mhz"] == 600
    assert 1.4 < f["recovered_at"] - f["injected_at"] < 2.5
    calls = fake_nvml.read_calls(env["FAKE_NVML_CALLS"])
    locked = [c for c in calls if c["fn"] == "nvmlDeviceSetGpuLockedClocks"]
    reset = [c for c in calls if c["fn"] == "nvmlDeviceResetGpuLockedClocks"]
    assert [c["args"] for c in locked] == [[1, 600, 600]] and [c["args"] for c in reset] == [[1]]
    assert 1.4 < reset[0]["t"] - locked[0]["t"] < 2.5
    assert fake_nvml.state()["gpus"][1]["locked"] is None
    journal = read_lines(str(art / "guardian.jsonl"))
    assert journal[-1]["reason"] == "closed" and journal[-1]["held"] == 0  # held, then released: nothing left


def test_sigkill_of_ftlocust_during_a_throttle_resets_the_clocks_within_2_s(monkeypatch, tmp_path):
    env = fake_nvml.install(monkeypatch, tmp_path)
    drill = KilledDrill(_drill(tmp_path, duration=""), tmp_path / "run", _in_effect)
    try:
        assert fake_nvml.state()["gpus"][1]["locked"] == [600, 600] or \
            wait(lambda: fake_nvml.state()["gpus"][1]["locked"] is None, 0.1), "the throttle was never set"
        assert wait(lambda: fake_nvml.state()["gpus"][1]["locked"] is None, 5, step=0.02), "the clocks stay locked"
        took = time.monotonic() - drill.killed_at
        assert took < 2.0, f"the reset came {took:.2f} s after ftlocust died"
        (reset,) = [c for c in fake_nvml.read_calls(env["FAKE_NVML_CALLS"]) if c["fn"] == "nvmlDeviceResetGpuLockedClocks"]
        assert reset["pid"] != drill.proc.pid  # the guardian did it, not the dead driver
        lifted = [e for e in drill.journal() if e["event"] == "lifted"]
        assert lifted[0]["what"] == "GPU 1 (GPU-fake-0001): SM clocks unlocked"
    finally:
        drill.cleanup()


def test_an_xid_from_a_privileged_agent_pod_lands_in_that_pods_kernel_log(tmp_path):
    from tests.support.fake_kube import FakeKube

    kmsg = tmp_path / "node-2-kmsg"
    kmsg.touch()
    kube = FakeKube(["fault-injection-system"]).start()
    try:
        for node in ("node-1", "node-2"):
            kube.add_pod("fault-injection-system", f"gpu-fault-injector-kernel-{node}",
                         {"app": "gpu-fault-injector-kernel"}, node=node,
                         files={"/dev/kmsg": kmsg} if node == "node-2" else {})
        kubeconfig = kube.kubeconfig(tmp_path)
        scenario = tmp_path / "xid.yaml"
        scenario.write_text(f"""
name: xid-from-agent
target: {{kind: reference, workers: 2, options: {{token_delay_s: 0.01}}}}
load: {{endpoint: completion-stream, output_tokens: 20, requests_per_client: 6}}
faults:
  - {{name: xid-79, kind: gpu-xid, target: node-2-gpu0, pci: "0000:3b:00.0", xid: 79, trigger: {{after_requests: 4}},
     agent: {{namespace: fault-injection-system, selector: app=gpu-fault-injector-kernel, node: node-2,
              kubeconfig: {kubeconfig}}}}}
checks:
  - {{check: no_failures, phase: all}}
""")
        art = tmp_path / "run"
        proc = subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / "load.py"), "--headless",
                               "--ft-scenario", str(scenario), "--ft-artifacts", str(art), "-u", "2", "-r", "2"],
                              cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert kmsg.read_text() == ("<3>NVRM: NVRM: Xid (PCI:0000:3b:00): 79, pid=<unknown>, name=<unknown>, "
                                    "GPU has fallen off the bus.\n")
        (f,) = json.loads((art / "summary.json").read_text())["faults"]
        assert f["status"] == "injected" and f["detail"]["agent_pod"] == "gpu-fault-injector-kernel-node-2"
        execs = [r for r in kube.requests if r["path"].endswith("/exec")]
        assert [r["path"].split("/")[-2] for r in execs] == ["gpu-fault-injector-kernel-node-2"]
    finally:
        kube.stop()
