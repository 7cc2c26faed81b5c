"""A lost load generator is reported: SIGKILL one of two Locust workers mid-run; the master
names it (index, when, requests in flight, budget never sent) and the run fails (exit 3)."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from ftlocust.records import read_records
from tests.support.distributed import free_port

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOCUSTFILE = os.path.join(ROOT, "locustfiles", "load.py")
USERS, BUDGET = 6, 30
SCENARIO = f"""
name: lost-worker
target: {{kind: reference, workers: 1, options: {{token_delay_s: 0.005}}}}
load: {{endpoint: completion-stream, requests_per_client: {BUDGET}, rate: 2, output_tokens: 50}}
"""


def _lines(path):
    try:
        with open(path) as f:
            return f.read().count("\n")
    except OSError:
        return 0


def test_sigkilled_worker_is_named_and_fails_the_run(tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(SCENARIO)
    art = tmp_path / "run"
    port = free_port()
    base = [sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--ft-scenario", str(scenario)]
    master = subprocess.Popen(base + ["--headless", "--master", "--expect-workers", "2", "--master-bind-host",
                                      "127.0.0.1", "--master-bind-port", str(port), "-u", str(USERS), "-r",
                                      str(USERS), "--ft-artifacts", str(art)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workers = [subprocess.Popen(base + ["--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    started = time.time()
    try:
        log = art / "requests.jsonl"
        deadline = time.time() + 40
        while time.time() < deadline and _lines(log) < 30 and master.poll() is None:
            time.sleep(0.1)
        if _lines(log) < 30:
            master.kill()
            pytest.fail("the load never got going: " + master.communicate()[0][-3000:])
        killed_at = time.time()
        os.kill(workers[1].pid, signal.SIGKILL)
        out, _ = master.communicate(timeout=50)
        codes = [w.wait(timeout=20) for w in workers]
    finally:
        for p in [master, *workers]:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert time.time() - started < 60
    assert codes[1] == -signal.SIGKILL and codes[0] == 0
    assert master.returncode == 3, out[-3000:]

    summary = json.loads((art / "summary.json").read_text())
    assert summary["passed"] is False
    (lost,) = [c for c in summary["checks"] if c["name"] == "no load generator lost"]
    assert lost["passed"] is False
    m = re.search(r"(worker-\d+) lost at \S+ with (\d+) request\(s\) in flight and (\d+) of its budget unsent",
                  lost["detail"])
    assert m, lost["detail"]
    name, in_flight, unsent = m.group(1), int(m.group(2)), int(m.group(3))
    records = read_records(str(art / "requests.jsonl"))
    by_worker = {}
    for r in records:
        by_worker.setdefault(r.locust_worker, []).append(r)
    assert set(by_worker) == {"worker-0", "worker-1"}
    # the named worker is the one killed: its requests stop at the kill, the other's go on
    (other,) = set(by_worker) - {name}
    assert max(r.end_wall for r in by_worker[name]) <= killed_at + 0.5
    assert max(r.end_wall for r in by_worker[other]) > killed_at + 1
    # plausible numbers: each user of the lost worker had at most one request in flight; what it
    # never sent is what its users' budgets left after what it started
    users_there = len({r.client_id for r in by_worker[name]})
    assert 0 <= in_flight <= users_there and unsent > 0
    assert len(by_worker[name]) + in_flight + unsent == users_there * BUDGET
    assert len(by_worker[other]) == (USERS - users_there) * BUDGET  # the survivor spent its budget
    # when: the heartbeat went missing a few seconds after the kill; last heard from before it
    text = (art / "test.log").read_text()
    m = re.search(rf"load generator {name} lost \(missing\) at ([\d.]+), last heard from at ([\d.]+)", text)
    assert m, text[-2000:]
    lost_at, last_seen = float(m.group(1)), float(m.group(2))
    assert killed_at - 3 < last_seen <= killed_at + 0.1
    assert killed_at + 2 < lost_at < killed_at + 10
    # a run without faults names no request with a phase at all: nothing is counted as misnamed
    assert summary["extra"]["misnamed_in_locust"] == 0
