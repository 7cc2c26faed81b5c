"""The Drill's order of a run, without Locust or processes: triggers fire exactly once, every
fault is rolled back at finish (also when verdicts fail), the request log holds every record."""
import json
import time

import gevent
import pytest

from ftlocust import phases
from ftlocust.drill import Drill, DrillOptions
from ftlocust.errors import ConfigError
from ftlocust.faults import REGISTRY
from ftlocust.records import CONNECTION_ERROR, OK, RequestRecord, read_records
from ftlocust.scenario import FaultSpec, Scenario, TargetSpec, TriggerSpec
from tests.support.fakes import CountingFault as RecordingFault




@pytest.fixture(autouse=True)
def registered():
    REGISTRY[RecordingFault.kind] = RecordingFault
    RecordingFault.injected = RecordingFault.recovered = 0
    phases.TIMELINE.reset()
    yield
    REGISTRY.pop(RecordingFault.kind, None)


def _record(i, start, end, outcome=OK):
    return RequestRecord(kind="completion", endpoint="/v1/completions", stream=False, client_id="c", seq=i,
                         start_wall=start, end_wall=end, latency_s=end - start, outcome=outcome, output_tokens=10,
                         expected_tokens=10, status=200 if outcome == OK else None)


def _drill(tmp_path, trigger, checks=(), **options):
    scenario = Scenario(name="t", target=TargetSpec(kind="external"),
                        faults=[FaultSpec(kind=RecordingFault.kind, target="x", trigger=trigger, name="rec")],
                        checks=list(checks))
    broadcasts = []
    drill = Drill(scenario, DrillOptions(artifacts_dir=str(tmp_path), host="http://127.0.0.1:9", **options),
                  broadcast=broadcasts.append)
    drill.setup()
    return drill, broadcasts


def test_count_trigger_fires_exactly_once_and_rolls_back(tmp_path):
    drill, broadcasts = _drill(tmp_path, TriggerSpec(after_requests=3))
    t = time.time()
    for i in range(10):
        drill.on_record(_record(i, t + i, t + i + 0.5))
        gevent.sleep(0)
    gevent.sleep(0.05)
    assert RecordingFault.injected == 1
    assert len(broadcasts) == 1 and broadcasts[0]["name"] == "rec"
    assert phases.TIMELINE.fault_time is not None
    code = drill.finish()
    assert RecordingFault.recovered == 1
    assert code is None  # no checks, nothing built-in failed: Locust's own exit code stands
    assert len(read_records(str(tmp_path / "requests.jsonl"))) == 10
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["passed"] is True and summary["faults"][0]["kind"] == RecordingFault.kind
    assert (tmp_path / "results.txt").read_text().count("Failure") == 1
    assert drill.finish() == code  # idempotent, no second rollback
    assert RecordingFault.recovered == 1


def test_a_passing_check_gives_exit_0(tmp_path):
    drill, _ = _drill(tmp_path, TriggerSpec(after_requests=1), checks=[{"check": "no_failures", "phase": "all"}])
    t = time.time()
    drill.on_record(_record(1, t, t + 0.1))
    gevent.sleep(0.05)
    drill.on_record(_record(2, t + 1, t + 1.1))
    assert drill.finish() == 0
    assert drill.rollbacks[0]["ok"] and drill.rollbacks[0]["action"] == "lifted rec"


def test_failed_check_gives_nonzero_exit_and_still_rolls_back(tmp_path):
    drill, _ = _drill(tmp_path, TriggerSpec(after_requests=1), checks=[{"check": "no_failures", "phase": "all"}])
    t = time.time()
    drill.on_record(_record(1, t, t + 0.1))
    gevent.sleep(0.05)
    drill.on_record(_record(2, t + 1, t + 1.1, outcome=CONNECTION_ERROR))
    assert drill.finish() != 0
    assert RecordingFault.recovered == 1


def test_time_trigger(tmp_path):
    drill, _ = _drill(tmp_path, TriggerSpec(after_seconds=0.05))
    drill.load_started()
    gevent.sleep(0.3)
    assert RecordingFault.injected == 1
    drill.finish()


