"""The GPU-failure chain on a bare machine, as a user runs it:

    locust -f locustfiles/migration.py --headless --ft-scenario configs/scenarios/xid-worker.yaml

The `gpu-xid` fault writes an XID 79 line naming the GPU of the worker serving the probe stream
to the deployment's stand-in kernel log; that worker (and only it) logs the GPU failure, drains
nothing, deregisters and exits 1; its streams migrate; the server view recovers. With migration
off the drill must fail (exit 3). The worker's side (which lines count) is also tested through
the Python API, writing the lines directly.
"""
import json
import os
import re
import time

import pytest

from ftlocust.records import read_records
from ftlocust.targets.reference import ReferenceDeployment
from ftlocust.targets.reference.events import read_events
from tests.integration.test_engine_core_drill import _events
from tests.integration.test_migration_drill import ROOT, SMALL, _assert_torn_down
from tests.integration.test_migration_drill import _run as _run_locust

pytestmark = pytest.mark.integration

SCENARIO = ["--ft-scenario", os.path.join(ROOT, "configs", "scenarios", "xid-worker.yaml")]
GPUS = {"worker-1": "00000000:19:00.0", "worker-2": "00000000:1A:00.0"}  # the synthetic defaults
XID_LINE = "NVRM: Xid (PCI:{}): 79, pid=<unknown>, name=<unknown>, GPU has fallen off the bus.\n"


def _run(args, artifacts, timeout=240):
    return _run_locust(SCENARIO + args, artifacts, timeout=timeout)


def _check_the_xid(art, summary):
    """The XID named the serving worker's GPU; that worker logged it and exited 1; the other did not."""
    (fault,) = summary["faults"]
    assert fault["kind"] == "gpu-xid" and fault["status"] == "injected"
    role = fault["detail"].get("role") or fault["target"]
    assert role in GPUS, fault
    short = GPUS[role][4:-2].lower()  # 0000:19:00, as the driver writes it
    kernel_log = (art / "deployment" / "kernel.log").read_text()
    assert kernel_log == XID_LINE.format(short)  # one line, written by the fault
    log = (art / "services" / role / f"{role}.log").read_text()
    assert re.search(rf"ERROR dynamo\.vllm\.engine_monitor: EngineDeadError: GPU failure detected: Xid 79 on "
                     rf"PCI:{short} \(this worker's GPU {GPUS[role]}\) instance_id=\d+ inflight=[1-9]", log), log[-2000:]
    assert "Initiating Dynamo Runtime shutdown" in log and "Worker stopped exit_code=1" in log
    assert f"GPU assigned pci_bus_id={GPUS[role]} kernel_log={art / 'deployment' / 'kernel.log'}" in log
    exited = [(e["role"], e["returncode"]) for e in _events(art) if e["event"] == "process_exited"]
    assert exited == [(role, 1)]
    other = "worker-2" if role == "worker-1" else "worker-1"
    other_log = (art / "deployment" / "logs" / f"{other}.log").read_text()
    assert "EngineDeadError" not in other_log and "Worker stopped exit_code=0" in other_log
    return role


def test_xid_drill_passes_with_migration(tmp_path):
    art = tmp_path / "run"
    proc = _run(SMALL, art)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    assert summary["passed"] is True and all(c["passed"] for c in summary["checks"]), summary["checks"]
    role = _check_the_xid(art, summary)
    # the summary's server view agrees with the deployment's own event log: exit status 1
    assert [(e["role"], e["exit_code"], e["signal"]) for e in summary["exits"]] == [(role, 1, None)]
    assert summary["phases"]["all"]["failed"] == 0 and summary["phases"]["after"]["success"] > 0
    assert 0 <= summary["recovery"]["server_recovery_s"] < 5  # deregistered at once, not by lease expiry
    records = read_records(str(art / "requests.jsonl"))
    (probe,) = [r for r in records if r.client_id.endswith("/probe")]
    assert probe.outcome == "ok" and probe.output_tokens == probe.expected_tokens and probe.token_check == "ok"
    migrated = {e["request_id"] for e in _events(art) if e["event"] == "migration_done" and e["from_role"] == role}
    assert probe.request_id in migrated
    deregistered = [e for e in _events(art) if e["event"] == "worker_deregistered" and e["role"] == role]
    assert deregistered and 0 <= deregistered[0]["ts"] - summary["faults"][0]["injected_at"] < 2  # at once
    _assert_torn_down(art)


