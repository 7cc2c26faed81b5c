"""The process-signal fault kind against real processes it started (by PID)."""

import signal
import subprocess
import sys
import time

import pytest

from ftlocust.errors import ConfigError
from ftlocust.faults import SERVING_WORKER as SERVING
from ftlocust.faults import FaultContext, build_fault
from ftlocust.processes import ProcessRef, process_identity
from ftlocust.scenario import FaultSpec, TriggerSpec
from tests.support.process_tree import tree  # noqa: F401  (fixture)


def _spec(target, trigger=None, duration_s=None, **params):
    return FaultSpec(kind="process-signal", target=target, trigger=trigger or TriggerSpec(after_requests=1),
                     params=params, name="f", duration_s=duration_s)


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
    fault = build_fault(_spec(f"pid:{sleeper.pid}", duration_s=2, signal="STOP"))
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
        ("worker-1", {"sginal": "SIGKILL"}, "sginal: unknown field (expected one of child, child_count, restart, "
                                             "signal); did you mean 'signal'?"),
        ("worker-1", {"child": ""}, "f.child: expected a non-empty string, got ''"),
        ("worker-1", {"child": "VLLM EngineCore"}, "f.child: expected a process name without whitespace"),
        ("worker-1", {"child_count": 2}, "f.child_count: needs child"),
        ("worker-1", {"child": "X", "child_count": 0}, "f.child_count: expected an integer >= 1, got 0"),
        ("worker-1", {"stop_for_s": 2}, "f.stop_for_s: now duration_s (every fault with an end takes it)"),
        ("worker-1", {"restart_after_s": 2}, "f.restart_after_s: now duration_s"),

        ("worker-1", {"restart": "yes"}, "restart: expected true or false, got 'yes'"),
    ],
)
def test_bad_fields_and_targets_are_one_line_errors(target, params, message):
    with pytest.raises(ConfigError) as e:
        build_fault(_spec(target, **params), where="f").preflight(FaultContext())
    assert message in str(e.value) and "\n" not in str(e.value)


def test_duration_s_is_only_for_a_fault_with_an_end():
    with pytest.raises(ConfigError, match="f.duration_s: only for a fault that lasts until it is lifted"):
        build_fault(_spec("worker-1", duration_s=2, signal="SIGKILL"), where="f")
    assert build_fault(_spec("worker-1", duration_s=2, restart=True), where="f").scheduled_recovery_s() == 2


def test_sigstop_hands_its_sigcont_to_the_guardian_before_stopping(sleeper):
    class Recorder:
        def __init__(self):
            self.held = []

        def hold(self, action):
            assert _state(sleeper.pid) != "T", "held after the stop"
            self.held.append(action)
            return len(self.held)

        def release(self, hold_id):
            self.held[hold_id - 1] = None

    ctx = FaultContext(guardian=Recorder())
    fault = build_fault(_spec(f"pid:{sleeper.pid}", signal="SIGSTOP"))
    fault.preflight(ctx)
    fault.inject(ctx)
    ((action),) = ctx.guardian.held
    assert action["kind"] == "signal" and action["signal"] == "SIGCONT" and action["pid"] == sleeper.pid
    assert action["start_ticks"] == process_identity(sleeper.pid)[1]
    fault.recover(ctx)
    ctx.release(fault.name)
    assert ctx.guardian.held == [None] and ctx.holds == {}


def test_restart_is_refused_for_a_process_named_by_pid(sleeper):
    fault = build_fault(_spec(f"pid:{sleeper.pid}", restart=True))
    with pytest.raises(ConfigError, match="restart: only for a deployment ftlocust started"):
        fault.preflight(FaultContext())


# --- child: the target's descendants named like vLLM's engine core ------------------------------

class TreeDeployment:
    """A deployment whose roles are process trees this test started."""

    started_here = True

    def __init__(self, pids):
        self.pids = pids  # role -> pid (None: not started)

    def roles(self):
        return ["frontend", *self.pids]

    def process(self, role):
        pid = self.pids.get(role)
        return ProcessRef.capture(pid, role) if pid is not None else None


def _gone(pid, timeout_s=10):
    deadline = time.time() + timeout_s
    while process_identity(pid) is not None and time.time() < deadline:  # None: gone or a zombie
        time.sleep(0.01)
    return process_identity(pid) is None


def test_child_of_a_role_is_found_at_preflight_and_killed(tree):
    t = tree("VLLM::EngineCore", "other")
    engine, other = t.children
    ctx = FaultContext(deployment=TreeDeployment({"worker-1": t.pid}))
    fault = build_fault(_spec("worker-1", child="VLLM::EngineCore"), where="f")
    fault.preflight(ctx)
    text = fault.describe()
    assert (f"the process named 'VLLM::EngineCore' under worker-1 (pid {t.pid}): "
            f"pid {engine}: VLLM::EngineCore -c") in text
    assert str(other) not in text
    event = fault.inject(ctx)
    assert _gone(engine)
    assert process_identity(t.pid) is not None and process_identity(other) is not None  # only the child
    assert event.target == "worker-1"
    assert event.detail == {"signal": "SIGKILL", "pid": t.pid, "child": "VLLM::EngineCore", "child_pids": [engine]}
    assert fault.affected_role() == "worker-1"  # the server view waits on the worker
    assert fault.recover(ctx) is None


