"""The engine-core drill as a user runs it:

    locust -f locustfiles/migration.py --headless --ft-scenario configs/scenarios/engine_core.yaml

The reference workers run a `VLLM::EngineCore` child; the fault SIGKILLs the one under the worker
serving the probe stream. That worker must log EngineDeadError, deregister and exit 1, and its
streams must migrate (exit 0); with migration off the drill must fail (exit 3).
"""
import json
import os
import re
import time

import pytest

from ftlocust.errors import ConfigError
from ftlocust.faults import FaultContext, build_fault
from ftlocust.processes import descendants_named
from ftlocust.records import read_records
from ftlocust.scenario import FaultSpec, TriggerSpec
from ftlocust.targets.reference import ReferenceDeployment
from ftlocust.targets.reference.events import read_events
from tests.integration.test_migration_drill import ROOT, SMALL, _alive, _assert_torn_down
from tests.integration.test_migration_drill import _run as _run_locust

pytestmark = pytest.mark.integration

SCENARIO = ["--ft-scenario", os.path.join(ROOT, "configs", "scenarios", "engine_core.yaml")]


def _run(args, artifacts, timeout=240):
    return _run_locust(SCENARIO + args, artifacts, timeout=timeout)


def _events(artifacts):
    with open(os.path.join(artifacts, "deployment", "events.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _engine_cores(artifacts):
    """role -> pid of its engine core, from each worker's log."""
    found = {}
    for role in ("worker-1", "worker-2"):
        with open(os.path.join(artifacts, "deployment", "logs", f"{role}.log")) as f:
            m = re.search(r"Engine core started name=VLLM::EngineCore pid=(\d+)", f.read())
        assert m, f"{role} logged no engine core"
        found[role] = int(m.group(1))
    return found


def _check_the_kill(art, summary):
    """The fault hit the serving worker's engine core; that worker logged it and exited 1."""
    (fault,) = summary["faults"]
    role, detail = fault["target"], fault["detail"]
    assert fault["kind"] == "process-signal" and role in ("worker-1", "worker-2")
    cores = _engine_cores(art)
    assert detail["child"] == "VLLM::EngineCore" and detail["child_pids"] == [cores[role]]
    exited = [e for e in _events(art) if e["event"] == "process_exited" and e["role"] == role]
    assert [(e["pid"], e["returncode"]) for e in exited] == [(detail["pid"], 1)]
    log = (art / "services" / role / f"{role}.log").read_text()
    assert f"EngineDeadError: EngineCore encountered an issue; engine core VLLM::EngineCore pid={cores[role]} " \
           f"killed by SIGKILL" in log
    assert "Initiating Dynamo Runtime shutdown" in log and "Worker stopped exit_code=1" in log
    other = "worker-2" if role == "worker-1" else "worker-1"
    other_log = (art / "deployment" / "logs" / f"{other}.log").read_text()  # the whole log, teardown included
    assert "EngineDeadError" not in other_log
    assert f"Engine core stopped pid={cores[other]}" in other_log  # ended by its worker at teardown
    assert not any(_alive(pid) for pid in cores.values())
    return fault


def test_engine_core_drill_passes_with_migration(tmp_path):
    art = tmp_path / "run"
    proc = _run(SMALL, art)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    assert summary["passed"] is True
    assert all(c["passed"] for c in summary["checks"]), summary["checks"]
    fault = _check_the_kill(art, summary)
    assert fault["recovered_at"] is None  # nothing restarts the worker
    assert summary["phases"]["all"]["failed"] == 0 and summary["phases"]["after"]["success"] > 0
    records = read_records(str(art / "requests.jsonl"))
    probe = [r for r in records if r.client_id.endswith("/probe")]
    assert len(probe) == 1 and probe[0].outcome == "ok" and probe[0].output_tokens == probe[0].expected_tokens
    assert probe[0].token_check == "ok"  # migrated: one unbroken stream, continuity checked
    migrated = [e for e in _events(art) if e["event"] == "migration_done" and e["from_role"] == fault["target"]]
    assert migrated and {e["request_id"] for e in migrated} >= {probe[0].request_id}
    _assert_torn_down(art)


def test_engine_core_drill_fails_without_migration(tmp_path):
    art = tmp_path / "run"
    proc = _run(SMALL + ["--ft-target-migration-limit", "0"], art)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    assert summary["passed"] is False
    _check_the_kill(art, summary)
    failed = {c["name"] for c in summary["checks"] if not c["passed"]}
    assert {"no_failures[all]", "migrations that succeeded (outcome=success) >= 1"} <= failed
    assert not any("EngineDeadError" in name for name in failed)  # the worker did its part
    records = read_records(str(art / "requests.jsonl"))
    assert any(r.outcome == "stream_error_event" for r in records)
    _assert_torn_down(art)


def test_dry_run_names_the_child_and_starts_nothing(tmp_path):
    art = tmp_path / "run"
    proc = _run(["--ft-dry-run"], art, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SIGKILL → the process named 'VLLM::EngineCore' under the worker serving the probe request" in proc.stdout
    assert not (art / "requests.jsonl").exists() and not (art / "deployment" / "events.jsonl").exists()


def test_a_wrong_child_name_on_a_fixed_worker_is_one_line_before_any_load(tmp_path):
    scenario = tmp_path / "wrong.yaml"
    scenario.write_text(
        "name: wrong-child\n"
        "target: {kind: reference, workers: 1, options: {engine_core: VLLM::EngineCore}}\n"
        "faults:\n"
        "  - {kind: process-signal, target: worker-1, child: 'VLLM::EngineCor', trigger: {after_requests: 1}}\n"
        "checks: [{check: no_failures, phase: all}]\n")
    art = tmp_path / "run"
    proc = _run_locust(["--ft-scenario", str(scenario), "--ft-requests-per-client", "2"], art, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r"faults\[0\]\.child: expected 1 process named 'VLLM::EngineCor' under worker-1 \(pid \d+\), "
                     r"found 0", proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (art / "requests.jsonl").exists() or not read_records(str(art / "requests.jsonl"))
    _assert_torn_down(art)


@pytest.mark.parametrize("value", ["", "VLLM Engine", 3])
def test_engine_core_knob_is_checked(tmp_path, value):
    with pytest.raises(ConfigError) as e:
        ReferenceDeployment(tmp_path, engine_core=value)
    assert str(e.value).startswith(f"reference deployment engine_core={value!r}: expected null or a process name")




def test_restart_with_child_restarts_the_worker_which_starts_a_fresh_child(tmp_path):
    """Through the Python API: `child` + `restart: true` kills the engine core, the worker exits 1,
    recover() restarts the worker role, and the new worker runs a new engine core."""
    with ReferenceDeployment(tmp_path / "dep", workers=1, engine_core="VLLM::EngineCore") as dep:
        ctx = FaultContext(deployment=dep)
        fault = build_fault(FaultSpec(kind="process-signal", target="worker-1", trigger=TriggerSpec(after_requests=1),
                                      params={"child": "VLLM::EngineCore", "restart": True}, name="f"))
        fault.preflight(ctx)
        old_worker = dep.pid("worker-1")
        (old_core,) = fault.children
        assert f"under worker-1 (pid {old_worker}): pid {old_core.pid}: VLLM::EngineCore" in fault.describe()
        event = fault.inject(ctx)
        deadline = time.time() + 10
        while dep.group.alive("worker-1") and time.time() < deadline:
            time.sleep(0.01)
        assert dep.group.returncode("worker-1") == 1
        assert fault.affected_role() == "worker-1"
        assert fault.recover(ctx).startswith("restarted worker-1 (pid ")
        assert event.recovered_at is not None
        new_worker = dep.pid("worker-1")
        (new_core,) = descendants_named(new_worker, "VLLM::EngineCore")
        assert new_worker != old_worker and new_core.pid != old_core.pid and not _alive(old_core.pid)
        events = read_events(dep.events_path)
    exited = [(e["pid"], e["returncode"]) for e in events if e["event"] == "process_exited"]
    assert exited == [(old_worker, 1)]  # recorded once, at the restart; the teardown stopped the new one
    assert not _alive(new_core.pid)