def test_xid_drill_fails_without_migration(tmp_path):
    art = tmp_path / "run"
    proc = _run(SMALL + ["--ft-target-migration-limit", "0"], art)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    _check_the_xid(art, summary)
    failed = {c["name"] for c in summary["checks"] if not c["passed"]}
    assert {"no_failures[all]", "migrations that succeeded (outcome=success) >= 1"} <= failed
    assert not any("EngineDeadError" in name or "exit_code=1" in name for name in failed)  # the worker did its part
    assert any(r.outcome == "stream_error_event" for r in read_records(str(art / "requests.jsonl")))
    _assert_torn_down(art)


def _wait_exit(dep, role, timeout_s=10.0):
    deadline = time.time() + timeout_s
    while dep.group.alive(role) and time.time() < deadline:
        time.sleep(0.02)
    return dep.group.returncode(role)


def test_workers_react_only_to_new_xid_lines_naming_their_own_gpu(tmp_path):
    with ReferenceDeployment(tmp_path / "dep", workers=2, kernel_log=True) as dep:
        path = dep.kernel_log_path()
        assert path == str(tmp_path / "dep" / "kernel.log") and os.path.getsize(path) == 0
        assert (dep.gpu_pci("worker-1"), dep.gpu_pci("worker-2"), dep.gpu_pci("frontend")) == (
            GPUS["worker-1"], GPUS["worker-2"], None)
        with open(path, "a") as f:  # other GPUs, a non-XID driver line
            f.write(XID_LINE.format("0000:3b:00") + "NVRM: GPU at PCI:0000:19:00: GPU-fake-0000\n")
        time.sleep(0.5)
        assert dep.group.alive("worker-1") and dep.group.alive("worker-2")
        with open(path, "a") as f:  # a /dev/kmsg record, the seed agent's doubled source, in two writes
            f.write("3,1234,5678,-;NVRM: NVRM: Xid (PCI:0000:1a")
            f.flush()
            time.sleep(0.3)
            assert dep.group.alive("worker-2")  # half a line is not a line
            f.write(":00): 48, pid=<unknown>, name=<unknown>, An uncorrectable double bit error\n")
        assert _wait_exit(dep, "worker-2") == 1
        assert dep.group.alive("worker-1")
        log = open(dep.log_path("worker-2")).read()
        assert "EngineDeadError: GPU failure detected: Xid 48 on PCI:0000:1a:00 (this worker's GPU 00000000:1A:00.0)" \
               in log
        deadline = time.time() + 5
        while not dep.recovered("worker-2") and time.time() < deadline:
            time.sleep(0.05)
        assert dep.recovered("worker-2")  # the server view: worker-2 gone, worker-1 serving
        # The line naming worker-2's GPU stays in the log: its restarted worker takes it as history.
        dep.restart("worker-2")
        time.sleep(0.5)
        assert dep.group.alive("worker-2") and dep.recovered("worker-2")
        events = read_events(dep.events_path)
    assert [(e["role"], e["returncode"]) for e in events if e["event"] == "process_exited"] == [("worker-2", 1)]


def test_an_xid_stops_the_engine_core_child_without_a_second_failure(tmp_path):
    with ReferenceDeployment(tmp_path / "dep", workers=1, kernel_log=True, engine_core="VLLM::EngineCore") as dep:
        with open(dep.kernel_log_path(), "a") as f:
            f.write(XID_LINE.format("0000:19:00"))
        assert _wait_exit(dep, "worker-1") == 1
        log = open(dep.log_path("worker-1")).read()
    core = re.search(r"Engine core started name=VLLM::EngineCore pid=(\d+)", log).group(1)
    assert log.count("EngineDeadError") == 1 and "EngineDeadError: GPU failure detected: Xid 79" in log
    assert f"Engine core stopped pid={core} exited with code 0" in log  # ended by its worker, not lost
    assert "Worker stopped exit_code=1" in log


@pytest.mark.parametrize("gpus, expected", [
    (["00000000:19:00.0"], "one PCI bus id per worker (2: worker-1, worker-2)"),
    (["00000000:19:00.0", "bus 1"], "a list of PCI bus ids like 00000000:19:00.0"),
    (["00000000:19:00.0", "0000:19:00.0"], "distinct PCI bus ids"),
])
def test_gpus_knob_is_checked(tmp_path, gpus, expected):
    from ftlocust.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        ReferenceDeployment(tmp_path, gpus=gpus)
    assert str(e.value) == f"reference deployment gpus={gpus!r}: expected {expected}"
