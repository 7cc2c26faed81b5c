"""`gpu-memory-pressure` and `gpu-compute-overload`: load a GPU from a helper process.

    - {kind: gpu-memory-pressure, target: gpu0, gpu: 0, fraction: 0.5, duration_s: 20, trigger: {after_seconds: 10}}
    - {kind: gpu-compute-overload, target: gpu0, gpu: GPU-5d1c…, trigger: {mid_stream_chunks: 40}}

MEMORY_PRESSURE holds `fraction` of the GPU's memory until recovery; COMPUTE_OVERLOAD keeps its
SMs busy with a spinning kernel. Both are reversible (`duration_s`: lift after).

Fields: `gpu` an index, UUID or PCI bus id (default 0), resolved through NVML
(`ftlocust.gpu.Nvml.resolve`) at preflight; `target` is the fault's name on the timeline.
Memory: `fraction` (required), 0 < f <= 0.95 of the GPU's total memory; it must fit in what is
free at preflight, with CONTEXT_RESERVE_MIB left for the helper's own CUDA context.

The work is done by `python -m ftlocust.gpu_helper`, started at preflight in its own process
group and handed to the guardian at once (`stop-process`: the guardian ends it if ftlocust
dies; it also ends itself when its stdin reaches EOF). It opens the GPU with the CUDA driver
(`ftlocust.cuda_driver`) and says `ready`, or fails preflight in one line with its error
("CUDA: libcuda.so.1 not found …"). Injection is one write ("go") on its stdin and a bounded
wait for its `holding` line; then the driver's own NVML reading must show the effect (used
memory up by at least WITNESS_SHARE of what is held; utilisation >= BUSY_UTIL_PCT when NVML
reports it) within WITNESS_TIMEOUT_S, or inject raises: the fault did not happen. Recovery is
SIGTERM to the helper through its Popen, SIGKILL after a bounded wait (it raises if the helper
still runs after both); for memory, NVML must show the memory free again. A dry run starts
nothing and prints what would be done.

The event's detail: `gpu`, `uuid`, `pci_bus_id`, `helper_pid`, `held` (bytes, or "busy"), and
the NVML witness read by the driver: `nvml_before` and `nvml_after` ({mem_used_mib, util_pct})
around the injection, `nvml_recovered` once lifted.
"""

from __future__ import annotations

import logging
import os
import re
import select
import signal
import subprocess
import sys
import time
from typing import Any, ClassVar

from ftlocust.errors import ConfigError
from ftlocust.faults import Fault, FaultContext, register
from ftlocust.gpu import GpuSample, GpuUnavailable, Nvml, describe_error
from ftlocust.guardian import process_action
from ftlocust.phases import FaultEvent
from ftlocust.validation import error, mapping, missing, number

log = logging.getLogger("ftlocust.faults")

MIB = 2**20
MAX_FRACTION = 0.95
CONTEXT_RESERVE_MIB = 1024  # what the helper's CUDA context takes before it allocates anything
HELPER_READY_TIMEOUT_S = 60.0  # start + CUDA init on a busy machine
HOLDING_TIMEOUT_S = 10.0  # "go" to "holding": allocation (1 GiB chunks) or the first kernel
WITNESS_TIMEOUT_S = 5.0  # NVML's reading catches up (utilisation is averaged over up to 1 s)
WITNESS_SHARE = 0.9  # of the held bytes, in NVML used memory: other processes move it too
BUSY_UTIL_PCT = 90.0
EXIT_TIMEOUT_S = 10.0


