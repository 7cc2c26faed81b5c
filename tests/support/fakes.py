"""Test doubles shared by the Drill's unit tests."""

import time

import pytest

from ftlocust import phases
from ftlocust.faults import Fault


class CountingFault(Fault):
    """A fault that only counts its calls (class-wide): inject, and recover once per injection."""

    kind = "test-counting"
    injected = 0
    recovered = 0

    def preflight(self, ctx):
        pass

    def describe(self):
        return "counts calls"

    def inject(self, ctx):
        type(self).injected += 1
        self.event = phases.FaultEvent(name=self.name, kind=self.kind, target=self.spec.target,
                                       injected_at=time.time(), recovered_at=None, detail={})
        return self.event

    def recover(self, ctx):
        if self.event is None or self.event.recovered_at is not None:
            return None
        type(self).recovered += 1
        self.event.recovered_at = time.time()
        return f"lifted {self.name}"


@pytest.fixture
def counting_fault():
    """`CountingFault` registered (and its counters and the phase timeline reset) for one test."""
    from ftlocust.faults import REGISTRY

    REGISTRY[CountingFault.kind] = CountingFault
    CountingFault.injected = CountingFault.recovered = 0
    phases.TIMELINE.reset()
    yield CountingFault
    REGISTRY.pop(CountingFault.kind, None)
    phases.TIMELINE.reset()
