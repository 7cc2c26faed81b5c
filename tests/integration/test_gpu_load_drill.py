"""The GPU load faults for real, through the fake NVML and the fake CUDA backend (env vars every
process inherits: the driver, the guardian, the helper): the helper started at preflight holds
nothing until the fault fires; NVML, read here (a witness outside the helper), shows the memory
held or the GPU busy, then free again; a driver SIGKILLed while the helper holds memory leaves
nothing held within 2 s; a headless drill injects and lifts it on time. One test uses the real
CUDA backend on a real GPU (marked gpu).

    locust -f locustfiles/migration.py --headless --ft-scenario configs/scenarios/gpu-memory-pressure.yaml
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftlocust.faults import FaultContext, build_fault
from ftlocust.gpu import GpuUnavailable, Nvml
from ftlocust.guardian import read_lines
from ftlocust.scenario import FaultSpec, TriggerSpec
from tests.support import fake_nvml
from tests.support.procfs import gone, state, wait

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
MIB = 2**20
TOTAL_MIB, BASE_MIB = 143771, 512  # the fake H200


def spec(kind="gpu-memory-pressure", **params):
    return FaultSpec(name="pressure", kind=kind, target="gpu1", trigger=TriggerSpec(after_seconds=1), params=params)


def used_mib(index: int) -> float:
    with Nvml() as nvml:
        return nvml.sample(index).mem_used_mib


def util(index: int) -> float:
    with Nvml() as nvml:
        return nvml.sample(index).util_pct


@pytest.fixture
def gpus(monkeypatch, tmp_path):
    env = fake_nvml.install(monkeypatch, tmp_path)
    monkeypatch.setenv("FTLOCUST_GPU_BACKEND", "tests.support.fake_cuda")
    return env


def test_memory_is_held_only_between_inject_and_recover(gpus, tmp_path):
    fault = build_fault(spec(gpu=1, fraction=0.5), "faults[0]")
    ctx = FaultContext(artifacts_dir=str(tmp_path))
    fault.preflight(ctx)
    try:
        assert not gone(fault.helper_pid)
        assert used_mib(1) == BASE_MIB  # started and ready, nothing allocated yet
        event = fault.inject(ctx)
        assert used_mib(1) == BASE_MIB + 71885 and used_mib(0) == BASE_MIB  # half of GPU 1, GPU 0 untouched
        d = event.detail
        assert (d["gpu"], d["uuid"], d["held"], d["helper_pid"]) == (1, "GPU-fake-0001", 71885 * MIB, fault.helper_pid)
        assert d["nvml_before"]["mem_used_mib"] == BASE_MIB and d["nvml_after"]["mem_used_mib"] == BASE_MIB + 71885
        assert d["nvml_before"]["t"] <= event.injected_at <= d["nvml_after"]["t"]
        pid = fault.helper_pid
    finally:
        what = fault.recover(ctx)
    assert gone(pid) and used_mib(1) == BASE_MIB
    assert what == (f"ended the GPU helper of pressure (pid {pid}): 71885 MiB freed on GPU 1 "
                    f"(NVML used {BASE_MIB + 71885} → {BASE_MIB} MiB)")
    assert event.recovered_at is not None and event.detail["nvml_recovered"]["mem_used_mib"] == BASE_MIB
    calls = fake_nvml.read_calls(gpus["FAKE_NVML_CALLS"])  # the driver itself read NVML around the effect
    reads = [c["t"] for c in calls if c["pid"] == os.getpid() and c["fn"] == "nvmlDeviceGetMemoryInfo"
             and c["args"] == [1]]
    assert any(t < event.injected_at for t in reads) and any(t > event.injected_at for t in reads)


def test_compute_overload_shows_as_100_percent_until_recovered(gpus, tmp_path):
    fault = build_fault(spec("gpu-compute-overload", gpu="GPU-fake-0001"), "faults[0]")
    ctx = FaultContext(artifacts_dir=str(tmp_path))
    fault.preflight(ctx)
    try:
        assert util(1) == 0
        event = fault.inject(ctx)
        assert util(1) == 100 and util(0) == 0
        assert event.detail["held"] == "busy"
        assert (event.detail["nvml_before"]["util_pct"], event.detail["nvml_after"]["util_pct"]) == (0, 100)
    finally:
        fault.recover(ctx)
    assert util(1) == 0 and event.recovered_at is not None


def test_a_hold_nvml_does_not_see_is_a_failed_injection(gpus, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_CUDA_HOLD_SCALE", "0")  # the helper says it holds it; the GPU shows nothing
    fault = build_fault(spec(gpu=1, fraction=0.2), "faults[0]")
    ctx = FaultContext(artifacts_dir=str(tmp_path))
    fault.preflight(ctx)
    pid = fault.helper_pid
    try:
        with pytest.raises(RuntimeError, match=r"^GPU 1: the helper says it holds 28754 MiB, but NVML does not show "
                                               r"it: used memory 512.0 → 512.0 MiB after 5 s$"):
            fault.inject(ctx)
        assert fault.event is None
    finally:
        assert fault.recover(ctx) == f"ended the GPU helper of pressure (pid {pid})"
    assert gone(pid)


def test_an_allocation_the_helper_cannot_make_is_a_failed_injection_with_its_error(gpus, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_CUDA_HOLD_ERROR", "CUDA: cuMemAlloc_v2: out of memory after 0 of 71885 MiB")
    fault = build_fault(spec(gpu=1, fraction=0.5), "faults[0]")
    ctx = FaultContext(artifacts_dir=str(tmp_path))
    fault.preflight(ctx)
    pid = fault.helper_pid
    try:
        with pytest.raises(RuntimeError) as e:
            fault.inject(ctx)
        assert str(e.value) == (f"GPU helper (pid {pid}) on GPU 1: CUDA: cuMemAlloc_v2: out of memory after 0 of "
                                f"71885 MiB")
    finally:
        fault.recover(ctx)
    assert gone(pid) and used_mib(1) == BASE_MIB


DRIVER = """
import json, sys, time
from ftlocust.faults import FaultContext, build_fault
from ftlocust.guardian import Guardian
from ftlocust.scenario import FaultSpec, TriggerSpec
art = sys.argv[1]
g = Guardian.start(art)
ctx = FaultContext(artifacts_dir=art, guardian=g)
fault = build_fault(FaultSpec(name="pressure", kind="gpu-memory-pressure", target="gpu1",
                              trigger=TriggerSpec(after_seconds=1), params={"gpu": 1, "fraction": 0.5}), "faults[0]")