def test_trigger_beyond_budget_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="expected at most the total request budget 20"):
        _drill(tmp_path, TriggerSpec(after_requests=50), total_budget=20)


def test_dry_run_describes_without_side_effects(tmp_path):
    scenario = Scenario(name="t", target=TargetSpec(kind="external"),
                        faults=[FaultSpec(kind=RecordingFault.kind, target="x", trigger=TriggerSpec(after_seconds=3), name="rec")])
    drill = Drill(scenario, DrillOptions(artifacts_dir=str(tmp_path / "a"), host="http://127.0.0.1:9", dry_run=True))
    drill.setup()
    text = drill.describe()
    assert "fault 1: counts calls" in text and "http://127.0.0.1:9" in text
    assert not (tmp_path / "a" / "requests.jsonl").exists()


class BrokenFault(RecordingFault):
    kind = "test-broken"
    fail_inject = False
    fail_recover = False
    order: list = []

    def inject(self, ctx):
        if type(self).fail_inject:
            raise PermissionError("no permission to signal pid 1")
        event = super().inject(ctx)
        return event

    def recover(self, ctx):
        type(self).order.append(self.name)
        if type(self).fail_recover:
            raise OSError("SIGCONT refused")
        return super().recover(ctx)


@pytest.fixture
def broken():
    REGISTRY[BrokenFault.kind] = BrokenFault
    BrokenFault.fail_inject = BrokenFault.fail_recover = False
    BrokenFault.order = []
    yield BrokenFault
    REGISTRY.pop(BrokenFault.kind, None)


def _two_fault_drill(tmp_path, checks=()):
    scenario = Scenario(name="t", target=TargetSpec(kind="external"), checks=list(checks), faults=[
        FaultSpec(kind=BrokenFault.kind, target="x", trigger=TriggerSpec(after_requests=1), name="first"),
        FaultSpec(kind=BrokenFault.kind, target="x", trigger=TriggerSpec(after_requests=3), name="second"),
    ])
    drill = Drill(scenario, DrillOptions(artifacts_dir=str(tmp_path), host="http://127.0.0.1:9"))
    drill.setup()
    return drill


def _feed(drill, n):
    t = time.time()
    for i in range(n):
        drill.on_record(_record(i, t + i * 0.01, t + i * 0.01 + 0.005))
        gevent.sleep(0.01)


def test_a_fault_that_failed_to_inject_fails_the_run(tmp_path, broken):
    broken.fail_inject = True
    drill = _two_fault_drill(tmp_path)
    _feed(drill, 5)
    assert drill.finish() == 3  # even without checks: the built-in verdict failed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["passed"] is False and summary["fault_time"] is None
    failed = [c for c in summary["checks"] if c["name"] == "every fault injected"]
    assert failed and not failed[0]["passed"] and "no permission to signal pid 1" in failed[0]["detail"]
    assert "not injected" in (tmp_path / "results.txt").read_text()


def test_a_trigger_never_reached_fails_the_run(tmp_path, broken):
    drill = _two_fault_drill(tmp_path, checks=[{"check": "no_failures", "phase": "all"}])
    _feed(drill, 2)  # the second fault's trigger (3 requests) never comes
    assert drill.finish() == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    verdict = next(c for c in summary["checks"] if c["name"] == "every fault injected")
    assert not verdict["passed"] and "second" in verdict["detail"]


def test_rollback_runs_newest_first_and_a_failed_rollback_fails_the_run(tmp_path, broken):
    drill = _two_fault_drill(tmp_path, checks=[{"check": "no_failures", "phase": "all"}])
    _feed(drill, 5)
    broken.fail_recover = True
    assert drill.finish() == 3
    assert broken.order == ["second", "first"]
    assert [r["ok"] for r in drill.rollbacks] == [False, False]
    summary = json.loads((tmp_path / "summary.json").read_text())
    verdict = next(c for c in summary["checks"] if c["name"] == "every rollback succeeded")
    assert not verdict["passed"] and "SIGCONT refused" in verdict["detail"]
