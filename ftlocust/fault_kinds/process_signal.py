"""`process-signal`: a signal to one process of the deployment, or one named by identity.

    - {kind: process-signal, target: serving-worker, signal: SIGKILL, trigger: {mid_stream_chunks: 40}}
    - {kind: process-signal, target: worker-1, signal: SIGSTOP, duration_s: 5, trigger: {after_requests: 100}}
    - {kind: process-signal, target: frontend, signal: SIGINT, restart: true, duration_s: 6, ...}
    - {kind: process-signal, target: serving-worker, child: VLLM::EngineCore, trigger: {mid_stream_chunks: 40}}

Fields: `signal` SIGKILL (crash, the default), SIGTERM (graceful shutdown with the target's own
drain), SIGINT, SIGSTOP (a hang, lifted with SIGCONT); `restart` (restart the role at recovery;
deployments ftlocust started only); `duration_s` (a SIGSTOP or a restart only: SIGCONT, or
restart, this long after the fault instead of at the end); `child` (a process name, e.g. `VLLM::EngineCore`: the signal goes to the target's
descendants of that name instead of the target, see `ftlocust.processes.descendants_named`);
`child_count` (how many such descendants there must be, default 1). Target: see
`ftlocust.faults.resolve_target`.

With `child`, the descendants are found by scanning /proc (no process is started) and captured
by identity: at preflight for a role or pid target (in a dry run of an embedded deployment,
which starts nothing, when the deployment starts), when the fault fires for `serving-worker`
(and again then for a role restarted since preflight). Any other number than `child_count`:
a one-line ConfigError naming `<fault>.child` at preflight, a RuntimeError with the same text
when the fault fires. SIGCONT goes to the same descendants; `restart` restarts the role (which
starts fresh children); `affected_role()` stays the role. The event's detail: `signal`, `pid`
(the target's process) and, with `child`, `child` and `child_pids` (the processes signalled).

The fault's effect ends (`recovered_at`) when SIGCONT was sent or the restarted process is ready;
a SIGKILL or SIGTERM that nothing undoes has no `recovered_at`. A SIGSTOP hands its SIGCONT (to
each process it stops, by identity) to the guardian before the signal is sent.
"""

from __future__ import annotations

import logging
import os
import signal as signal_module
import time
from ftlocust.errors import ConfigError
from ftlocust.faults import SERVING_WORKER, Fault, FaultContext, Target, register, resolve_at_fire, resolve_target
from ftlocust.phases import FaultEvent
from ftlocust.processes import ProcessRef, descendants_named
from ftlocust.validation import boolean, choice, error, mapping, number, string

log = logging.getLogger("ftlocust.faults")

SIGNALS = {
    "SIGKILL": signal_module.SIGKILL,
    "SIGTERM": signal_module.SIGTERM,
    "SIGINT": signal_module.SIGINT,
    "SIGSTOP": signal_module.SIGSTOP,
}
FIELDS = ("signal", "restart", "child", "child_count")
RENAMED = {"stop_for_s": "duration_s", "restart_after_s": "duration_s"}


