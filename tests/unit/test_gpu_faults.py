"""`gpu-xid`, `gpu-throttle`, `gpu-overheat` through the fake NVML: fields, preflight, what is
written and set, the reset (also by the guardian's action, as the guardian process runs it)."""

import os

import pytest

from ftlocust.errors import ConfigError
from ftlocust.faults import FaultContext, build_fault
from ftlocust.gpu import GpuUnavailable, pci_key, xid_pci
from ftlocust.scenario import fault_from_dict
from tests.support import fake_nvml


def fault(**d):
    spec = {"kind": "gpu-xid", "target": "gpu0", "trigger": {"after_seconds": 1}, **d}
    return build_fault(fault_from_dict(spec, "x.yaml: faults[0]"), "x.yaml: faults[0]")


@pytest.fixture
def gpus(monkeypatch, tmp_path):
    return fake_nvml.install(monkeypatch, tmp_path, gpus=2)


class GpuDeployment:
    """The deployment side of the contract: roles, their GPUs, a stand-in kernel log."""

    def __init__(self, log_path=None):
        self.log_path = log_path

    def roles(self):
        return ["frontend", "worker-1", "worker-2"]

    def gpu_pci(self, role):
        return {"worker-1": "00000000:19:00.0", "worker-2": "00000000:1A:00.0"}.get(role)

    def kernel_log_path(self):
        return self.log_path


# -- gpu-xid ------------------------------------------------------------------------------------

def test_pci_spellings_name_the_same_gpu():
    assert pci_key("00000000:3B:00.0") == pci_key("0000:3b:00") == (0, 0x3B, 0)
    assert xid_pci("00000000:3B:00.0") == "0000:3b:00"
    assert pci_key("3b:00") is None


@pytest.mark.parametrize("fields, message", [
    ({"xid": 0}, "x.yaml: faults[0].xid: expected an integer >= 1"),
    ({"xid": 1001}, "x.yaml: faults[0].xid: expected an integer"),
    ({"pci": "bus 3"}, "x.yaml: faults[0].pci: expected a PCI bus id like 0000:3b:00.0"),
    ({"gpu": 0, "pci": "0000:19:00.0"}, "x.yaml: faults[0].gpu: give gpu (resolved through NVML) or pci, not both"),
    ({"agent": {"namespace": "gpu"}}, "x.yaml: faults[0].agent.selector: missing"),
    ({"colour": "red"}, "x.yaml: faults[0].colour: unknown field"),
])
def test_xid_fields_are_one_line_errors(fields, message):
    with pytest.raises(ConfigError) as e:
        fault(**fields)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_xid_to_a_role_writes_the_drivers_line_for_that_roles_gpu_with_one_write(tmp_path):
    klog = tmp_path / "kernel.log"
    klog.write_text("old line\n")
    f = fault(target="worker-2", xid=79, kernel_log="deployment")
    ctx = FaultContext(deployment=GpuDeployment(str(klog)))
    f.preflight(ctx)
    assert "XID 79 on GPU 0000:1a:00 (worker-2)" in f.describe() and str(klog) in f.describe()
    assert klog.read_text() == "old line\n"  # preflight writes nothing
    event = f.inject(ctx)
    assert klog.read_text() == ("old line\nNVRM: Xid (PCI:0000:1a:00): 79, pid=<unknown>, name=<unknown>, "
                                "GPU has fallen off the bus.\n")
    assert event.target == "worker-2" and event.detail["xid"] == 79 and event.detail["pci"] == "0000:1a:00"
    assert f.affected_role() == "worker-2" and f.recover(ctx) is None  # nothing to undo


def test_xid_to_the_serving_worker_finds_its_gpu_when_it_fires(tmp_path):
    klog = tmp_path / "kernel.log"
    klog.touch()
    f = fault(target="serving-worker", xid=48, kernel_log=str(klog), trigger={"mid_stream_chunks": 5})
    ctx = FaultContext(deployment=GpuDeployment(), resolve_serving=lambda: "worker-1")
    f.preflight(ctx)
    assert "found when the fault fires" in f.describe()
    f.inject(ctx)
    line = klog.read_text()
    assert line.startswith("NVRM: Xid (PCI:0000:19:00): 48, ") and "double bit error" in line
    assert f.affected_role() == "worker-1"


