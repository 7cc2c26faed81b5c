"""The independent witness (ftlocust/witness.py) on real local processes it did not start."""

import os
import signal
import subprocess
import sys
import time

import pytest

from ftlocust.witness import PidWatch, Witness, WitnessError, process_start_time, read_events

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LATENCY_S = 0.05  # "a few ms" measured; bounded generously for a loaded CI machine


@pytest.fixture
def spawn():
    """Start `sleep` children; at the end kill (by PID) and reap whatever is left of them."""
    procs = []

    def start(seconds=60):
        p = subprocess.Popen(["sleep", str(seconds)])
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


@pytest.fixture
def witnesses():
    started = []
    yield started
    for w in started:
        w.stop(timeout_s=5)


def wait_for(path, event, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for e in read_events(path):
            if e["event"] == event:
                return e
        time.sleep(0.005)
    raise AssertionError(f"no {event!r} in {read_events(path)}")


def test_kill_is_recorded_within_ms_and_the_witness_exits_by_itself(tmp_path, spawn, witnesses):
    child = spawn()
    out = tmp_path / "w.jsonl"
    w = Witness.start([child.pid], out)
    witnesses.append(w)
    (seen,) = w.ready["pids"]
    assert (seen["pid"], seen["start_time"]) == (child.pid, process_start_time(child.pid)) and seen["state"] in "RS"
    t_kill = time.time()
    os.kill(child.pid, signal.SIGKILL)  # the child stays a zombie until we reap it: the pidfd fires anyway
    assert w.wait(timeout_s=5) == 0, "the witness did not exit once its only process died"
    events = read_events(out)
    assert [e["event"] for e in events] == ["ready", "exited", "end"]
    exited = events[1]
    assert exited["pid"] == child.pid
    assert 0 <= exited["ts"] - t_kill < LATENCY_S, f"exited {1000 * (exited['ts'] - t_kill):.1f} ms after the kill"
    assert events[2]["reason"] == "all_exited" and events[2]["cpu_s"] >= 0


def test_sigstop_then_sigcont(tmp_path, spawn, witnesses):
    child = spawn()
    out = tmp_path / "w.jsonl"
    w = Witness.start([child.pid], out)
    witnesses.append(w)
    t_stop = time.time()
    os.kill(child.pid, signal.SIGSTOP)
    stopped = wait_for(out, "stopped")
    assert 0 <= stopped["ts"] - t_stop < LATENCY_S
    t_cont = time.time()
    os.kill(child.pid, signal.SIGCONT)
    continued = wait_for(out, "continued")
    assert 0 <= continued["ts"] - t_cont < LATENCY_S
    child.kill()
    assert w.wait(timeout_s=5) == 0
    assert [(e["event"], e.get("pid")) for e in read_events(out)] == [
        ("ready", None), ("stopped", child.pid), ("continued", child.pid), ("exited", child.pid), ("end", None)]


def test_start_time_mismatch_is_refused_with_one_line(tmp_path, spawn):
    child = spawn()
    start = process_start_time(child.pid)
    out = tmp_path / "w.jsonl"
    cli = subprocess.run([sys.executable, "-m", "ftlocust.witness", "--pid", f"{child.pid}:{start + 1}", "--out",
                          str(out)], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert cli.returncode == 2
    assert len(cli.stderr.splitlines()) == 1, cli.stderr
    assert f"pid {child.pid}: start time {start} does not match the expected {start + 1}" in cli.stderr
    assert [e["event"] for e in read_events(out)] == ["refused"]
    with pytest.raises(WitnessError, match="does not match"):
        Witness.start([(child.pid, start + 1)], tmp_path / "api.jsonl")
    assert child.poll() is None  # refusing touches nothing


def test_zombie_and_missing_processes_are_refused(tmp_path, spawn):
    zombie = spawn()
    zombie.kill()
    deadline = time.monotonic() + 5
    while open(f"/proc/{zombie.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.005)
    with pytest.raises(WitnessError, match=f"pid {zombie.pid}: not running"):
        Witness.start([zombie.pid], tmp_path / "w.jsonl")
    zombie.wait(timeout=5)
    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    with pytest.raises(WitnessError, match="no such process"):
        Witness.start([pid_max + 1], tmp_path / "w2.jsonl")


def test_exits_when_every_process_is_gone_or_after_max_seconds(tmp_path, spawn, witnesses):
    a, b = spawn(), spawn()
    out = tmp_path / "w.jsonl"
    w = Witness.start([a.pid, b.pid], out)
    witnesses.append(w)
    a.kill()
    wait_for(out, "exited")
    assert w.running(), "one process is still alive: the witness keeps watching"
    b.kill()
    assert w.wait(timeout_s=5) == 0
    assert sorted(e["pid"] for e in read_events(out) if e["event"] == "exited") == sorted([a.pid, b.pid])

    c = spawn()
    t0 = time.monotonic()
    w2 = Witness.start([c.pid], tmp_path / "w2.jsonl", max_seconds=0.3)
    witnesses.append(w2)
    assert w2.wait(timeout_s=5) == 0 and time.monotonic() - t0 < 5
    assert read_events(tmp_path / "w2.jsonl")[-1]["reason"] == "max_seconds"
    assert c.poll() is None


def test_pidwatch_in_process(spawn):
    """The part a guardian reuses: hold a pidfd on an identified process and wait for its exit."""
    child = spawn()
    watch = PidWatch()
    try:
        start, state = watch.add(child.pid, process_start_time(child.pid))
        assert state in "RS" and start == process_start_time(child.pid) and watch.pids() == [child.pid]
        assert watch.wait(0.01) == []
        child.kill()
        assert watch.wait(5) == [child.pid]
        assert watch.pids() == []
    finally:
        watch.close()
