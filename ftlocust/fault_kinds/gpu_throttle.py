"""`gpu-throttle` and `gpu-overheat`: a slower GPU, by NVML locked clocks or a power limit.

    - {kind: gpu-throttle, target: gpu0, gpu: 0, max_clock_mhz: 600, duration_s: 30, trigger: {after_seconds: 20}}
    - {kind: gpu-throttle, target: gpu0, gpu: 0, power_limit_w: 300, trigger: {after_requests: 200}}
    - {kind: gpu-overheat, target: gpu0, gpu: 0, severity: high, duration_s: 30, trigger: {after_seconds: 20}}

THROTTLE, fields (one of the first two):
- `max_clock_mhz`: lock the SM clock at N MHz (nvmlDeviceSetGpuLockedClocks(N, N): the GPU
  runs at N whatever its load); the reset is nvmlDeviceResetGpuLockedClocks.
- `power_limit_w`: set the board's power limit (nvmlDeviceSetPowerManagementLimit, within the
  GPU's constraints, checked at preflight); the reset restores the limit read at preflight.
- `gpu`: index, UUID or PCI bus id (default 0); `target` is the name on the timeline.

OVERHEAT is not physically injectable — nothing makes a GPU hotter on purpose — so it is
emulated by what a thermal slowdown does to the clocks: the SM clock locked to a fraction of
its maximum, `severity` low 0.75, medium 0.5 (the default), high 0.3, or `clock_fraction`.
Its description and event say so.

Both are reversible (`duration_s`, or lifted at the end of the run) and hand the reset to the
guardian (`gpu-reset`, run in the guardian process through NVML, by the GPU's UUID) before the
setting is changed, so a SIGKILLed driver leaves no throttled GPU behind. Setting clocks or
power limits needs root and a GPU that supports it: preflight says so in one line. The event's
detail has what was set and the NVML read-back (the power limit must read back as set, or the
fault fails). NEVER on a shared machine: these change the GPU for everyone on it.
"""

from __future__ import annotations

import logging
import os
import time

from ftlocust import guardian
from ftlocust.errors import ConfigError
from ftlocust.faults import Fault, FaultContext, register
from ftlocust.gpu import GpuUnavailable, Nvml, describe_error
from ftlocust.phases import FaultEvent
from ftlocust.validation import choice, mapping, number

log = logging.getLogger("ftlocust.faults")

SEVERITY_FRACTION = {"low": 0.75, "medium": 0.5, "high": 0.3}
RESET_ACTION = "gpu-reset"


def _index_of(nvml: Nvml, uuid: str) -> int:
    for index in range(nvml.count()):
        if nvml.uuid(index) == uuid:
            return index
    raise GpuUnavailable(f"no GPU with UUID {uuid} any more")


def reset(uuid: str, clocks: bool, power_limit_w: float | None) -> str:
    """Undo a throttle on the GPU with this UUID; what was done, as a sentence."""
    done = []
    with Nvml() as nvml:
        index = _index_of(nvml, uuid)
        if clocks:
            nvml.reset_sm_clocks(index)
            done.append("SM clocks unlocked")
        if power_limit_w is not None:
            nvml.set_power_limit_w(index, power_limit_w)
            done.append(f"power limit back to {power_limit_w:g} W")
    return f"GPU {index} ({uuid}): " + ", ".join(done)


@guardian.action(RESET_ACTION)
def _guardian_reset(a: dict) -> str | None:
    return reset(a["uuid"], bool(a.get("clocks")), a.get("power_limit_w"))


