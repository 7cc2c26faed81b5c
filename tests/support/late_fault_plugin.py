"""A test plugin: fault kind `late-noop`, an injector that takes `delay_s` to act (as one that
starts a process on a busy box does) and then does nothing. Aimed mid-stream at a short probe,
it lands after the probe finished: the run must fail "landed too late"."""
import time

import gevent

from ftlocust.faults import Fault, register
from ftlocust.phases import FaultEvent
from ftlocust.validation import mapping, seconds


@register
class LateNoop(Fault):
    kind = "late-noop"

    def validate(self):
        params = mapping(self.spec.params, self.where, ["delay_s"], required=["delay_s"])
        self.delay_s = seconds(params["delay_s"], self.field("delay_s"), optional=False, positive=True)

    def preflight(self, ctx):
        pass

    def describe(self):
        return f"nothing, {self.delay_s:g} s after {self.spec.trigger.describe()}"

    def inject(self, ctx):
        gevent.sleep(self.delay_s)
        self.event = FaultEvent(name=self.name, kind=self.kind, target=self.spec.target, injected_at=time.time())
        return self.event

    def recover(self, ctx):
        return None