class GpuLoadFault(Fault):
    """What both kinds share: the GPU, the helper's life, the NVML witness."""

    reversible = True
    fields: ClassVar[tuple[str, ...]] = ("gpu",)

    def validate(self) -> None:
        params = mapping(self.spec.params, self.where, self.fields)
        gpu = params.get("gpu", 0)
        if isinstance(gpu, bool) or not (isinstance(gpu, int) and gpu >= 0 or isinstance(gpu, str) and gpu.strip()):
            raise error(self.field("gpu"), "a GPU index (0, 1, …), UUID or PCI bus id", gpu)
        self.gpu: Any = gpu
        self._validate_load(params)
        self.index: int | None = None
        self.uuid: str | None = None
        self.pci_bus_id: str | None = None
        self.total_mib: float | None = None
        self._nvml: Nvml | None = None
        self._proc: subprocess.Popen | None = None
        # Set once the guardian holds the helper's process group (then it must be released).
        self.helper_pid: int | None = None
        self._go_fd: int | None = None
        self._out_fd: int | None = None
        self._buf = b""
        self._lifted = False

    def _validate_load(self, params: dict) -> None:
        pass

    # -- what each kind adds --------------------------------------------------------------------

    def _helper_args(self) -> list[str]:
        raise NotImplementedError

    def _check_fits(self, sample: GpuSample) -> None:
        pass

    def _what(self) -> str:
        raise NotImplementedError

    def _effect_shows(self, before: GpuSample, now: GpuSample) -> bool:
        raise NotImplementedError

    def _not_shown(self, before: GpuSample, now: GpuSample) -> str:
        raise NotImplementedError

    # -- preflight: resolve the GPU, start the helper -------------------------------------------

    def preflight(self, ctx: FaultContext) -> None:
        if ctx.dry_run:
            try:
                self._resolve()
            except GpuUnavailable:
                pass  # a dry run shows the plan; the real run says what is missing
            finally:
                self._close_nvml()
            return
        try:
            sample = self._resolve()
            self._check_fits(sample)
            self._start_helper(ctx)
        except BaseException:
            self._stop_helper()
            if self.helper_pid is not None:
                ctx.release(self.name)
            self._close_nvml()
            raise

    def _resolve(self) -> GpuSample:
        self._nvml = nvml = Nvml()
        self.index = nvml.resolve(self.gpu, self.field("gpu"))
        try:
            self.uuid = nvml.uuid(self.index)
            self.pci_bus_id = nvml.pci_bus_id(self.index)
        except Exception as e:
            raise GpuUnavailable(f"{self.field('gpu')}: GPU {self.index}: {describe_error(e)}") from None
        sample = nvml.sample(self.index)
        self.total_mib = sample.mem_total_mib
        return sample

    def _start_helper(self, ctx: FaultContext) -> None:
        stdin_r, self._go_fd = os.pipe()  # close-on-exec: only the helper gets these ends
        self._out_fd, stdout_w = os.pipe()
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        log_path = os.path.join(ctx.artifacts_dir, f"gpu-helper-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.name)}.log")
        try:
            with open(log_path, "ab") as err:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "ftlocust.gpu_helper", "--gpu", str(self.index),
                     "--pci-bus-id", self.pci_bus_id, *self._helper_args()],
                    stdin=stdin_r, stdout=stdout_w, stderr=err, start_new_session=True, env=env, close_fds=True)
        finally:
            os.close(stdin_r)
            os.close(stdout_w)
        try:
            # By pid and start time, not command line: until the kernel has finished the exec,
            # /proc/<pid>/cmdline reads empty (measured: most spawns under load).
            action = process_action("stop-process", self._proc.pid, label=f"GPU helper of {self.name}", grace_s=1.0)
        except ProcessLookupError:  # it failed before it could be captured
            self._proc.wait(timeout=EXIT_TIMEOUT_S)
            raise ConfigError(f"{self.where}: the GPU helper could not use GPU {self.index}: "
                              f"{self._helper_said(self._read_line(0), log_path)}") from None
        # Its process group is ended by the guardian if ftlocust dies from here on.
        ctx.guard(self.name, action)
        self.helper_pid = self._proc.pid
        line = self._read_line(HELPER_READY_TIMEOUT_S)
        if not line.startswith("ready"):
            raise ConfigError(f"{self.where}: the GPU helper could not use GPU {self.index}: "
                              f"{self._helper_said(line, log_path)}")
        log.info("%s: GPU helper pid %d ready on GPU %d (%s): %s", self.name, self._proc.pid, self.index,
                 self.uuid, line[len("ready"):].strip())

    def _helper_said(self, line: str, log_path: str | None = None) -> str:
        if line.startswith("error "):
            return line[len("error "):]
        code = self._proc.poll() if self._proc is not None else None
        if code is not None:
            return f"it exited with code {code}" + (f" (see {log_path})" if log_path else "")
        return f"no answer ({line!r})" if line else "no answer"

    def _read_line(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = max(0.0, deadline - time.monotonic())  # 0: what it already wrote, no wait
            if not select.select([self._out_fd], [], [], left)[0]:
                break
            chunk = os.read(self._out_fd, 4096)
            if not chunk:
                break
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode(errors="replace").strip()

    # -- the verbs --------------------------------------------------------------------------------

    def _gpu_text(self) -> str:
        if self.index is None:
            return f"GPU {self.gpu} (resolved through NVML at preflight)"
        return f"GPU {self.index} ({self.uuid}, {self.total_mib:.0f} MiB)"

    def _end_text(self) -> str:
        after = self.spec.duration_s
        return f"released after {after:g} s" if after is not None else "until recovery"

    def inject(self, ctx: FaultContext) -> FaultEvent:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError(f"the GPU helper{f' (pid {self.helper_pid})' if self.helper_pid else ''} is not "
                               f"running: {self._helper_said(self._read_line(0))}")
        before = self._nvml.sample(self.index)
        os.write(self._go_fd, b"go\n")
        line = self._read_line(HOLDING_TIMEOUT_S)
        if not line.startswith("holding "):
            raise RuntimeError(f"GPU helper (pid {self.helper_pid}) on GPU {self.index}: {self._helper_said(line)}")
        held_at = time.time()
        held = line[len("holding "):]
        self._held = int(held) if held.isdigit() else held
        deadline = time.monotonic() + WITNESS_TIMEOUT_S
        while not self._effect_shows(before, now := self._nvml.sample(self.index)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"GPU {self.index}: the helper says it holds {self._what()}, but NVML does "
                                   f"not show it: {self._not_shown(before, now)}")
            time.sleep(0.05)
        self.event = FaultEvent(
            name=self.name, kind=self.kind, target=self.spec.target, injected_at=held_at,
            detail={"gpu": self.index, "uuid": self.uuid, "pci_bus_id": self.pci_bus_id,
                    "helper_pid": self.helper_pid, "held": self._held,
                    "nvml_before": _witness(before), "nvml_after": _witness(now)})
        log.info("injected %s on GPU %d: %s (NVML used %.0f → %.0f MiB, util %s → %s %%)", self.kind, self.index,
                 self._what(), before.mem_used_mib or 0, now.mem_used_mib or 0, before.util_pct, now.util_pct)
        return self.event

    def recover(self, ctx: FaultContext) -> str | None:
        if self._lifted or self.helper_pid is None:
            return None
        pid = self.helper_pid
        if not self._stop_helper():
            raise RuntimeError(f"the GPU helper of {self.name} (pid {pid}) is still running after SIGTERM and SIGKILL")
        what = f"ended the GPU helper of {self.name} (pid {pid})"
        if self.event is not None:
            lifted, now = self._wait_lifted()
            self.event.detail["nvml_recovered"] = _witness(now)
            if not lifted:
                raise RuntimeError(f"{what}, but GPU {self.index} still shows the load: {self._not_lifted(now)}")
            self.event.recovered_at = time.time()
            what += f": {self._lifted_text(now)}"
        self._lifted = True
        self._close_nvml()
        log.info("recovered %s: %s", self.name, what)
        return what

    def close(self, ctx: FaultContext) -> None:
        """A fault that never fired (or whose rollback already ran): its helper goes, and so
        does the guardian's hold on it. One that fired and failed to lift keeps both."""
        if self.event is None or self._lifted:
            self._stop_helper()
            self._close_nvml()
            ctx.release(self.name)

    def _wait_lifted(self) -> tuple[bool, GpuSample]:
        deadline = time.monotonic() + WITNESS_TIMEOUT_S
        while not self._is_lifted(now := self._nvml.sample(self.index)):
            if time.monotonic() > deadline:
                return False, now
            time.sleep(0.05)
        return True, now

    def _is_lifted(self, now: GpuSample) -> bool:
        return True

    def _not_lifted(self, now: GpuSample) -> str:
        return ""

    def _lifted_text(self, now: GpuSample) -> str:
        return f"GPU {self.index} no longer loaded"

    def _stop_helper(self) -> bool:
        """SIGTERM, bounded wait, SIGKILL if it did not go; the pipes closed. False when the
        helper is still running after both (the rollback must say so, not claim it ended).

        Signalled through its Popen, not by identity: a child we have not reaped keeps its pid,
        so nothing else can be behind it."""
        proc = self._proc
        stopped = True
        if proc is not None and proc.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, EXIT_TIMEOUT_S), (signal.SIGKILL, 5.0)):
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    log.warning("GPU helper pid %d did not exit %.0f s after %s", proc.pid, wait_s, sig.name)
            stopped = proc.poll() is not None
        for fd in (self._go_fd, self._out_fd):
            if fd is not None:
                os.close(fd)
        self._go_fd = self._out_fd = None
        if stopped:
            self._proc = None
        return stopped

    def _close_nvml(self) -> None:
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None