def test_xid_by_gpu_index_goes_through_nvml(gpus, tmp_path):
    klog = tmp_path / "k.log"
    klog.touch()
    f = fault(gpu=1, xid=94, kernel_log=str(klog))
    f.preflight(FaultContext())
    f.inject(FaultContext())
    assert klog.read_text().startswith("NVRM: Xid (PCI:0000:1a:00): 94, ")  # fake GPU 1's bus
    assert f.affected_role() is None


def test_xid_preflight_errors_name_what_is_missing(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match=r"kernel_log: .*nowhere/k.log does not exist"):
        fault(pci="0000:19:00.0", kernel_log=str(tmp_path / "nowhere" / "k.log")).preflight(FaultContext())
    with pytest.raises(ConfigError, match="the deployment has no stand-in kernel log"):
        fault(target="worker-1", kernel_log="deployment").preflight(FaultContext(deployment=GpuDeployment()))
    with pytest.raises(ConfigError, match="expected one of frontend, worker-1, worker-2, serving-worker"):
        fault(target="worker-9").preflight(FaultContext(deployment=GpuDeployment()))
    with pytest.raises(ConfigError, match="does not say which GPU 'frontend' runs on"):
        fault(target="frontend").preflight(FaultContext(deployment=GpuDeployment()))
    monkeypatch.setenv("FTLOCUST_NVML_MODULE", "no_such_nvml_module")
    with pytest.raises(GpuUnavailable, match="FTLOCUST_NVML_MODULE=no_such_nvml_module cannot be imported"):
        fault(gpu=0, kernel_log=str(tmp_path)).preflight(FaultContext())


def test_xid_without_a_driver_is_one_line(monkeypatch, tmp_path):
    fake_nvml.install(monkeypatch, tmp_path, fail={"nvmlInit": 9})
    with pytest.raises(GpuUnavailable) as e:
        fault(gpu=0).preflight(FaultContext())
    assert str(e.value) == "NVML: cannot initialise: the NVIDIA driver is not loaded"


def test_xid_dry_run_opens_nothing(tmp_path):
    f = fault(pci="0000:19:00.0")  # /dev/kmsg by default
    f.preflight(FaultContext(dry_run=True))
    assert f.describe().startswith("XID 79 on GPU 0000:19:00 → /dev/kmsg: '<3>NVRM: NVRM: Xid (PCI:0000:19:00): 79, ")
    assert f._fd is None


# -- gpu-throttle / gpu-overheat ------------------------------------------------------------------

def throttle(**d):
    return fault(kind="gpu-throttle", **d)


def test_throttle_fields():
    with pytest.raises(ConfigError, match="give exactly one of max_clock_mhz or power_limit_w"):
        throttle(gpu=0)
    with pytest.raises(ConfigError, match=r"\(got both\)"):
        throttle(max_clock_mhz=500, power_limit_w=300)
    with pytest.raises(ConfigError, match="gpu-overheat.*severity|severity: expected one of"):
        fault(kind="gpu-overheat", severity="scorching")
    f = fault(kind="gpu-overheat", severity="high")
    assert f.clock_fraction == 0.3 and f.reversible


def test_clock_throttle_locks_and_resets_through_nvml(gpus):
    f = throttle(gpu=1, max_clock_mhz=600, duration_s=5)
    ctx = FaultContext()
    f.preflight(ctx)
    assert f.describe().startswith("SM clock locked at 600 MHz on GPU 1 (GPU-fake-0001) via NVML")
    event = f.inject(ctx)
    assert fake_nvml.state()["gpus"][1]["locked"] == [600, 600]
    assert event.detail["after"]["sm_clock_mhz"] == 600 and "applications_clocks_setting" not in event.detail["before"]["throttle"]
    assert f.recover(ctx) == "GPU 1 (GPU-fake-0001): SM clocks unlocked"
    assert fake_nvml.state()["gpus"][1]["locked"] is None
    assert f.recover(ctx) is None  # idempotent
    calls = [c["fn"] for c in fake_nvml.read_calls(gpus["FAKE_NVML_CALLS"])]
    assert calls.count("nvmlDeviceSetGpuLockedClocks") == 1 and calls.count("nvmlDeviceResetGpuLockedClocks") == 1