class _Throttle(Fault):
    """Locked SM clocks (`self.max_mhz`) or a power limit (`self.limit_w`) on one GPU."""

    reversible = True
    FIELDS: tuple[str, ...] = ()

    def validate(self) -> None:
        self.params = mapping(self.spec.params, self.where, self.FIELDS)
        self.gpu = self.params.get("gpu", 0)
        self.max_mhz: int | None = None
        self.limit_w: float | None = None
        self.clock_fraction: float | None = None
        self.index: int | None = None
        self.uuid: str | None = None
        self._previous_limit_w: float | None = None
        self._lifted = False
        self._validate_setting()

    def _validate_setting(self) -> None:
        raise NotImplementedError

    def preflight(self, ctx: FaultContext) -> None:
        if ctx.dry_run:
            try:
                self._resolve()
            except GpuUnavailable:
                pass  # a dry run shows the plan; the real run says what is missing
            return
        if os.geteuid() != 0:
            raise ConfigError(f"{self.field('gpu')}: setting GPU clocks or power limits needs root")
        self._resolve()

    def _resolve(self) -> None:
        with Nvml() as nvml:
            self.index = nvml.resolve(self.gpu, self.field("gpu"))
            self.uuid = nvml.uuid(self.index)
            try:
                if self.clock_fraction is not None:
                    self.max_mhz = max(1, int(nvml.max_sm_clock_mhz(self.index) * self.clock_fraction))
                elif self.max_mhz is not None and self.max_mhz > (top := nvml.max_sm_clock_mhz(self.index)):
                    raise ConfigError(f"{self.field('max_clock_mhz')}: expected at most this GPU's maximum SM "
                                      f"clock {top} MHz, got {self.max_mhz}")
                if self.limit_w is not None:
                    lo, hi = nvml.power_limit_constraints_w(self.index)
                    if not lo <= self.limit_w <= hi:
                        raise ConfigError(f"{self.field('power_limit_w')}: expected a limit within this GPU's "
                                          f"{lo:g}..{hi:g} W, got {self.limit_w:g}")
                    self._previous_limit_w = nvml.power_limit_w(self.index)
            except ConfigError:
                raise
            except Exception as e:
                raise GpuUnavailable(f"{self.where}: GPU {self.index}: {describe_error(e)}") from None

    def _setting(self) -> str:
        if self.limit_w is not None:
            return f"power limit {self.limit_w:g} W"
        return f"SM clock locked at {self.max_mhz} MHz" if self.max_mhz is not None else \
            f"SM clock locked at {self.clock_fraction:g} of its maximum"

    def describe(self) -> str:
        gpu = f"GPU {self.index} ({self.uuid})" if self.uuid else f"GPU {self.gpu}"
        end = f", lifted after {self.spec.duration_s:g} s" if self.spec.duration_s is not None else ", lifted at recovery"
        return f"{self._setting()} on {gpu} via NVML{self._note()}, {self.spec.trigger.describe()}{end}"

    def _note(self) -> str:
        return ""

    def inject(self, ctx: FaultContext) -> FaultEvent:
        ctx.guard(self.name, {"kind": RESET_ACTION, "module": __name__, "uuid": self.uuid,
                              "clocks": self.limit_w is None, "power_limit_w": self._previous_limit_w,
                              "label": f"{self.name} on GPU {self.index}"})
        with Nvml() as nvml:
            index = _index_of(nvml, self.uuid)
            before = nvml.sample(index)
            try:
                if self.limit_w is not None:
                    nvml.set_power_limit_w(index, self.limit_w)
                else:
                    nvml.lock_sm_clocks(index, self.max_mhz, self.max_mhz)
                injected_at = time.time()
                after = nvml.sample(index)
                if self.limit_w is not None and (after.power_limit_w is None
                                                 or abs(after.power_limit_w - self.limit_w) > 1):
                    raise RuntimeError(f"GPU {index}: the power limit reads {after.power_limit_w} W after setting "
                                       f"{self.limit_w:g} W")
            except Exception:
                # a failed injection is never recovered by the drill (no event): undo it here
                reset(self.uuid, clocks=self.limit_w is None,
                      power_limit_w=self._previous_limit_w if self.limit_w is not None else None)
                raise
        log.info("injected %s on GPU %d (%s)", self._setting(), index, self.uuid)
        detail = {"gpu": index, "uuid": self.uuid, "setting": self._setting(), "max_clock_mhz": self.max_mhz,
                  "power_limit_w": self.limit_w, "before": before.to_dict(), "after": after.to_dict()}
        if self._note():
            detail["note"] = self._note().lstrip(", ")
        self.event = FaultEvent(name=self.name, kind=self.kind, target=self.spec.target, injected_at=injected_at,
                                detail=detail)
        return self.event

    def recover(self, ctx: FaultContext) -> str | None:
        if self._lifted or self.event is None:
            return None
        done = reset(self.uuid, clocks=self.limit_w is None,
                     power_limit_w=self._previous_limit_w if self.limit_w is not None else None)
        self._lifted = True
        self.event.recovered_at = time.time()
        log.info("recovered %s: %s", self.name, done)
        return done


@register
class GpuThrottleFault(_Throttle):
    kind = "gpu-throttle"
    FIELDS = ("gpu", "max_clock_mhz", "power_limit_w")

    def _validate_setting(self) -> None:
        given = [k for k in ("max_clock_mhz", "power_limit_w") if self.params.get(k) is not None]
        if len(given) != 1:
            raise ConfigError(f"{self.field('max_clock_mhz')}: give exactly one of max_clock_mhz or power_limit_w"
                              f"{' (got both)' if len(given) == 2 else ''}")
        if given[0] == "max_clock_mhz":
            self.max_mhz = int(number(self.params["max_clock_mhz"], self.field("max_clock_mhz"), integer=True,
                                      minimum=1))
        else:
            self.limit_w = float(number(self.params["power_limit_w"], self.field("power_limit_w"), above=0))


@register
class GpuOverheatFault(_Throttle):
    kind = "gpu-overheat"
    FIELDS = ("gpu", "severity", "clock_fraction")

    def _validate_setting(self) -> None:
        if self.params.get("clock_fraction") is not None:
            if self.params.get("severity") is not None:
                raise ConfigError(f"{self.field('severity')}: give severity or clock_fraction, not both")
            self.clock_fraction = float(number(self.params["clock_fraction"], self.field("clock_fraction"),
                                               above=0, maximum=1))
        else:
            severity = choice(self.params.get("severity", "medium"), self.field("severity"), SEVERITY_FRACTION)
            self.clock_fraction = SEVERITY_FRACTION[severity]

    def _note(self) -> str:
        return (", emulated: overheating cannot be injected, so the clocks are locked down as a thermal "
                "slowdown would bring them")
