"""Timed and repeated faults in a real drill: worker-1 hung (SIGSTOP) for 1.5 s, three times,
4 s apart — each occurrence its own timeline entry, row and window, each lifted on time.

    locust -f locustfiles/load.py --headless --ft-scenario flap.yaml
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ftlocust.guardian import read_lines

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

FLAP = """
name: flapping-worker
target: {kind: reference, workers: 2, options: {token_delay_s: 0.01}}
load: {endpoint: completion-stream, input_tokens: 20, output_tokens: 100, requests_per_client: 1000}
faults:
  - {name: hang, kind: process-signal, target: worker-1, signal: SIGSTOP, duration_s: 1.5,
     repeat: {every_s: 4, count: 3}, trigger: {after_seconds: 3}}
stop: {recovery_window_s: 4}
checks:
  - {check: success_ratio, phase: before, min: 1.0}
  - {check: fault_window, fault: "hang#3", min_affected_during: 1, max_failed_after: 0, max_stalled_after: 0}
"""


def test_a_repeated_sigstop_is_three_faults_each_lifted_after_its_duration(tmp_path):
    scenario = tmp_path / "flap.yaml"
    scenario.write_text(FLAP)
    art = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / "load.py"), "--headless",
                           "--ft-scenario", str(scenario), "--ft-artifacts", str(art), "-u", "6", "-r", "6"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    faults = summary["faults"]
    assert [f["name"] for f in faults] == ["hang#1", "hang#2", "hang#3"]
    assert all(f["status"] == "injected" and f["detail"]["signal"] == "SIGSTOP" for f in faults)
    starts = [f["injected_at"] for f in faults]
    assert all(3.5 < b - a < 5.5 for a, b in zip(starts, starts[1:])), starts
    assert all(1.4 < f["recovered_at"] - f["injected_at"] < 2.5 for f in faults), faults
    assert [r["reason"] for r in summary["rollbacks"]] == ["scheduled"] * 3 and all(r["ok"] for r in summary["rollbacks"])
    windows = [e["window"] for e in summary["per_fault"]]
    assert all(w["during"]["stalled"] >= 1 for w in windows), windows  # each hang held streams up
    table = (art / "results.txt").read_text()
    rows = [line.split()[0] for line in table.splitlines() if line.startswith("hang#")]
    assert rows == ["hang#1", "hang#2", "hang#3"] * 2  # a row in the results table, one in the window table
    journal = read_lines(str(art / "guardian.jsonl"))  # every SIGCONT was held, then released
    assert journal[-1]["reason"] == "closed"
