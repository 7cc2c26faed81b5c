"""The cancellation drill as a user runs it; every client cancel must be counted server-side."""
import json
import os
import subprocess
import sys

import pytest

from ftlocust.records import read_records

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cancellation_drill_counts_every_cancel_on_both_sides(tmp_path):
    art = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "locustfiles", "cancellation.py"), "--headless",
         "--ft-target-token-delay", "0.01", "--ft-artifacts", str(art)],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = read_records(str(art / "requests.jsonl"))
    assert len(records) == 4 * 5  # scenario load: 5 requests per client, one user per kind
    assert {r.outcome for r in records} == {"cancelled"}
    assert {r.cancel_policy for r in records} == {"after-ms:150", "after-chunks:5", "before-first-token"}
    summary = json.loads((art / "summary.json").read_text())
    verdicts = {c["name"]: c for c in summary["checks"]}
    counted = [c for name, c in verdicts.items() if name.startswith("cancellations_counted")]
    assert len(counted) == 3 and all(c["passed"] for c in counted), counted
    assert "clients cancelled 10, server counted 10" in " ".join(c["detail"] for c in counted)
    # The workers' count against their own logs: every cancel that reached a worker (named by the
    # frontend, received by a worker) has a "request cancellation received" line, and the verdict
    # counted exactly those.
    logs = {role: (art / "services" / role / f"{role}.log").read_text() for role in ("frontend", "worker-1", "worker-2")}
    cancelled = {line.split("request_id=")[1].split()[0] for line in logs["frontend"].splitlines()
                 if "route request cancelled" in line}
    received = {line.split("request_id=")[1].split()[0] for role in ("worker-1", "worker-2")
                for line in logs[role].splitlines() if "request received" in line}
    heard = sum(logs[role].count("request cancellation received") for role in ("worker-1", "worker-2"))
    assert len(cancelled) == 20 and heard == len(cancelled & received)
    (workers,) = [c for name, c in verdicts.items() if name.startswith("cancellations_counted[worker-*]")]
    assert f"{heard} of them 'request received'" in workers["detail"] and f"server counted {heard} " in workers["detail"]