@register
class ProcessSignalFault(Fault):
    kind = "process-signal"

    def validate(self) -> None:
        for old, new in RENAMED.items():
            if old in self.spec.params:
                raise ConfigError(f"{self.field(old)}: now {new} (every fault with an end takes it)")
        params = mapping(self.spec.params, self.where, FIELDS)
        name = str(params.get("signal", "SIGKILL")).upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        self.signal_name = choice(name, self.field("signal"), SIGNALS)
        self.signal = SIGNALS[name]
        self.restart = boolean(params.get("restart", False), self.field("restart"))
        self.child: str | None = None
        if params.get("child") is not None:
            self.child = string(params["child"], self.field("child"))
            if any(c.isspace() for c in self.child):
                raise error(self.field("child"), "a process name without whitespace (e.g. VLLM::EngineCore)",
                            self.child)
        if "child_count" in params and self.child is None:
            raise ConfigError(f"{self.field('child_count')}: needs child")
        self.child_count = int(number(params.get("child_count", 1), self.field("child_count"), integer=True,
                                      minimum=1))
        self.target: Target | None = None
        self.children: list[ProcessRef] | None = None  # with child: the descendants, once found
        self._parent: ProcessRef | None = None  # ... and the process they were found under
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
        if self.child is not None and (self.target.role is not None or self.target.process is not None):
            self._find_children(ctx, ConfigError)

    # -- child: the target's descendants named `child` ---------------------------------------

    def _find_children(self, ctx: FaultContext, raises: type[Exception]) -> None:
        """Find exactly child_count descendants of the target's process (reads /proc only).
        Leaves `children` None when the process is not started yet (a dry run)."""
        label = self.target.role or self.target.spec
        parent = self.target.process
        if parent is None:
            parent = ctx.deployment.process(self.target.role)
            if parent is None:
                if ctx.dry_run and raises is ConfigError:
                    return  # an embedded deployment a dry run does not start
                raise raises(f"{self.field('child')}: {label} is not running (no process to find "
                             f"{self.child!r} under)")
        found = descendants_named(parent.pid, self.child)
        if len(found) != self.child_count:
            n = self.child_count
            listed = f" ({', '.join(f'pid {ref.pid}' for ref in found)})" if found else ""
            raise raises(f"{self.field('child')}: expected {n} process{'es' if n != 1 else ''} named "
                         f"{self.child!r} under {label} (pid {parent.pid}), found {len(found)}{listed}")
        for ref in found:
            try:
                os.kill(ref.pid, 0)
            except PermissionError:
                raise raises(f"{self.field('child')}: no permission to signal pid {ref.pid} "
                             f"({ref.cmdline[:60]})") from None
            except ProcessLookupError:
                raise raises(f"{self.field('child')}: pid {ref.pid} ({self.child!r} under {label}) "
                             f"exited while it was being found") from None
        self.children, self._parent = found, parent

    def _children_at_fire(self, ctx: FaultContext) -> list[ProcessRef]:
        stale = self.children is not None and not all(ref.is_same() for ref in self.children)
        if self.children is None or (stale and self.target.process is None):
            # serving-worker (known only now), or a role restarted since preflight: search again
            self.children = None
            self._find_children(ctx, RuntimeError)
        return self.children

    def _describe_children(self, what: str) -> str:
        n = self.child_count
        named = f"{n if n != 1 else 'the'} process{'es' if n != 1 else ''} named {self.child!r}"
        if self.children is not None:
            found = "; ".join(ref.describe() for ref in self.children)
            return f"{named} under {self._parent_label()} (pid {self._parent.pid}): {found}"
        if self.spec.target == SERVING_WORKER:
            return (f"{named} under the worker serving the probe request (found when the fault fires: "
                    f"the worker in the worker logs, {'they' if n != 1 else 'it'} in /proc)")
        return f"{named} under {what} (found when the deployment starts)"

    def _parent_label(self) -> str:
        return self.target.role or self.target.spec

    # -- the verbs ------------------------------------------------------------------------------

    def describe(self) -> str:
        what = self.target.describe() if self.target is not None else self.spec.target
        if self.child is not None:
            what = self._describe_children(what)
        tail = ""
        after = self.spec.duration_s
        if self.restart:
            tail = f", restart {after:g} s after" if after is not None else ", restart at recovery"
        if self.signal == signal_module.SIGSTOP:
            tail += f", SIGCONT after {after:g} s" if after is not None else ", SIGCONT at recovery"
        return f"{self.signal_name} → {what}, {self.spec.trigger.describe()}{tail}"

    def inject(self, ctx: FaultContext) -> FaultEvent:
        self.target = resolve_at_fire(self.target, ctx)
        if self.child is None:
            self._guard_sigcont(ctx, [self.target.process or ctx.deployment.process(self.target.role)])
            self._pid = self.target.signal(ctx, self.signal)
            injected_at = time.time()
            where = self.target.role or f"pid:{self._pid}"
            log.info("injected %s on %s (pid %s)", self.signal_name, where, self._pid)
            detail = {"signal": self.signal_name, "pid": self._pid}
        else:
            children = self._children_at_fire(ctx)
            for ref in children:  # every identity checked before any is signalled
                if not ref.is_same():
                    raise ProcessLookupError(f"pid {ref.pid} ({self.child}) is no longer the process seen at preflight")
            self._guard_sigcont(ctx, children)
            pids = [ref.signal(self.signal) for ref in children]
            injected_at = time.time()
            self._pid = self._parent.pid
            where = self.target.role or f"pid:{self._pid}"
            log.info("injected %s on %s's %s (pid %s)", self.signal_name, where, self.child,
                     ", ".join(map(str, pids)))
            detail = {"signal": self.signal_name, "pid": self._pid, "child": self.child, "child_pids": pids}
        self.event = FaultEvent(name=self.name, kind=self.kind, target=where, injected_at=injected_at,
                                detail=detail)
        return self.event

    def affected_role(self) -> str | None:
        return self.target.role if self.target is not None else None

    def _guard_sigcont(self, ctx: FaultContext, processes: list) -> None:
        """SIGSTOP: the guardian holds a SIGCONT to each process before any is stopped (a restart
        needs no guard: if ftlocust dies, its deployment goes with it)."""
        if self.signal != signal_module.SIGSTOP:
            return
        for ref in processes:
            if ref is None:
                raise ProcessLookupError(f"{self.target.describe()} is not running")
            ctx.guard(self.name, {"kind": "signal", "pid": ref.pid, "start_ticks": ref.start_ticks,
                                  "signal": "SIGCONT",
                                  "label": (self.target.role or self.target.spec) + (f"'s {self.child}" if self.child else "")})

    def recover(self, ctx: FaultContext) -> str | None:
        if self._lifted or self.event is None:
            return None
        self._lifted = True
        done: list[str] = []
        if self.signal == signal_module.SIGSTOP and self.child is not None:
            for ref in self.children or ():
                try:
                    ref.signal(signal_module.SIGCONT)
                    done.append(f"SIGCONT to {self.event.target}'s {self.child} (pid {ref.pid})")
                except ProcessLookupError:
                    done.append(f"{self.event.target}'s {self.child} (pid {ref.pid}) already gone "
                                f"(no SIGCONT needed)")
        elif self.signal == signal_module.SIGSTOP:
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
