"""The guardian in real drills: SIGKILL the driver (Locust) in the middle of a fault, and every
fault is lifted and every process ftlocust started is gone — within 2 s for the fault.

    locust -f locustfiles/load.py --headless --ft-scenario X.yaml ...   then kill -9 <locust>

Nothing here lifts a fault or ends a deployment process itself: what the test sees is the
guardian's work (its journal, guardian.jsonl, says what it lifted). The test ends only the
processes it started, by PID, should the guardian fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftlocust.guardian import read_lines
from tests.support.dynamo import dynamo_marks
from tests.support.procfs import wait as _wait

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields


def _group_members(pgids: set[int]) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := _stat(int(name))) is not None and int(fields[2]) in pgids:
            out.append(int(name))
    return out


class KilledDrill:
    """A drill started under Locust and SIGKILLed once `ready(art)` holds; the deployment's PIDs
    (and their process groups) as seen just before the kill."""

    def __init__(self, argv: list[str], art: Path, ready, limit_s: float = 150):
        self.art = art
        self.proc = subprocess.Popen([sys.executable, "-m", "locust", *argv, "--headless", "--ft-artifacts", str(art)],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            assert _wait(lambda: ready(art) or self.proc.poll() is not None, limit_s, step=0.05), "the drill never got there"
            assert self.proc.poll() is None, f"the drill ended by itself (code {self.proc.returncode}): see {art}/test.log"
            self.pids = {p.stem: int(p.read_text()) for p in (art / "deployment" / "pids").glob("*.pid")}
            self.pgids = set(self.pids.values())
            self.members = _group_members(self.pgids)  # children of the roles too (Dynamo's)
            self.killed_at = time.monotonic()
            self.proc.kill()
            self.proc.wait(timeout=30)
        except BaseException:
            self.cleanup()
            raise

    def journal(self) -> list[dict]:
        path = self.art / "guardian.jsonl"
        _wait(lambda: any(e["event"] == "end" for e in read_lines(str(path))), 15, step=0.05)
        return read_lines(str(path))

    def left(self) -> list[int]:
        return [pid for pid in self.members if (f := _stat(pid)) is not None and int(f[2]) in self.pgids]

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for pid in self.left() if hasattr(self, "members") else []:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)


def _in_effect(art: Path) -> bool:
    log = art / "test.log"
    return log.exists() and "in effect" in log.read_text()


HANG = """
name: hang-then-killed
target: {kind: reference, workers: 2, options: {token_delay_s: 0.01}}
faults:
  - {name: hang-worker-1, kind: process-signal, target: worker-1, signal: SIGSTOP, trigger: {after_requests: 5}}
checks:
  - {check: success_ratio, phase: before, min: 0.9}
"""


def test_sigkill_of_ftlocust_during_a_sigstop_fault_resumes_the_worker_within_2_s(tmp_path):
    scenario = tmp_path / "hang.yaml"
    scenario.write_text(HANG)
    drill = KilledDrill(["-f", str(ROOT / "locustfiles" / "load.py"), "--ft-scenario", str(scenario),
                         "--ft-endpoint", "completion-stream", "-u", "4", "-r", "4"], tmp_path / "run", _in_effect)
    try:
        worker = drill.pids["worker-1"]
        stopped = lambda: (f := _stat(worker)) is not None and f[0] in ("T", "t")  # noqa: E731
        assert _wait(lambda: not stopped(), 5), "worker-1 is still stopped"
        took = time.monotonic() - drill.killed_at
        assert took < 2.0, f"SIGCONT came {took:.2f} s after ftlocust died"
        assert _wait(lambda: not drill.left(), 15), f"left running: {drill.left()}"
        lifted = [e for e in drill.journal() if e["event"] == "lifted"]
        assert lifted[0]["what"] == f"SIGCONT to worker-1 (pid {worker})"
        assert {e["what"].split(" (pid")[0] for e in lifted[1:] if e["what"]} <= {
            f"stopped {role}" for role in drill.pids}
        assert "died; lifted: SIGCONT to worker-1" in (tmp_path / "run" / "guardian.log").read_text()
    finally:
        drill.cleanup()


def _marked(marks):
    def apply(fn):
        for mark in marks:
            fn = mark(fn)
        return fn

    return apply


@_marked(dynamo_marks(timeout_s=300))  # skipped, with the reason, without the Dynamo env
def test_sigkill_of_ftlocust_during_a_dynamo_drill_leaves_no_dynamo_process(tmp_path):
    drill = KilledDrill(["-f", str(ROOT / "locustfiles" / "migration.py"), "--ft-scenario",
                         str(ROOT / "configs" / "dynamo" / "migration-sigkill.yaml")], tmp_path / "run", _in_effect,
                        limit_s=200)
    try:
        assert {"broker", "frontend"} <= set(drill.pids), drill.pids
        assert _wait(lambda: not drill.left(), 5), f"Dynamo processes left running: {drill.left()}"
        took = time.monotonic() - drill.killed_at
        stopped = {e["what"] for e in drill.journal() if e["event"] == "lifted" and e["what"]}
        assert any(w.startswith("stopped frontend") for w in stopped), stopped
        print(f"every Dynamo process gone {took:.2f} s after ftlocust died")
    finally:
        drill.cleanup()
