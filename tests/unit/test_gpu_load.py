"""The GPU load kinds' fields and one-line errors, their dry run, the helper's start at preflight
(fake NVML, fake CUDA backend), and what of the real CUDA backend can be checked without a GPU:
the PTX text, the CUresult sentences, a missing libcuda.so.1."""

import os
import re
import signal
import subprocess

import pytest

from ftlocust import cuda_driver
from ftlocust.errors import ConfigError
from ftlocust.faults import FaultContext, build_fault
from ftlocust.gpu import GpuUnavailable
from ftlocust.scenario import FaultSpec, TriggerSpec
from tests.support import fake_nvml
from tests.support.procfs import gone, wait


def spec(kind="gpu-memory-pressure", **params):
    if kind == "gpu-memory-pressure":
        params.setdefault("fraction", 0.5)
    return FaultSpec(name="pressure", kind=kind, target="gpu0", trigger=TriggerSpec(after_seconds=1),
                     params=params, duration_s=params.pop("duration_s", None))


@pytest.fixture
def gpus(monkeypatch, tmp_path):
    env = fake_nvml.install(monkeypatch, tmp_path)
    monkeypatch.setenv("FTLOCUST_GPU_BACKEND", "tests.support.fake_cuda")
    return env


def preflighted(fault, tmp_path, **ctx):
    c = FaultContext(artifacts_dir=str(tmp_path), **ctx)
    fault.preflight(c)
    return c


@pytest.mark.parametrize("fraction, expected", [
    (0, "> 0"), (0.96, "<= 0.95"), (-0.1, "> 0"), ("half", "a number"), (True, "a number")])
def test_a_fraction_outside_0_to_0_95_is_one_line_naming_the_field(fraction, expected):
    with pytest.raises(ConfigError) as e:
        build_fault(spec(fraction=fraction), "faults[0]")
    text = str(e.value)
    assert text.startswith("faults[0].fraction: expected") and expected in text and "\n" not in text


def test_memory_pressure_needs_a_fraction_and_compute_takes_none():
    with pytest.raises(ConfigError, match=r"^faults\[0\]\.fraction: missing \(required"):
        build_fault(FaultSpec(name="p", kind="gpu-memory-pressure", target="gpu0", trigger=TriggerSpec(after_seconds=1),
                              params={}), "faults[0]")
    with pytest.raises(ConfigError, match=r"^faults\[0\]\.fraction: unknown field"):
        build_fault(spec("gpu-compute-overload", fraction=0.5), "faults[0]")
    with pytest.raises(ConfigError, match=r"^faults\[0\]\.gpu: expected a GPU index"):
        build_fault(spec(gpu=-1), "faults[0]")


def test_an_unknown_gpu_is_one_line_at_preflight(gpus, tmp_path):
    for gpu, expected in ((7, "expected a GPU index in 0..1, got 7"), ("GPU-nope", "no GPU with UUID or PCI bus id")):
        fault = build_fault(spec(gpu=gpu), "faults[0]")
        with pytest.raises(GpuUnavailable) as e:
            preflighted(fault, tmp_path)
        assert str(e.value).startswith("faults[0].gpu: ") and expected in str(e.value) and "\n" not in str(e.value)
        assert fault.helper_pid is None


def test_without_nvml_preflight_names_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("FTLOCUST_NVML_MODULE", "no_such_nvml_module")
    with pytest.raises(GpuUnavailable, match=r"^NVML: FTLOCUST_NVML_MODULE=no_such_nvml_module cannot be imported"):
        preflighted(build_fault(spec(), "faults[0]"), tmp_path)
    fake_nvml.install(monkeypatch, tmp_path, fail={"nvmlInit": 9})
    with pytest.raises(GpuUnavailable, match=r"^NVML: cannot initialise: the NVIDIA driver is not loaded$"):
        preflighted(build_fault(spec("gpu-compute-overload"), "faults[0]"), tmp_path)


