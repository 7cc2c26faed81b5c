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
    REGISTRY.pop("test-lasting", None)  # LastingFault, registered by the tests that use it


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


def test_dry_run_says_where_a_deployment_row_runs_and_whether_its_engine_is_real(tmp_path):
    row = {"name": "vllm-agg-tp-1-dp-2", "backend": "vllm", "mode": "agg", "tp": 1, "dp": 2,
           "target": "reference", "real_engine": False}
    scenario = Scenario(name="t", target=TargetSpec(kind="external"), deployment=row,
                        faults=[FaultSpec(kind=RecordingFault.kind, target="x", trigger=TriggerSpec(after_seconds=3), name="rec")])
    drill = Drill(scenario, DrillOptions(artifacts_dir=str(tmp_path / "a"), host="http://127.0.0.1:9", dry_run=True))
    drill.setup()
    assert ("deployment vllm-agg-tp-1-dp-2 runs on the reference target: an imitation of its engine "
            "(no real-engine evidence)") in drill.describe()


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


class LastingFault(RecordingFault):
    """Reversible: hands a (harmless) rollback to the guardian before its effect."""

    kind = "test-lasting"
    reversible = True

    def inject(self, ctx):
        ctx.guard(self.name, {"kind": "signal", "pid": 1, "start_ticks": "-1", "signal": "SIGCONT", "label": "none"})
        return super().inject(ctx)


def _lasting_drill(tmp_path, duration_s=0.1, repeat=None, **options):
    REGISTRY[LastingFault.kind] = LastingFault
    LastingFault.injected = LastingFault.recovered = 0
    spec = FaultSpec(kind=LastingFault.kind, target="x", trigger=TriggerSpec(after_requests=1), name="flap",
                     duration_s=duration_s, repeat=repeat)
    scenario = Scenario(name="t", target=TargetSpec(kind="external"), faults=[spec])
    drill = Drill(scenario, DrillOptions(artifacts_dir=str(tmp_path), host="http://127.0.0.1:9", **options))
    drill.setup()
    return drill


def test_a_repeated_fault_fires_every_every_s_each_occurrence_lifted_after_duration_s(tmp_path):
    from ftlocust.guardian import read_lines
    from ftlocust.scenario import RepeatSpec

    drill = _lasting_drill(tmp_path, duration_s=0.1, repeat=RepeatSpec(every_s=0.3, count=3))
    assert [f.name for f in drill.faults] == ["flap#1", "flap#2", "flap#3"]
    assert drill.guardian is not None  # a reversible fault: started before load
    t = time.time()
    drill.on_record(_record(1, t, t + 0.1))
    for i in range(2, 12):  # later records never fire the next occurrences: time does
        drill.on_record(_record(i, t, t + 0.1))
    deadline = time.time() + 5
    while LastingFault.recovered < 3 and time.time() < deadline:
        gevent.sleep(0.02)
    assert LastingFault.injected == 3 and LastingFault.recovered == 3
    events = [f.event for f in drill.faults]
    gaps = [b.injected_at - a.injected_at for a, b in zip(events, events[1:])]
    assert all(0.25 < g < 1.0 for g in gaps), gaps
    assert all(0.05 < e.recovered_at - e.injected_at < 0.6 for e in events)
    assert [r["reason"] for r in drill.rollbacks] == ["scheduled"] * 3
    assert len(phases.TIMELINE.faults) == 3
    assert drill.ctx.holds == {}  # every hold released once its rollback ran
    drill.finish()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [e["name"] for e in summary["per_fault"]] == ["flap#1", "flap#2", "flap#3"]
    assert all(e["window"] is not None for e in summary["per_fault"])
    drill.guardian.proc.wait(timeout=10)  # closed with nothing held: it left without acting
    journal = read_lines(str(tmp_path / "guardian.jsonl"))
    assert journal[-1]["event"] == "end" and journal[-1]["reason"] == "closed"


@pytest.mark.parametrize("duration_s, repeat, kind, message", [
    (2.0, None, RecordingFault.kind, "duration_s: only for a fault that lasts until it is lifted"),
    (None, (1.0, 2), "test-lasting", "repeat: needs duration_s"),
])
def test_duration_and_repeat_are_refused_where_they_mean_nothing(tmp_path, duration_s, repeat, kind, message):
    from ftlocust.faults import build_faults
    from ftlocust.scenario import RepeatSpec

    REGISTRY[LastingFault.kind] = LastingFault
    spec = FaultSpec(kind=kind, target="x", trigger=TriggerSpec(after_requests=1), name="f", duration_s=duration_s,
                     repeat=RepeatSpec(*repeat) if repeat else None)
    with pytest.raises(ConfigError, match=message):
        build_faults([spec])


@pytest.mark.parametrize("fault, run_time, message", [
    ("{duration_s: 5, repeat: {every_s: 5, count: 2}}", None,
     r"repeat.every_s: expected more than duration_s 5 \(each occurrence is lifted before the next\), got 5"),
    ("{duration_s: 0}", None, "duration_s: expected a number > 0, got 0"),
    ("{duration_s: 1, repeat: {every_s: 10, count: 0}}", None, "repeat.count: expected an integer >= 1, got 0"),
    ("{duration_s: 1, repeat: {every_s: 10}}", None, "repeat"),
    ("{duration_s: 1, repeat: {every_s: 10, count: 3}}", 20, "repeat.count: expected occurrences that fit the run time"),
])
def test_repeat_and_duration_bad_input_is_one_line(tmp_path, fault, run_time, message):
    import yaml

    from ftlocust.scenario import Scenario as S
    from ftlocust.scenario import scenario_from_dict, validate_triggers

    extra = yaml.safe_load(fault)
    data = {"name": "t", "faults": [{"kind": "process-signal", "target": "worker-1", "signal": "SIGSTOP",
                                     "trigger": {"after_seconds": 1}, **extra}]}
    with pytest.raises(ConfigError, match=message) as e:
        s = scenario_from_dict(data, "x.yaml")
        assert isinstance(s, S)
        validate_triggers(s, total_budget=None, run_time_s=run_time)
    assert "\n" not in str(e.value)
