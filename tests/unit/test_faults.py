import signal
import subprocess
import sys
import time

import pytest

from ftlocust.errors import ConfigError
from ftlocust.faults import FaultContext, ProcessSignalFault, _process_identity, build_fault
from ftlocust.scenario import FaultSpec, TriggerSpec


def _spec(target, **params):
    return FaultSpec(kind="process-signal", target=target, trigger=TriggerSpec(after_requests=1), params=params, name="f")


@pytest.fixture
def sleeper():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    deadline = time.time() + 10  # identity is only stable once the child has exec'd
    while "time.sleep" not in ((_process_identity(p.pid) or ("", ""))[0]) and time.time() < deadline:
        time.sleep(0.01)
    yield p
    if p.poll() is None:
        p.kill()
    p.wait(timeout=10)


def _state(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    return s[s.rindex(")") + 2]


def test_sigkill_by_pid(sleeper):
    fault = build_fault(_spec(f"pid:{sleeper.pid}", signal="SIGKILL"))
    ctx = FaultContext()
    fault.preflight(ctx)
    assert f"pid {sleeper.pid}" in fault.describe()
    before = time.time()
    event = fault.inject(ctx)
    assert event.injected_at >= before and event.target == f"pid:{sleeper.pid}"
    assert sleeper.wait(timeout=10) == -signal.SIGKILL
    fault.recover(ctx)  # nothing to undo, but must not fail; idempotent
    fault.recover(ctx)
    assert event.recovered_at is not None


def test_sigstop_is_rolled_back_with_sigcont(sleeper):
    fault = build_fault(_spec(f"pid:{sleeper.pid}", signal="STOP"))
    ctx = FaultContext()
    fault.preflight(ctx)
    fault.inject(ctx)
    deadline = time.time() + 5
    while _state(sleeper.pid) != "T" and time.time() < deadline:
        time.sleep(0.01)
    assert _state(sleeper.pid) == "T"
    fault.recover(ctx)
    deadline = time.time() + 5
    while _state(sleeper.pid) == "T" and time.time() < deadline:
        time.sleep(0.01)
    assert _state(sleeper.pid) in ("S", "R")


def test_pid_reuse_is_refused(sleeper):
    fault = build_fault(_spec(f"pid:{sleeper.pid}"))
    fault.preflight(FaultContext())
    fault._identity = ("someone else", "0")  # as if the pid now belonged to another process
    with pytest.raises(RuntimeError, match="no longer the process"):
        fault.inject(FaultContext())
    assert sleeper.poll() is None


def test_pidfile_target(sleeper, tmp_path):
    pidfile = tmp_path / "w.pid"
    pidfile.write_text(f"{sleeper.pid}\n")
    fault = build_fault(_spec(f"pidfile:{pidfile}"))
    fault.preflight(FaultContext())
    assert fault._identity == _process_identity(sleeper.pid)


@pytest.mark.parametrize(
    "target, params, message",
    [
        ("pid:999999999", {}, "no running process with pid 999999999"),
        ("pid:abc", {}, "expected a pid, got 'abc'"),
        ("pidfile:/nonexistent/x.pid", {}, "cannot read pid file"),
        ("worker-1", {}, "no deployment was started"),
        ("worker-1", {"signal": "SIGHUP"}, "signal: expected one of"),
        ("worker-1", {"sginal": "SIGKILL"}, "unknown field 'sginal'"),
    ],
)
def test_bad_targets_are_one_line_errors(target, params, message):
    with pytest.raises(ConfigError) as e:
        build_fault(_spec(target, **params)).preflight(FaultContext())
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_kind():
    with pytest.raises(ConfigError, match="kind: unknown 'gpu-melt'"):
        build_fault(FaultSpec(kind="gpu-melt", target="x", trigger=TriggerSpec(after_requests=1), name="f"))


def test_serving_worker_needs_a_mid_stream_trigger():
    class FakeGroup:
        def roles(self):
            return ["frontend", "worker-1"]

    class FakeDeployment:
        group = FakeGroup()

    fault = ProcessSignalFault(_spec("serving-worker"))
    with pytest.raises(ConfigError, match="needs trigger.mid_stream_chunks"):
        fault.preflight(FaultContext(deployment=FakeDeployment()))
    with pytest.raises(ConfigError, match="unknown role 'worker-9'"):
        ProcessSignalFault(_spec("worker-9")).preflight(FaultContext(deployment=FakeDeployment()))
