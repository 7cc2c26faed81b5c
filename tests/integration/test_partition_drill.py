"""The partition drill as a user runs it: each role of the reference deployment in its own
network namespace, worker-1 cut off from the frontend for 6 s, then lifted.

    locust -f locustfiles/load.py --headless --ft-scenario configs/scenarios/partition.yaml -u 8 -r 8

What the clients saw is checked against the fault's own window (streams stalled while it was
up, nothing failed or stalled after it) and the namespaces are gone afterwards — also when
ftlocust is SIGKILLed in the middle of the partition (the guardian deletes them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftlocust.guardian import read_lines
from ftlocust.jsonl import read_jsonl
from tests.integration.test_guardian_drills import KilledDrill
from tests.support.netns import needs_netns
from tests.support.procfs import wait as _wait

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "configs" / "scenarios" / "partition.yaml"


pytestmark = [pytest.mark.integration, needs_netns]


def _run(art: Path, *extra: str, scenario: Path = SCENARIO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / "load.py"), "--headless",
                           "--ft-scenario", str(scenario), "--ft-artifacts", str(art), "-u", "8", "-r", "8", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)


def _lab(art: Path) -> dict:
    (created,) = [e for e in read_jsonl(art / "deployment" / "events.jsonl") if e["event"] == "network_created"]
    return created


def _namespaces_left(names) -> list[str]:
    return [n for n in names if os.path.exists(f"/run/netns/{n}")]


def _routes_to(subnet: str) -> list[str]:
    out = subprocess.run(["ip", "-4", "route", "show", subnet], capture_output=True, text=True, timeout=30).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_partition_drill_stalls_streams_inside_the_window_and_nothing_after_it(tmp_path):
    art = tmp_path / "run"
    proc = _run(art)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    (entry,) = summary["per_fault"]
    fault, w = entry["fault"], entry["window"]
    assert fault["status"] == "injected" and fault["detail"]["partition"] == "frontend_worker"
    assert len(fault["detail"]["rules"]) == 2 and fault["detail"]["mode"] == "drop"
    assert 5.5 < w["in_effect_s"] < 7.5
    assert w["during"]["stalled"] + w["during"]["failed"] >= 1  # the partition did something
    assert w["after_end"]["failed"] == 0 and w["after_end"]["stalled"] == 0 and w["after_end"]["success"] > 0
    results = (art / "results.txt").read_text()
    assert "In Effect" in results and "cut-worker-1" in results
    lab = _lab(art)
    assert not _namespaces_left(lab["namespaces"]) and not _routes_to(lab["subnet"])
    rollback = summary["rollbacks"][0]
    assert rollback["ok"] and rollback["reason"] == "scheduled" and "2 rule(s) deleted" in rollback["action"]
    journal = read_lines(str(art / "guardian.jsonl"))
    assert journal[-1]["reason"] == "closed" and not [e for e in journal if e["event"] == "lifted"]


def test_a_partition_that_cuts_no_traffic_fails_its_window_check(tmp_path):
    """worker↔worker traffic does not exist in an aggregated deployment: the partition goes in
    and out, nothing is affected, and the drill must not pass."""
    scenario = tmp_path / "ww.yaml"
    scenario.write_text(SCENARIO.read_text().replace("partition: frontend_worker", "partition: worker_worker"))
    art = tmp_path / "run"
    proc = _run(art, scenario=scenario)
    assert proc.returncode == 3, proc.stdout[-3000:]
    verdicts = {c["name"]: c for c in json.loads((art / "summary.json").read_text())["checks"]}
    failed = verdicts["fault_window[cut-worker-1]"]
    assert not failed["passed"] and "affected during it (need >= 1)" in failed["detail"]
    assert not _namespaces_left(_lab(art)["namespaces"])


def test_sigkill_of_ftlocust_during_a_partition_lifts_it_within_2_s(tmp_path):
    scenario = tmp_path / "long.yaml"  # no end of its own: only a rollback lifts it
    scenario.write_text(SCENARIO.read_text().replace("    duration_s: 6\n", "").replace("recovery_window_s: 16",
                                                                                          "recovery_window_s: 60"))
    drill = KilledDrill(["-f", str(ROOT / "locustfiles" / "load.py"), "--ft-scenario", str(scenario), "-u", "4", "-r", "4"],
                        tmp_path / "run", lambda art: (art / "test.log").exists() and "in effect" in (art / "test.log").read_text())
    try:
        lab = _lab(tmp_path / "run")
        assert _wait(lambda: not _namespaces_left(lab["namespaces"]), 5)
        took = time.monotonic() - drill.killed_at
        assert took < 2.0, f"the namespaces were deleted {took:.2f} s after ftlocust died"
        journal = drill.journal()
        lifted = [e for e in journal if e["event"] == "lifted"]
        assert lifted[0]["kind"] == "rules-delete" and "lifted" in lifted[0]["what"]
        assert any(e["kind"] == "netns-delete" and e["what"] for e in lifted)
        assert _wait(lambda: not drill.left(), 15), f"left running: {drill.left()}"
        assert _wait(lambda: not _routes_to(lab["subnet"]), 10)
    finally:
        drill.cleanup()


def test_without_cap_net_admin_the_drill_stops_before_load_in_one_line(tmp_path):
    art = tmp_path / "run"
    proc = subprocess.run(["setpriv", "--bounding-set", "-net_admin", sys.executable, "-m", "locust", "-f",
                           str(ROOT / "locustfiles" / "load.py"), "--headless", "--ft-scenario", str(SCENARIO),
                           "--ft-artifacts", str(art)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("ftlocust:")]
    assert "network namespaces need root with CAP_NET_ADMIN" in line
    assert "Traceback" not in proc.stderr
    assert not (art / "requests.jsonl").exists() or not (art / "requests.jsonl").read_text()


WORKER_NATS = """
name: partition-worker-registry
target: {kind: reference, workers: 2, options: {network: netns, token_delay_s: 0.02, lease_ttl_s: 2}}
load: {endpoint: completion-stream, rate: 2, input_tokens: 20, output_tokens: 20, requests_per_client: 1000}
faults:
  - {name: cut-leases-1, kind: partition, target: worker-1, partition: worker_nats, duration_s: 6,
     trigger: {after_seconds: 4}}
