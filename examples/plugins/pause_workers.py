"""An ftlocust plugin: fault kind `pause-workers` (SIGSTOP every worker for `seconds`, then
SIGCONT) and check `max_stall` (no stream waited longer than `max_s` between two tokens)."""
import signal
import time

from ftlocust.checks import Field, register_check
from ftlocust.errors import ConfigError
from ftlocust.faults import Fault, register
from ftlocust.phases import FaultEvent
from ftlocust.validation import choice, mapping, seconds


@register
class PauseWorkers(Fault):
    kind = "pause-workers"
    reversible = True  # the effect lasts until recover() lifts it

    def validate(self):  # the kind's own fields: one-line errors naming the field
        params = mapping(self.spec.params, self.where, ["seconds"], required=["seconds"])
        self.seconds = seconds(params["seconds"], self.field("seconds"), optional=False, positive=True)
        choice(self.spec.target, self.field("target"), ["workers"])
        self.roles, self.paused = [], []

    def preflight(self, ctx):  # before any load: resolve what the fault acts on
        self.roles = ctx.deployment.worker_roles() if ctx.deployment else []
        if not self.roles:
            raise ConfigError(f"{self.field('target')}: the deployment names no worker to pause")

    def describe(self):
        roles = ", ".join(self.roles) or "every worker"
        return f"SIGSTOP {roles} for {self.seconds:g} s, {self.spec.trigger.describe()}"

    def inject(self, ctx):
        try:
            for role in self.roles:
                ctx.deployment.signal(role, signal.SIGSTOP)
                self.paused.append(role)
        except Exception:
            self.recover(ctx)  # a failed inject is never recovered by the drill: undo it here
            raise
        self.event = FaultEvent(name=self.name, kind=self.kind, target=",".join(self.roles),
                                injected_at=time.time(), detail={"seconds": self.seconds})
        return self.event

    def affected_role(self):  # the server view waits until this role serves again
        return self.roles[0]

    def scheduled_recovery_s(self):  # the drill calls recover() this long after inject
        return self.seconds

    def recover(self, ctx):  # idempotent: None when nothing is left to undo
        if not self.paused:
            return None
        done = []
        while self.paused:  # a SIGCONT that raises fails the run; the next call retries the rest
            ctx.deployment.signal(self.paused[0], signal.SIGCONT)
            done.append(self.paused.pop(0))
        if self.event is not None:
            self.event.recovered_at = time.time()  # the effect ended now
        return f"SIGCONT to {', '.join(done)}"


@register_check("max_stall", [Field("max_s", "number", required=True, min=0)],
                label=lambda p: f"max_stall <= {p['max_s']}s")
def max_stall(params, result):
    gaps = [(r.itl_max_s, r.request_id) for r in result.records if r.itl_max_s is not None]
    if not gaps:
        return False, "empty: no stream with two tokens or more"
    worst, request_id = max(gaps, key=lambda gap: gap[0])
    detail = f"longest wait between two tokens {worst:.3f} s ({request_id}), max {params['max_s']} s"
    return worst <= params["max_s"], detail