fault.preflight(ctx)
fault.inject(ctx)
print(json.dumps({"helper": fault.helper_pid, "guardian": g.proc.pid}), flush=True)
time.sleep(120)
"""


def _read_json_line(proc: subprocess.Popen, timeout_s: float) -> dict:
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, "the driver never got the fault injected"
    return json.loads(proc.stdout.readline())


@pytest.mark.parametrize("helper_stopped", [False, True], ids=["helper-ends-itself", "guardian-ends-it"])
def test_a_sigkilled_driver_leaves_no_gpu_memory_held(gpus, tmp_path, helper_stopped):
    art = tmp_path / "run"
    art.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(art)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        seen = _read_json_line(proc, 60)
        helper = seen["helper"]
        assert used_mib(1) == BASE_MIB + 71885
        if helper_stopped:  # it cannot notice the driver's death itself: only the guardian can end it
            os.kill(helper, signal.SIGSTOP)
            assert wait(lambda: state(helper) == "T", 5)
        killed_at = time.monotonic()
        proc.kill()
        assert wait(lambda: gone(helper), 2.0, step=0.01), f"the GPU helper (pid {helper}) outlived the driver by 2 s"
        assert wait(lambda: used_mib(1) == BASE_MIB, 2.0 - (time.monotonic() - killed_at), step=0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        if "seen" in locals() and not gone(seen["helper"]):  # the guardian failed: end what the driver started
            os.kill(seen["helper"], signal.SIGKILL)
    assert wait(lambda: gone(seen["guardian"]), 10)
    journal = read_lines(str(art / "guardian.jsonl"))
    (lifted,) = [e for e in journal if e["event"] == "lifted"]
    assert lifted["kind"] == "stop-process"
    if helper_stopped:
        assert lifted["what"] == f"stopped GPU helper of pressure (pid {helper}) with SIGKILL"
    assert journal[-1]["event"] == "end" and journal[-1]["failed"] == 0


def test_a_headless_drill_holds_the_memory_for_its_duration(gpus, tmp_path):
    art = tmp_path / "run"
    scenario = ROOT / "configs" / "scenarios" / "gpu-memory-pressure.yaml"
    proc = subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / "migration.py"),
                           "--headless", "--ft-scenario", str(scenario), "--ft-artifacts", str(art),
                           "-u", "4", "-r", "4"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    (f,) = summary["faults"]
    assert f["status"] == "injected" and f["name"] == "hold-gpu-memory"
    assert f["detail"]["held"] == 71885 * MIB and f["detail"]["nvml_after"]["mem_used_mib"] == BASE_MIB + 71885
    assert 4.9 < f["recovered_at"] - f["injected_at"] < 6.5
    assert [r["reason"] for r in summary["rollbacks"]] == ["scheduled"] and summary["rollbacks"][0]["ok"]
    assert used_mib(0) == BASE_MIB and gone(f["detail"]["helper_pid"])
    calls = fake_nvml.read_calls(gpus["FAKE_NVML_CALLS"])
    helper_calls = [c for c in calls if c["pid"] == f["detail"]["helper_pid"]]
    assert helper_calls == []  # the helper allocates through CUDA, it reads no NVML
    journal = read_lines(str(art / "guardian.jsonl"))
    assert journal[-1]["reason"] == "closed"  # the hold was released once the driver lifted it


def test_a_fault_that_never_fired_ends_its_helper_with_the_run(gpus, tmp_path):
    """Its helper was started at preflight and holds a CUDA context: the run's end stops it and
    the guardian lets go of it (the journal ends "closed", nothing left held)."""
    scenario = tmp_path / "never.yaml"
    scenario.write_text(
        "name: never-fires\n"
        "target: {kind: reference, workers: 2, options: {token_delay_s: 0.01}}\n"
        "load: {endpoint: completion-stream, output_tokens: 10, requests_per_client: 3}\n"
        "faults:\n"
        "  - {name: late, kind: gpu-memory-pressure, target: gpu0, gpu: 0, fraction: 0.1, trigger: {after_seconds: 600}}\n")
    art = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / "load.py"), "--headless",
                           "--ft-scenario", str(scenario), "--ft-artifacts", str(art), "-u", "2", "-r", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    summary = json.loads((art / "summary.json").read_text())
    assert summary["faults"][0]["status"] == "not_fired", summary["faults"]
    import re

    helpers = [int(pid) for pid in re.findall(r"GPU helper pid (\d+) ready", (art / "test.log").read_text())]
    assert len(helpers) == 1 and gone(helpers[0])
    journal = read_lines(str(art / "guardian.jsonl"))
    assert journal[-1]["reason"] == "closed" and journal[-1]["held"] == 0, journal
    assert proc.returncode == 3  # a fault that never fired fails the built-in verdict


@pytest.mark.gpu
def test_the_real_cuda_backend_holds_5_percent_of_a_real_gpu(monkeypatch, tmp_path):
    monkeypatch.delenv("FTLOCUST_NVML_MODULE", raising=False)
    monkeypatch.delenv("FTLOCUST_GPU_BACKEND", raising=False)
    try:
        with Nvml() as nvml:
            if nvml.count() == 0:
                pytest.skip("NVML sees no GPU on this machine")
    except GpuUnavailable as e:
        pytest.skip(f"no GPU: {e}")
    fault = build_fault(spec(gpu=0, fraction=0.05), "faults[0]")
    ctx = FaultContext(artifacts_dir=str(tmp_path))
    fault.preflight(ctx)
    try:
        event = fault.inject(ctx)
        held_mib = event.detail["held"] / MIB
        nvml = event.detail
        assert nvml["nvml_after"]["mem_used_mib"] - nvml["nvml_before"]["mem_used_mib"] >= 0.9 * held_mib
        time.sleep(2)
    finally:
        fault.recover(ctx)
    assert event.detail["nvml_after"]["mem_used_mib"] - event.detail["nvml_recovered"]["mem_used_mib"] >= 0.9 * held_mib
    busy = build_fault(spec("gpu-compute-overload", gpu=0), "faults[0]")
    busy.preflight(ctx)
    try:
        event = busy.inject(ctx)
        time.sleep(2)
    finally:
        busy.recover(ctx)
    assert event.detail["nvml_after"]["util_pct"] is None or event.detail["nvml_after"]["util_pct"] >= 90