stop: {recovery_window_s: 10}
checks:
  - {check: no_failures, phase: all}
"""


def _received_at(log: Path) -> list[float]:
    """When the worker's log says it received each request (its own ISO-8601 UTC stamps)."""
    from datetime import datetime, timezone

    out = []
    for line in log.read_text().splitlines():
        if "request received request_id=" in line:
            stamp = line.split()[0].rstrip("Z")
            out.append(datetime.fromisoformat(stamp).replace(tzinfo=timezone.utc).timestamp())
    return out


def test_worker_nats_partition_routes_new_requests_away_once_the_lease_expires(tmp_path):
    """Only worker-1's lease renewals are cut: its streams go on (nothing fails), the frontend
    drops it when the lease runs out and sends it nothing until it registers again after the
    partition is lifted."""
    scenario = tmp_path / "nats.yaml"
    scenario.write_text(WORKER_NATS)
    art = tmp_path / "run"
    proc = _run(art, scenario=scenario)
    assert proc.returncode == 0, proc.stdout[-3000:]
    fault = json.loads((art / "summary.json").read_text())["faults"][0]
    t_f, lifted = fault["injected_at"], fault["recovered_at"]
    events = read_jsonl(art / "deployment" / "events.jsonl")
    expired = [e["ts"] for e in events if e["event"] == "lease_expired" and e["role"] == "worker-1"]
    back = [e["ts"] for e in events if e["event"] == "worker_registered" and e["role"] == "worker-1" and e["ts"] > t_f]
    assert len(expired) == 1 and t_f + 1.5 < expired[0] < lifted, (t_f, expired, lifted)
    assert back and lifted <= back[0] < lifted + 3
    received = _received_at(art / "deployment" / "logs" / "worker-1.log")
    assert [t for t in received if t_f < t < expired[0]], "worker-1 served nothing before its lease ran out"
    assert not [t for t in received if expired[0] + 0.05 < t < back[0]], "routed to worker-1 while it was not listed"
    assert [t for t in received if t > back[0]], "worker-1 got no request after it registered again"
