"""Running a drill as a user runs it (`python -m locust -f locustfiles/X --headless
--ft-scenario configs/... --ft-artifacts DIR`) and reading what it left: exit code, output,
summary, requests, logs as the verdicts saw them and as the deployment left them, metric
snapshots. While it runs, every PID the deployment writes under DIR/deployment/pids is noted, so
a test can assert afterwards that none is left alive (the drill tears down; tests kill nothing)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftlocust.evidence import MetricsSnapshot
from ftlocust.records import read_records

ROOT = Path(__file__).resolve().parents[2]


def start_ticks(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), None when gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else fields[19]


class Drill:
    """One finished drill run: exit code, output, artifacts, and every deployment PID seen."""

    def __init__(self, locustfile: str, scenario: str | None, artifacts: Path, extra: tuple[str, ...] = (),
                 configs: str = "dynamo", limit_s: float = 240):
        """`scenario`: a file of configs/<configs>/, or None for the locustfile's own scenario.
        `limit_s` only bounds a hang."""
        self.art = artifacts
        scenario_args = ["--ft-scenario", str(ROOT / "configs" / configs / scenario)] if scenario else []
        argv = [sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / locustfile), "--headless",
                *scenario_args, "--ft-artifacts", str(artifacts), *extra]
        self.pids: dict[int, str] = {}  # pid -> start ticks, as first seen
        pid_dir = artifacts / "deployment" / "pids"
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)
        out_lines: list[str] = []
        reader = _Reader(proc, out_lines)
        deadline = time.monotonic() + limit_s
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                self._note_pids(pid_dir)  # a restarted role gets a new PID: keep polling
                time.sleep(0.1)
            if proc.poll() is None:  # hung: SIGTERM makes the drill roll back and tear down
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
                pytest.fail(f"drill {scenario} did not end within {limit_s:g} s")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join()
        self.returncode = proc.returncode
        self.output = "".join(out_lines)

    def _note_pids(self, pid_dir: Path) -> None:
        try:
            names = os.listdir(pid_dir)
        except OSError:
            return
        for name in names:
            try:
                pid = int((pid_dir / name).read_text().strip())
            except (OSError, ValueError):
                continue  # being written
            if pid not in self.pids:
                ticks = start_ticks(pid)
                if ticks is not None:
                    self.pids[pid] = ticks

    def tail(self) -> str:
        return self.output[-4000:]

    # -- artifacts --
    @property
    def summary(self) -> dict:
        return json.loads((self.art / "summary.json").read_text())

    def verdicts(self) -> dict[str, bool]:
        return {c["name"]: c["passed"] for c in self.summary["checks"]}

    def records(self):
        return read_records(str(self.art / "requests.jsonl"))

    def probe(self):
        (probe,) = [r for r in self.records() if r.client_id.endswith("/probe")]
        return probe

    def log_lines(self, role: str) -> list[str]:
        folder = self.art / "services" / role
        lines: list[str] = []
        for name in (f"{role}.previous.log", f"{role}.log"):
            if (folder / name).is_file():
                lines += (folder / name).read_text(errors="replace").splitlines()
        return lines

    def worker_log_lines(self) -> dict[str, list[str]]:
        """Each worker's whole log, as the deployment left it after teardown (the copies in
        services/ are the logs as the verdicts saw them: a line written a moment after the
        "after" metrics scrape is only in these)."""
        logs = self.art / "deployment" / "logs"
        roles = sorted(p.name[:-4] for p in logs.glob("worker-*.log") if not p.name.endswith(".previous.log"))
        return {role: [line for name in (f"{role}.previous.log", f"{role}.log") if (logs / name).is_file()
                       for line in (logs / name).read_text(errors="replace").splitlines()] for role in roles}

    def metric_delta(self, role: str, name: str, **labels) -> float:
        folder = self.art / "services" / role
        before, after = (MetricsSnapshot((folder / f"{role}.metrics.{w}.txt").read_text()) for w in ("before", "after"))
        return after.value(name, **labels) - before.value(name, **labels)

    def assert_torn_down(self) -> None:
        assert self.pids, "the drill's deployment wrote no pid files"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            left = [pid for pid, ticks in self.pids.items() if start_ticks(pid) == ticks]
            if not left:
                return
            time.sleep(0.1)
        raise AssertionError(f"deployment processes left alive after the drill: {left}")


class _Reader:
    """Drains the drill's output in a thread, so a full pipe never blocks it."""

    def __init__(self, proc: subprocess.Popen, sink: list[str]):
        import threading

        self.thread = threading.Thread(target=lambda: sink.extend(iter(proc.stdout.readline, "")), daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=30)