def test_power_throttle_restores_the_limit_it_found(gpus):
    s = fake_nvml.state()
    s["gpus"][0]["power_limit_w"] = 650.0
    fake_nvml.write_state(gpus["FAKE_NVML_STATE"], s["gpus"])
    f = throttle(gpu="GPU-fake-0000", power_limit_w=300)
    f.preflight(FaultContext())
    event = f.inject(FaultContext())
    assert event.detail["after"]["power_limit_w"] == 300 and fake_nvml.state()["gpus"][0]["power_limit_w"] == 300
    assert f.recover(FaultContext()) == "GPU 0 (GPU-fake-0000): power limit back to 650 W"
    assert fake_nvml.state()["gpus"][0]["power_limit_w"] == 650


def test_throttle_preflight_errors(gpus):
    with pytest.raises(ConfigError, match=r"power_limit_w: expected a limit within this GPU's 200\.\.700 W, got 900"):
        throttle(power_limit_w=900).preflight(FaultContext())
    with pytest.raises(ConfigError, match="max_clock_mhz: expected at most this GPU's maximum SM clock 1980 MHz"):
        throttle(max_clock_mhz=5000).preflight(FaultContext())
    with pytest.raises(GpuUnavailable, match=r"gpu: expected a GPU index in 0\.\.1, got 7"):
        throttle(gpu=7, max_clock_mhz=500).preflight(FaultContext())


def test_overheat_is_emulated_by_locking_clocks_and_says_so(gpus):
    f = fault(kind="gpu-overheat", gpu=0)
    f.preflight(FaultContext())
    assert "SM clock locked at 990 MHz" in f.describe() and "emulated" in f.describe()
    event = f.inject(FaultContext())
    assert fake_nvml.state()["gpus"][0]["locked"] == [990, 990] and "emulated" in event.detail["note"]
    f.recover(FaultContext())


def test_a_refused_setting_fails_the_injection_and_changes_nothing(monkeypatch, tmp_path):
    fake_nvml.install(monkeypatch, tmp_path, fail={"set": 4})
    f = throttle(max_clock_mhz=500)
    f.preflight(FaultContext())
    with pytest.raises(fake_nvml.NVMLError):
        f.inject(FaultContext())
    assert fake_nvml.state()["gpus"][0]["locked"] is None


def test_the_guardians_reset_action_runs_in_a_fresh_process(gpus, tmp_path):
    """What the guardian runs when the driver died: the action's data alone, its module imported
    by name in another process (NVML found through the inherited environment)."""
    import json
    import subprocess
    import sys

    f = throttle(gpu=0, max_clock_mhz=500)
    held = []
    f.preflight(FaultContext())
    f.inject(FaultContext(guardian=type("G", (), {"hold": lambda self, a: held.append(a) or 1})()))
    assert fake_nvml.state()["gpus"][0]["locked"] == [500, 500]
    (action,) = held
    code = f"import json, sys; from ftlocust.guardian import run_action; print(run_action(json.loads(sys.argv[1])))"
    out = subprocess.run([sys.executable, "-c", code, json.dumps(action)], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    assert "GPU 0 (GPU-fake-0000): SM clocks unlocked" in out.stdout
    assert fake_nvml.state()["gpus"][0]["locked"] is None


def test_a_power_limit_that_does_not_read_back_is_undone_and_fails_the_injection(gpus, monkeypatch):
    from ftlocust.gpu import Nvml

    f = throttle(gpu=0, power_limit_w=300)
    f.preflight(FaultContext())
    real_sample = Nvml.sample

    def stale(self, index):  # the driver accepted the call, the board kept its limit
        s = real_sample(self, index)
        s.power_limit_w = 700.0
        return s

    monkeypatch.setattr(Nvml, "sample", stale)
    with pytest.raises(RuntimeError, match="the power limit reads 700.0 W after setting 300 W"):
        f.inject(FaultContext())
    assert fake_nvml.state()["gpus"][0]["power_limit_w"] == 700  # the partial effect was undone
    calls = [c["fn"] for c in fake_nvml.read_calls(gpus["FAKE_NVML_CALLS"])]
    assert calls.count("nvmlDeviceSetPowerManagementLimit") == 2
