"""The process-signal fault kind against real processes it started (by PID)."""

import signal
import subprocess
import sys
import time

import pytest

from ftlocust.errors import ConfigError
from ftlocust.faults import FaultContext, build_fault
from ftlocust.processes import process_identity
from ftlocust.scenario import FaultSpec, TriggerSpec


def _spec(target, **params):
    return FaultSpec(kind="process-signal", target=target, trigger=TriggerSpec(after_requests=1), params=params, name="f")


@pytest.fixture
def sleeper():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    deadline = time.time() + 10  # identity is only stable once the child has exec'd
    while "time.sleep" not in ((process_identity(p.pid) or ("", ""))[0]) and time.time() < deadline:
        time.sleep(0.01)
    yield p
    if p.poll() is None:
        p.kill()
    p.wait(timeout=10)


def _state(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    return s[s.rindex(")") + 2]


def _wait_state(pid, wanted, timeout_s=5):
    deadline = time.time() + timeout_s
    while (_state(pid) in wanted) is False and time.time() < deadline:
        time.sleep(0.01)
    return _state(pid)


def test_sigkill_by_pid_has_no_recovery(sleeper):
    fault = build_fault(_spec(f"pid:{sleeper.pid}", signal="SIGKILL"))
    ctx = FaultContext()
    fault.preflight(ctx)
    assert f"pid {sleeper.pid}" in fault.describe()
    before = time.time()
    event = fault.inject(ctx)
    assert event.injected_at >= before and event.target == f"pid:{sleeper.pid}"
    assert sleeper.wait(timeout=10) == -signal.SIGKILL
    assert fault.recover(ctx) is None  # nothing undoes a SIGKILL
    assert fault.recover(ctx) is None
    assert event.recovered_at is None
    assert not fault.reversible and fault.affected_role() is None


def test_sigstop_is_lifted_with_sigcont(sleeper):
    fault = build_fault(_spec(f"pid:{sleeper.pid}", signal="STOP", stop_for_s=2))
    ctx = FaultContext()
    fault.preflight(ctx)
    assert fault.reversible and fault.scheduled_recovery_s() == 2
    event = fault.inject(ctx)
    assert _wait_state(sleeper.pid, "T") == "T"
    assert event.recovered_at is None
    assert fault.recover(ctx) == f"SIGCONT to pid:{sleeper.pid}"
    assert _wait_state(sleeper.pid, "SR") in ("S", "R")
    assert event.recovered_at is not None and event.recovered_at >= event.injected_at
    assert fault.recover(ctx) is None  # idempotent: lifted once


def test_pid_reuse_is_refused(sleeper):
    fault = build_fault(_spec(f"pid:{sleeper.pid}"))
    ctx = FaultContext()
    fault.preflight(ctx)
    fault.target.process.start_ticks = "0"  # as if the pid now belonged to another process
    with pytest.raises(ProcessLookupError, match="no longer the process"):
        fault.inject(ctx)
    assert sleeper.poll() is None


def test_pidfile_target(sleeper, tmp_path):
    pidfile = tmp_path / "w.pid"
    pidfile.write_text(f"{sleeper.pid}\n")
    fault = build_fault(_spec(f"pidfile:{pidfile}"))
    fault.preflight(FaultContext())
    assert (fault.target.process.cmdline, fault.target.process.start_ticks) == process_identity(sleeper.pid)


@pytest.mark.parametrize(
    "target, params, message",
    [
        ("pid:999999999", {}, "no running process with pid 999999999"),
        ("pid:abc", {}, "expected a pid, got 'abc'"),
        ("pidfile:/nonexistent/x.pid", {}, "cannot read pid file"),
        ("worker-1", {}, "there is no deployment"),
        ("worker-1", {"signal": "SIGHUP"}, "f.signal: expected one of SIGKILL"),
        ("worker-1", {"sginal": "SIGKILL"}, "sginal: unknown field (expected one of restart, restart_after_s, signal, "
                                             "stop_for_s); did you mean 'signal'?"),
        ("worker-1", {"stop_for_s": 2}, "stop_for_s: only for signal SIGSTOP"),
        ("worker-1", {"restart_after_s": -1}, "restart_after_s: expected a number >= 0, got -1"),
        ("worker-1", {"restart_after_s": 2}, "restart_after_s: needs restart: true"),
        ("worker-1", {"restart": "yes"}, "restart: expected true or false, got 'yes'"),
    ],
)
def test_bad_fields_and_targets_are_one_line_errors(target, params, message):
    with pytest.raises(ConfigError) as e:
        build_fault(_spec(target, **params), where="f").preflight(FaultContext())
    assert message in str(e.value) and "\n" not in str(e.value)


def test_restart_is_refused_for_a_process_named_by_pid(sleeper):
    fault = build_fault(_spec(f"pid:{sleeper.pid}", restart=True))
    with pytest.raises(ConfigError, match="restart: only for a deployment ftlocust started"):
        fault.preflight(FaultContext())
