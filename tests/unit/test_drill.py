"""The Drill's order of a run, without Locust or processes: triggers fire exactly once, every
fault is rolled back at finish (also when verdicts fail), the request log holds every record."""
import json
import time

import gevent
import pytest

from ftlocust import phases
from ftlocust.drill import Drill, DrillOptions
from ftlocust.errors import ConfigError
from ftlocust.faults import REGISTRY, Fault
from ftlocust.records import CONNECTION_ERROR, OK, RequestRecord, read_records
from ftlocust.scenario import FaultSpec, Scenario, TargetSpec, TriggerSpec


class RecordingFault(Fault):
    kind = "test-recording"
    injected = 0
    recovered = 0

    def preflight(self, ctx):
        pass

    def describe(self):
        return "records calls"

    def inject(self, ctx):
        type(self).injected += 1
        self.event = phases.FaultEvent(name=self.name, kind=self.kind, target=self.spec.target,
                                       injected_at=time.time(), recovered_at=None, detail={})
        return self.event

    def recover(self, ctx):
        type(self).recovered += 1
        self.event.recovered_at = time.time()


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
    assert code == 0
    assert len(read_records(str(tmp_path / "requests.jsonl"))) == 10
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["passed"] is True and summary["faults"][0]["kind"] == RecordingFault.kind
    assert (tmp_path / "results.txt").read_text().count("Failure") == 1
    assert drill.finish() == code  # idempotent, no second rollback
    assert RecordingFault.recovered == 1


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
    with pytest.raises(ConfigError, match="larger than the total request budget 20"):
        _drill(tmp_path, TriggerSpec(after_requests=50), total_budget=20)


def test_dry_run_describes_without_side_effects(tmp_path):
    scenario = Scenario(name="t", target=TargetSpec(kind="external"),
                        faults=[FaultSpec(kind=RecordingFault.kind, target="x", trigger=TriggerSpec(after_seconds=3), name="rec")])
    drill = Drill(scenario, DrillOptions(artifacts_dir=str(tmp_path / "a"), host="http://127.0.0.1:9", dry_run=True))
    drill.setup()
    text = drill.describe()
    assert "fault 1: records calls" in text and "http://127.0.0.1:9" in text
    assert not (tmp_path / "a" / "requests.jsonl").exists()
