"""Runs of one Drill, without Locust: finishing a run keeps the target up (web UI), the next run
starts afresh in its own folder, a lost load generator fails the run, and the misnamed count
counts only requests a worker named with another phase than the master's."""
import json
import time

import gevent
import pytest

from ftlocust import phases
from ftlocust.drill import Drill, DrillOptions
from ftlocust.records import OK, RequestRecord, read_records
from ftlocust.scenario import FaultSpec, Scenario, TargetSpec, TriggerSpec
from tests.support.fakes import CountingFault, counting_fault  # noqa: F401  (a fixture)




pytestmark = pytest.mark.usefixtures("counting_fault")  # CountingFault registered for every test


def _record(i, start, end, phase=None):
    return RequestRecord(kind="completion", endpoint="/v1/completions", stream=False, client_id="c", seq=i,
                         start_wall=start, end_wall=end, latency_s=end - start, outcome=OK, output_tokens=10,
                         expected_tokens=10, status=200, phase=phase)


def _drill(tmp_path, faults=True, checks=()):
    specs = [FaultSpec(kind=CountingFault.kind, target="x", trigger=TriggerSpec(after_requests=2), name="f")]
    scenario = Scenario(name="t", target=TargetSpec(kind="external"), faults=specs if faults else [],
                        checks=list(checks))
    drill = Drill(scenario, DrillOptions(artifacts_dir=str(tmp_path / "run"), host="http://127.0.0.1:9"))
    drill.setup()
    phases.TIMELINE.expecting_faults = faults  # as hooks does after setup
    stops = []
    drill.deployment.stop = lambda: stops.append(1)
    return drill, stops


def test_finish_run_keeps_the_target_and_next_run_starts_afresh(tmp_path):
    drill, stops = _drill(tmp_path, checks=[{"check": "no_failures", "phase": "all"}])
    drill.load_started()
    t = time.time()
    for i in range(4):
        drill.on_record(_record(i, t + i, t + i + 0.5))
        gevent.sleep(0.01)
    assert drill.in_progress and CountingFault.injected == 1
    assert drill.finish_run() == 0
    assert drill.finished and not drill.in_progress and stops == []  # rolled back, target still up
    assert CountingFault.recovered == 1
    assert (tmp_path / "run" / "summary.json").is_file()

    second = drill.next_run(str(tmp_path / "run" / "run-2"))
    assert second is not drill and second.deployment is drill.deployment
    assert phases.TIMELINE.fault_time is None and not second.finished
    second.load_started()
    t = time.time()
    for i in range(3):
        second.on_record(_record(i, t + i, t + i + 0.5))
        gevent.sleep(0.01)
    assert CountingFault.injected == 2  # the fault fires again: once per run
    assert second.finish() == 0 and CountingFault.recovered == 2 and stops == [1]
    assert len(read_records(str(tmp_path / "run" / "requests.jsonl"))) == 4
    assert len(read_records(str(tmp_path / "run" / "run-2" / "requests.jsonl"))) == 3
    summary = json.loads((tmp_path / "run" / "run-2" / "summary.json").read_text())
    assert summary["extra"]["requests"] == 3


def test_next_run_refuses_an_unfinished_run(tmp_path):
    drill, _ = _drill(tmp_path)
    with pytest.raises(RuntimeError):
        drill.next_run(str(tmp_path / "run-2"))
    drill.finish()


def test_a_lost_load_generator_fails_the_run_with_exit_3(tmp_path):
    drill, _ = _drill(tmp_path, faults=False)
    drill.load_started()
    t = time.time()
    drill.on_record(_record(1, t, t + 0.1))
    drill.worker_lost({"worker": "worker-1", "node_id": "n1", "reason": "missing", "lost_at": t + 5,
                       "last_seen_at": t + 1, "in_flight": 2, "unsent": 40})
    assert drill.finish() == 3
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    (verdict,) = [c for c in summary["checks"] if c["name"] == "no load generator lost"]
    assert not verdict["passed"] and "worker-1" in verdict["detail"] and "40" in verdict["detail"]
    drill.worker_lost({"worker": "worker-0"})  # after the run: not part of it
    assert len(drill.lost_workers) == 1


def test_misnamed_counts_only_two_set_phases_that_differ(tmp_path):
    drill, _ = _drill(tmp_path, faults=False)  # no fault: neither side names a phase
    t = time.time()
    for i in range(5):
        drill.on_record(_record(i, t + i, t + i + 0.5, phase=None))
    assert drill.misnamed == 0
    drill.finish()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["extra"]["misnamed_in_locust"] == 0


def test_misnamed_counts_a_lagging_worker_phase(tmp_path):
    drill, _ = _drill(tmp_path)
    t = time.time() - 100
    drill.on_record(_record(1, t, t + 0.5, phase="before"))  # both "before": not misnamed
    drill.on_record(_record(2, t + 1, t + 1.5, phase="before"))  # the trigger fires here
    gevent.sleep(0.01)
    tf = phases.TIMELINE.fault_time
    assert tf is not None
    drill.on_record(_record(3, tf + 1, tf + 2, phase="before"))  # the broadcast lagged: named before
    drill.on_record(_record(4, tf + 1, tf + 2, phase="after"))
    assert drill.misnamed == 1
    drill.finish()