@pytest.mark.parametrize("spec, count, message", [
    (["other"], 1, "f.child: expected 1 process named 'VLLM::EngineCore' under worker-1 (pid {pid}), found 0"),
    (["VLLM::EngineCore", "VLLM::EngineCore"], 1,
     "f.child: expected 1 process named 'VLLM::EngineCore' under worker-1 (pid {pid}), found 2 (pid {c0}, pid {c1})"),
    (["VLLM::EngineCore"], 2,
     "f.child: expected 2 processes named 'VLLM::EngineCore' under worker-1 (pid {pid}), found 1 (pid {c0})"),
])
def test_wrong_number_of_children_is_one_line_at_preflight(tree, spec, count, message):
    t = tree(*spec)
    ctx = FaultContext(deployment=TreeDeployment({"worker-1": t.pid}))
    params = {"child": "VLLM::EngineCore"} | ({"child_count": count} if count != 1 else {})
    fault = build_fault(_spec("worker-1", **params), where="f")
    with pytest.raises(ConfigError) as e:
        fault.preflight(ctx)
    c = sorted(t.children) + [0, 0]
    assert str(e.value) == message.format(pid=t.pid, c0=c[0], c1=c[1])
    assert all(process_identity(p) is not None for p in t.children)  # nothing signalled


def test_child_count_two_signals_both(tree):
    t = tree("sglang::scheduler", "sglang::scheduler", "sglang::detokenizer")
    ctx = FaultContext(deployment=TreeDeployment({"worker-1": t.pid}))
    fault = build_fault(_spec("worker-1", child="sglang::scheduler", child_count=2, signal="SIGTERM"))
    fault.preflight(ctx)
    assert fault.describe().startswith("SIGTERM → 2 processes named 'sglang::scheduler' under worker-1")
    event = fault.inject(ctx)
    assert event.detail["child_pids"] == sorted(t.children[:2])
    assert _gone(t.children[0]) and _gone(t.children[1]) and process_identity(t.children[2]) is not None


def test_child_of_the_serving_worker_is_found_when_the_fault_fires(tree):
    t = tree("other>VLLM::EngineCore")  # a grandchild
    (engine,) = t.grandchildren
    ctx = FaultContext(deployment=TreeDeployment({"worker-1": None, "worker-2": t.pid}),
                       resolve_serving=lambda: "worker-2")
    fault = build_fault(_spec(SERVING, trigger=TriggerSpec(mid_stream_chunks=5), child="VLLM::EngineCore"))
    fault.preflight(ctx)  # worker-1 is not running: nothing is looked for yet
    assert fault.children is None
    assert "under the worker serving the probe request (found when the fault fires" in fault.describe()
    event = fault.inject(ctx)
    assert event.target == "worker-2" and event.detail["child_pids"] == [engine] and _gone(engine)
    assert fault.affected_role() == "worker-2"


def test_no_child_under_the_serving_worker_is_a_runtime_error_naming_the_field(tree):
    t = tree("other")
    ctx = FaultContext(deployment=TreeDeployment({"worker-1": t.pid}), resolve_serving=lambda: "worker-1")
    fault = build_fault(_spec(SERVING, trigger=TriggerSpec(mid_stream_chunks=5), child="VLLM::EngineCore"),
                        where="f")
    fault.preflight(ctx)
    with pytest.raises(RuntimeError) as e:
        fault.inject(ctx)
    assert str(e.value) == f"f.child: expected 1 process named 'VLLM::EngineCore' under worker-1 (pid {t.pid}), found 0"


def test_dry_run_of_an_embedded_deployment_finds_children_when_it_starts():
    ctx = FaultContext(deployment=TreeDeployment({"worker-1": None}), dry_run=True)
    fault = build_fault(_spec("worker-1", child="VLLM::EngineCore"))
    fault.preflight(ctx)
    assert "named 'VLLM::EngineCore' under worker-1 (found when the deployment starts)" in fault.describe()
    ctx.dry_run = False
    with pytest.raises(ConfigError, match=r"child: worker-1 is not running \(no process to find 'VLLM::EngineCore'"):
        fault.preflight(ctx)


def test_child_sigstop_is_lifted_on_the_same_children(tree):
    t = tree("VLLM::EngineCore")
    (engine,) = t.children
    fault = build_fault(_spec(f"pid:{t.pid}", child="VLLM::EngineCore", signal="SIGSTOP"))
    ctx = FaultContext()
    fault.preflight(ctx)
    assert f"under pid:{t.pid} (pid {t.pid}): pid {engine}" in fault.describe()
    event = fault.inject(ctx)
    assert event.target == f"pid:{t.pid}" and event.detail["child_pids"] == [engine]
    assert _wait_state(engine, "T") == "T" and _state(t.pid) in "SR"  # the child stopped, not the target
    assert fault.recover(ctx) == f"SIGCONT to pid:{t.pid}'s VLLM::EngineCore (pid {engine})"
    assert _wait_state(engine, "SR") in ("S", "R")


def test_a_child_replaced_since_preflight_is_refused_for_a_pid_target(tree):
    t = tree("VLLM::EngineCore")
    fault = build_fault(_spec(f"pid:{t.pid}", child="VLLM::EngineCore"))
    fault.preflight(FaultContext())
    fault.children[0].start_ticks = "0"  # as if the pid now belonged to another process
    with pytest.raises(ProcessLookupError, match="no longer the process seen at preflight"):
        fault.inject(FaultContext())
    assert process_identity(t.children[0]) is not None
