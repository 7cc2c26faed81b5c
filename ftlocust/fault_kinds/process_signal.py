"""`process-signal`: a signal to one process of the deployment, or one named by identity.

    - {kind: process-signal, target: serving-worker, signal: SIGKILL, trigger: {mid_stream_chunks: 40}}
    - {kind: process-signal, target: worker-1, signal: SIGSTOP, stop_for_s: 5, trigger: {after_requests: 100}}
    - {kind: process-signal, target: frontend, signal: SIGINT, restart: true, restart_after_s: 6, ...}

Fields: `signal` SIGKILL (crash, the default), SIGTERM (graceful shutdown with the target's own
drain), SIGINT, SIGSTOP (a hang, lifted with SIGCONT); `restart` (restart the role at recovery;
deployments ftlocust started only); `restart_after_s` (restart this long after the fault instead
of at the end); `stop_for_s` (SIGSTOP only: SIGCONT this long after the fault instead of at the
end). Target: see `ftlocust.faults.resolve_target`.

The fault's effect ends (`recovered_at`) when SIGCONT was sent or the restarted process is ready;
a SIGKILL or SIGTERM that nothing undoes has no `recovered_at`.
"""

from __future__ import annotations

import logging
import signal as signal_module
import time
from ftlocust.errors import ConfigError
from ftlocust.faults import Fault, FaultContext, Target, register, resolve_at_fire, resolve_target
from ftlocust.phases import FaultEvent
from ftlocust.validation import boolean, choice, mapping, seconds

log = logging.getLogger("ftlocust.faults")

SIGNALS = {
    "SIGKILL": signal_module.SIGKILL,
    "SIGTERM": signal_module.SIGTERM,
    "SIGINT": signal_module.SIGINT,
    "SIGSTOP": signal_module.SIGSTOP,
}
FIELDS = ("signal", "restart", "restart_after_s", "stop_for_s")


@register
class ProcessSignalFault(Fault):
    kind = "process-signal"

    def validate(self) -> None:
        params = mapping(self.spec.params, self.where, FIELDS)
        name = str(params.get("signal", "SIGKILL")).upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        self.signal_name = choice(name, self.field("signal"), SIGNALS)
        self.signal = SIGNALS[name]
        self.restart = boolean(params.get("restart", False), self.field("restart"))
        self.restart_after_s = seconds(params.get("restart_after_s"), self.field("restart_after_s"))
        self.stop_for_s = seconds(params.get("stop_for_s"), self.field("stop_for_s"))
        if self.stop_for_s is not None and self.signal != signal_module.SIGSTOP:
            raise ConfigError(f"{self.field('stop_for_s')}: only for signal SIGSTOP (got {self.signal_name})")
        if self.restart_after_s is not None and not self.restart:
            raise ConfigError(f"{self.field('restart_after_s')}: needs restart: true")
        self.target: Target | None = None
        self._pid: int | None = None
        self._lifted = False

    @property
    def reversible(self) -> bool:  # type: ignore[override]
        return self.signal == signal_module.SIGSTOP or self.restart

    def preflight(self, ctx: FaultContext) -> None:
        self.target = resolve_target(self.spec, ctx, self.where)
        if self.restart and (self.target.process is not None or not ctx.deployment.started_here):
            raise ConfigError(f"{self.field('restart')}: only for a deployment ftlocust started "
                              f"(an external process is restarted by its own supervisor)")

    def describe(self) -> str:
        what = self.target.describe() if self.target is not None else self.spec.target
        tail = ""
        if self.restart:
            tail = f", restart {self.restart_after_s:g} s after" if self.restart_after_s is not None else ", restart at recovery"
        if self.signal == signal_module.SIGSTOP:
            tail += f", SIGCONT after {self.stop_for_s:g} s" if self.stop_for_s else ", SIGCONT at recovery"
        return f"{self.signal_name} → {what}, {self.spec.trigger.describe()}{tail}"

    def inject(self, ctx: FaultContext) -> FaultEvent:
        self.target = resolve_at_fire(self.target, ctx)
        self._pid = self.target.signal(ctx, self.signal)
        injected_at = time.time()
        where = self.target.role or f"pid:{self._pid}"
        log.info("injected %s on %s (pid %s)", self.signal_name, where, self._pid)
        self.event = FaultEvent(name=self.name, kind=self.kind, target=where, injected_at=injected_at,
                                detail={"signal": self.signal_name, "pid": self._pid})
        return self.event

    def affected_role(self) -> str | None:
        return self.target.role if self.target is not None else None

    def scheduled_recovery_s(self) -> float | None:
        if self.signal == signal_module.SIGSTOP and self.stop_for_s:
            return self.stop_for_s
        if self.restart and self.restart_after_s is not None:
            return self.restart_after_s
        return None

    def recover(self, ctx: FaultContext) -> str | None:
        if self._lifted or self.event is None:
            return None
        self._lifted = True
        done: list[str] = []
        if self.signal == signal_module.SIGSTOP:
            try:
                self.target.signal(ctx, signal_module.SIGCONT)
                done.append(f"SIGCONT to {self.event.target}")
            except ProcessLookupError:
                done.append(f"{self.event.target} already gone (no SIGCONT needed)")
        if self.restart and self.target.role is not None:
            role = self.target.role
            ctx.deployment.restart(role)
            done.append(f"restarted {role} (pid {ctx.deployment.pid(role)})")
        if not done:
            return None
        self.event.recovered_at = time.time()
        log.info("recovered %s: %s", self.name, "; ".join(done))
        return "; ".join(done)