def test_more_than_is_free_is_one_line_before_any_helper_starts(gpus, tmp_path):
    fake_nvml.allocate(0, 100_000 * fake_nvml.MIB, pid=1)  # pid 1 lives: 100 GB of GPU 0 in use
    fault = build_fault(spec(fraction=0.5), "faults[0]")
    with pytest.raises(ConfigError) as e:
        preflighted(fault, tmp_path)
    assert str(e.value) == ("faults[0].fraction: expected at most what GPU 0 has free: 0.5 of 143771 MiB is "
                            "71885 MiB, but 43259 MiB are free (1024 MiB kept for the helper's CUDA context)")
    assert fault.helper_pid is None


def test_a_dry_run_starts_nothing_and_says_exactly_what_it_would_hold(gpus, tmp_path):
    fault = build_fault(spec(fraction=0.5, duration_s=20), "faults[0]")
    preflighted(fault, tmp_path, dry_run=True)
    assert fault.helper_pid is None and not list(tmp_path.glob("gpu-helper-*"))
    assert fault.describe() == ("hold 50 % of GPU 0 (GPU-fake-0000, 143771 MiB): 71885 MiB, from a helper process "
                                f"started at preflight, {fault.spec.trigger.describe()}, released after 20 s")
    compute = build_fault(spec("gpu-compute-overload", gpu="GPU-fake-0001"), "faults[0]")
    preflighted(compute, tmp_path, dry_run=True)
    assert compute.describe().startswith("keep the SMs of GPU 1 (GPU-fake-0001, 143771 MiB) busy, from a helper "
                                         "process started at preflight")
    assert compute.describe().endswith(", until recovery")
    calls = fake_nvml.read_calls(gpus["FAKE_NVML_CALLS"])
    assert calls and not [c for c in calls if c["fn"].startswith(("nvmlDeviceSet", "nvmlDeviceReset"))]


def test_a_dry_run_without_nvml_still_describes_the_plan(monkeypatch, tmp_path):
    monkeypatch.setenv("FTLOCUST_NVML_MODULE", "no_such_nvml_module")
    fault = build_fault(spec(fraction=0.25), "faults[0]")
    preflighted(fault, tmp_path, dry_run=True)
    assert fault.describe().startswith("hold 25 % of GPU 0 (resolved through NVML at preflight), from a helper")


