"""The guardian process: it lifts what is held when the driver dies (SIGKILL included), within
2 s, and never while the driver lives. Real processes; the driver is tests/support/guardian_driver.py."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ftlocust import guardian
from ftlocust.guardian import Guardian, GuardianError, process_action, read_lines
from tests.support.procfs import gone as _gone
from tests.support.procfs import state as _state
from tests.support.procfs import wait as _wait

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ended(tmp_path):
    """The guardian's journal once it wrote its last line."""
    path = str(tmp_path / "guardian.jsonl")
    assert _wait(lambda: any(e["event"] == "end" for e in read_lines(path)), timeout_s=10)
    return read_lines(path)


@pytest.fixture
def driver(tmp_path):
    """Start the stand-in driver; yield (proc, pids); end every process it started, by PID."""
    started = []

    def start(then="sleep"):
        proc = subprocess.Popen([sys.executable, "-m", "tests.support.guardian_driver", str(tmp_path), "--then", then],
                                stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
        line = proc.stdout.readline()
        assert line, "the driver printed nothing"
        pids = json.loads(line)
        started.append((proc, pids))
        return proc, pids

    yield start
    for proc, pids in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for key in ("sleeper", "child", "guardian"):
            pid = pids.get(key)
            if pid and not _gone(pid):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)


def test_sigkill_of_the_driver_lifts_everything_held_within_2_s(driver, tmp_path):
    proc, pids = driver()
    assert _wait(lambda: _state(pids["sleeper"]) == "T")
    time.sleep(0.3)
    assert _state(pids["sleeper"]) == "T" and not _gone(pids["child"])  # nothing acts while the driver lives
    killed_at = time.monotonic()
    proc.kill()
    assert _wait(lambda: _gone(pids["sleeper"]) and _gone(pids["child"]), timeout_s=5)
    took = time.monotonic() - killed_at
    assert took < 2.0, f"lifted {took:.2f} s after the driver's death"
    journal = _ended(tmp_path)
    lifted = [e for e in journal if e["event"] == "lifted"]
    assert [e["kind"] for e in lifted] == ["signal", "stop-process"]  # newest first: SIGCONT, then the stop
    assert lifted[0]["what"] == f"SIGCONT to sleeper (pid {pids['sleeper']})"
    assert lifted[1]["what"].startswith(f"stopped sleeper (pid {pids['sleeper']})")
    assert journal[-1]["event"] == "end" and journal[-1]["failed"] == 0
    assert "died; lifted: SIGCONT to sleeper" in (tmp_path / "guardian.log").read_text()


def test_a_released_rollback_is_not_run(driver, tmp_path):
    proc, pids = driver("release")
    assert _wait(lambda: _state(pids["sleeper"]) == "T")
    time.sleep(0.2)  # the driver released the SIGCONT and stopped the sleeper again
    proc.kill()
    assert _wait(lambda: _gone(pids["child"]), timeout_s=5)  # the group is still ended (held)...
    lifted = [e for e in _ended(tmp_path) if e["event"] == "lifted"]
    assert [e["kind"] for e in lifted] == ["stop-process"]  # ...but no SIGCONT was sent


def test_close_with_nothing_held_ends_the_guardian_at_once(driver, tmp_path):
    proc, pids = driver("close")
    assert _wait(lambda: _gone(pids["guardian"]), timeout_s=10)
    assert proc.poll() is None  # the driver still runs: the guardian left without acting
    journal = _ended(tmp_path)
    assert journal[-1]["reason"] == "closed"
    assert not [e for e in journal if e["event"] == "lifted"]


def test_close_with_rollbacks_held_runs_them_once_the_driver_exits(driver, tmp_path):
    proc, pids = driver("close-held")
    time.sleep(0.5)
    assert _state(pids["sleeper"]) == "T" and not _gone(pids["guardian"])
    proc.kill()
    assert _wait(lambda: _gone(pids["sleeper"]), timeout_s=5)
    journal = _ended(tmp_path)
    assert [e["kind"] for e in journal if e["event"] == "lifted"] == ["signal", "stop-process"]
    assert next(e for e in journal if e["event"] == "driver_gone")["closed"] is True


def test_a_normal_exit_without_close_is_taken_as_a_death(driver, tmp_path):
    proc, pids = driver("exit")
    assert proc.wait(timeout=10) == 0
    assert _wait(lambda: _gone(pids["sleeper"]), timeout_s=5)


def test_the_guardian_ignores_sigterm_and_sigint_while_it_holds_rollbacks(driver):
    proc, pids = driver()
    os.kill(pids["guardian"], signal.SIGTERM)
    os.kill(pids["guardian"], signal.SIGINT)
    time.sleep(0.3)
    assert not _gone(pids["guardian"])
    proc.kill()
    assert _wait(lambda: _gone(pids["sleeper"]), timeout_s=5)


def test_hold_refuses_once_the_guardian_is_gone(tmp_path):
    g = Guardian.start(str(tmp_path))
    try:
        g.proc.kill()
        g.proc.wait(timeout=10)
        with pytest.raises(GuardianError, match="guardian"):
            g.hold({"kind": "signal", "pid": 1, "start_ticks": "0", "signal": "SIGCONT", "label": "x"})
    finally:
        g.close()


def test_actions_check_identity_and_unknown_kinds_are_named():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        a = process_action("signal", sleeper.pid, label="s", signal="SIGSTOP")
        stale = dict(a, start_ticks=str(int(a["start_ticks"]) + 1))  # another process with that PID
        assert guardian.run_action(stale) is None
        assert _state(sleeper.pid) != "T"
        assert guardian.run_action(a) == f"SIGSTOP to s (pid {sleeper.pid})"
        assert _wait(lambda: _state(sleeper.pid) == "T")
        os.kill(sleeper.pid, signal.SIGCONT)
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)
    assert guardian.run_action(a) is None  # gone: nothing to do, no error
    with pytest.raises(KeyError, match="no guardian action of kind 'nope'"):
        guardian.run_action({"kind": "nope"})
    with pytest.raises(ProcessLookupError):
        process_action("signal", sleeper.pid, signal="SIGCONT")