def _witness(s: GpuSample) -> dict:
    return {"t": s.t, "mem_used_mib": s.mem_used_mib, "util_pct": s.util_pct}


@register
class GpuMemoryPressureFault(GpuLoadFault):
    kind = "gpu-memory-pressure"
    fields = ("gpu", "fraction")

    def _validate_load(self, params: dict) -> None:
        if "fraction" not in params:
            raise missing(self.field("fraction"), f"a share of the GPU's memory, 0 < fraction <= {MAX_FRACTION}")
        self.fraction = float(number(params["fraction"], self.field("fraction"), above=0, maximum=MAX_FRACTION))
        self._held: int | str | None = None

    @property
    def hold_mib(self) -> int | None:
        return None if self.total_mib is None else int(self.fraction * self.total_mib)

    def _helper_args(self) -> list[str]:
        return ["--hold-bytes", str(self.hold_mib * MIB)]

    def _check_fits(self, sample: GpuSample) -> None:
        if sample.mem_used_mib is None or sample.mem_total_mib is None:
            raise GpuUnavailable(f"{self.field('gpu')}: GPU {self.index} reports no memory use through NVML")
        free = sample.mem_total_mib - sample.mem_used_mib
        if self.hold_mib + CONTEXT_RESERVE_MIB > free:
            raise ConfigError(f"{self.field('fraction')}: expected at most what GPU {self.index} has free: "
                              f"{self.fraction:g} of {sample.mem_total_mib:.0f} MiB is {self.hold_mib} MiB, "
                              f"but {free:.0f} MiB are free ({CONTEXT_RESERVE_MIB} MiB kept for the helper's "
                              f"CUDA context)")

    def describe(self) -> str:
        amount = f": {self.hold_mib} MiB" if self.hold_mib is not None else ""
        return (f"hold {self.fraction * 100:g} % of {self._gpu_text()}{amount}, from a helper process started "
                f"at preflight, {self.spec.trigger.describe()}, {self._end_text()}")

    def _what(self) -> str:
        return f"{int(self._held) // MIB} MiB" if isinstance(self._held, int) else str(self._held)

    def _effect_shows(self, before: GpuSample, now: GpuSample) -> bool:
        return isinstance(self._held, int) and now.mem_used_mib is not None and before.mem_used_mib is not None \
            and now.mem_used_mib - before.mem_used_mib >= WITNESS_SHARE * self._held / MIB

    def _not_shown(self, before: GpuSample, now: GpuSample) -> str:
        return f"used memory {before.mem_used_mib} → {now.mem_used_mib} MiB after {WITNESS_TIMEOUT_S:g} s"

    def _is_lifted(self, now: GpuSample) -> bool:
        held_during = self.event.detail["nvml_after"]["mem_used_mib"]
        return now.mem_used_mib is not None and held_during - now.mem_used_mib >= WITNESS_SHARE * self._held / MIB

    def _not_lifted(self, now: GpuSample) -> str:
        return (f"used memory {self.event.detail['nvml_after']['mem_used_mib']:.0f} → {now.mem_used_mib} MiB "
                f"{WITNESS_TIMEOUT_S:g} s after the helper exited")

    def _lifted_text(self, now: GpuSample) -> str:
        return (f"{self._what()} freed on GPU {self.index} (NVML used "
                f"{self.event.detail['nvml_after']['mem_used_mib']:.0f} → {now.mem_used_mib:.0f} MiB)")


@register
class GpuComputeOverloadFault(GpuLoadFault):
    kind = "gpu-compute-overload"

    def _helper_args(self) -> list[str]:
        return ["--busy"]

    def describe(self) -> str:
        return (f"keep the SMs of {self._gpu_text()} busy, from a helper process started at preflight, "
                f"{self.spec.trigger.describe()}, {self._end_text()}")

    def _what(self) -> str:
        return "the SMs busy"

    def _effect_shows(self, before: GpuSample, now: GpuSample) -> bool:
        # A GPU that reports no utilisation (a MIG slice) has only the helper's word: its first
        # kernel was queued without error.
        return now.util_pct is None or now.util_pct >= BUSY_UTIL_PCT

    def _not_shown(self, before: GpuSample, now: GpuSample) -> str:
        return f"utilisation {before.util_pct} → {now.util_pct} % after {WITNESS_TIMEOUT_S:g} s"

    def _lifted_text(self, now: GpuSample) -> str:
        return f"GPU {self.index} utilisation {now.util_pct} %"