def test_a_helper_that_cannot_open_cuda_fails_preflight_with_its_error(gpus, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_CUDA_OPEN_ERROR", "CUDA: libcuda.so.1 not found (no NVIDIA driver on this machine)")
    fault = build_fault(spec(), "faults[0]")
    with pytest.raises(ConfigError) as e:
        preflighted(fault, tmp_path)
    assert str(e.value) == ("faults[0]: the GPU helper could not use GPU 0: CUDA: libcuda.so.1 not found "
                            "(no NVIDIA driver on this machine)")
    assert fault.helper_pid is not None and wait(lambda: gone(fault.helper_pid), 5)


def test_a_backend_that_cannot_be_imported_is_the_helpers_one_line(gpus, monkeypatch, tmp_path):
    monkeypatch.setenv("FTLOCUST_GPU_BACKEND", "no_such_backend")
    with pytest.raises(ConfigError, match=r"could not use GPU 0: FTLOCUST_GPU_BACKEND=no_such_backend cannot be "
                                          r"imported \(No module named 'no_such_backend'\)$"):
        preflighted(build_fault(spec(), "faults[0]"), tmp_path)


def test_preflight_starts_the_helper_in_its_own_group_and_allocates_nothing(gpus, tmp_path):
    fault = build_fault(spec(), "faults[0]")
    preflighted(fault, tmp_path)
    try:
        pid = fault.helper_pid
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        assert int(fields[2]) == pid  # its own process group: stop-process ends all of it
        assert fake_nvml.state()["allocations"] == {}
    finally:
        assert fault.recover(FaultContext()) == f"ended the GPU helper of pressure (pid {pid})"
    assert gone(pid) and fault.recover(FaultContext()) is None


def test_the_helper_ends_itself_when_its_stdin_closes(gpus, tmp_path):
    fault = build_fault(spec("gpu-compute-overload"), "faults[0]")
    preflighted(fault, tmp_path)
    pid = fault.helper_pid
    proc = fault._proc
    os.close(fault._go_fd)  # what the driver's death does to the pipe
    fault._go_fd = None
    assert proc.wait(timeout=5) == 0 and gone(pid)
    fault._proc = None
    fault.recover(FaultContext())


# -- the real backend, as far as it goes without a GPU --------------------------------------------

def test_the_ptx_is_one_entry_spinning_on_the_sm_clock_for_sm_52():
    text = cuda_driver.ptx()
    lines = [line.strip() for line in text.splitlines()]
    assert lines[:3] == [".version 6.0", ".target sm_52", ".address_size 64"]
    assert re.findall(r"\.visible \.entry (\w+)\(", text) == [cuda_driver.KERNEL_NAME]
    assert "%clock64" in text and "fma.rn.f32" in text and "@%p bra SPIN;" in text and "st.global.f32" in text
    assert text.count("{") == text.count("}") == 1
    declared = set(re.findall(r"%\w+", " ".join(line for line in lines if line.startswith(".reg"))))
    used = set(re.findall(r"%\w+", text)) - {"%clock64"}
    assert used == declared  # every register the body uses is declared
    assert cuda_driver.ptx_candidates(9, 0)[1].splitlines()[:2] == [".version 7.8", ".target sm_90"]
    assert cuda_driver.ptx_candidates(12, 0)[1].splitlines()[:2] == [".version 8.6", ".target sm_120"]


def test_cuda_results_are_short_sentences():
    assert cuda_driver.error_text(2) == "out of memory"
    assert cuda_driver.error_text(100).startswith("no CUDA-capable GPU is visible")
    assert cuda_driver.error_text(12345) == "error 12345"

    class Lib:
        def cuInit(self, flags):
            return 2

        def cuGetErrorString(self, code, out):
            return 1  # not known to this driver either

    with pytest.raises(cuda_driver.CudaError, match=r"^CUDA: cuInit: out of memory$"):
        cuda_driver.Driver(Lib()).call("cuInit", 0)
    with pytest.raises(cuda_driver.CudaError, match=r"^CUDA: cuNothing is missing from libcuda.so.1"):
        cuda_driver.Driver(Lib()).call("cuNothing")


def test_a_missing_libcuda_is_one_line():
    with pytest.raises(cuda_driver.CudaError) as e:
        cuda_driver.load_library("libcuda-not-here.so.1")
    assert str(e.value) == "CUDA: libcuda-not-here.so.1 not found (no NVIDIA driver on this machine)"


def test_nvml_bus_ids_become_the_spelling_cuda_documents():
    assert cuda_driver.cuda_pci_bus_id("00000000:3B:00.0") == "0000:3b:00.0"
    with pytest.raises(cuda_driver.CudaError, match="not a PCI bus id"):
        cuda_driver.cuda_pci_bus_id("3B")


def test_a_rollback_that_cannot_end_the_helper_says_so(gpus, tmp_path):
    fault = build_fault(spec(), "faults[0]")
    preflighted(fault, tmp_path)
    real = fault._proc

    class Undying:  # a helper that outlives SIGTERM and SIGKILL (a process stuck in the kernel)
        pid = real.pid
        signals = []

        def poll(self):
            return None

        def send_signal(self, sig):
            self.signals.append(sig)

        def wait(self, timeout):
            raise subprocess.TimeoutExpired("helper", timeout)

    fault._proc = Undying()
    with pytest.raises(RuntimeError, match=rf"the GPU helper of pressure \(pid {real.pid}\) is still running"):
        fault.recover(FaultContext())
    assert Undying.signals == [signal.SIGTERM, signal.SIGKILL]
    fault._proc = real  # the real one ends as usual, and only then is the rollback done
    assert fault.recover(FaultContext()) == f"ended the GPU helper of pressure (pid {real.pid})" and gone(real.pid)
