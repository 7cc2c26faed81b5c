"""The count trigger: fires exactly once, when the (master's) count of finished requests reaches
exactly N — in one process and with 2 Locust workers — and no request is mis-classified against
the reference deployment's ground truth (its own log of when the signal was sent)."""
import json
import os
import subprocess
import sys

import pytest

from ftlocust.phases import phase_of
from ftlocust.records import read_records
from tests.support.distributed import run_distributed

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOCUSTFILE = os.path.join(ROOT, "locustfiles", "load.py")
N = 25
SCENARIO = f"""
name: kill-after-n
target: {{kind: reference, workers: 2, migration_limit: 3, options: {{token_delay_s: 0.005}}}}
load: {{endpoint: completion-stream, requests_per_client: 6, rate: 2}}
faults:
  - {{name: kill-worker-2, kind: process-signal, target: worker-2, signal: SIGKILL, trigger: {{after_requests: {N}}}}}
checks:
  - {{check: no_failures, phase: all}}
"""


def _ground_truth_fault_time(art):
    with open(art / "deployment" / "events.jsonl") as f:
        events = [json.loads(line) for line in f if line.strip()]
    (signalled,) = [e for e in events if e["event"] == "process_signalled"]
    assert signalled["role"] == "worker-2" and signalled["signal"] == "SIGKILL"
    return signalled["ts"]


def _assert_fired_once_at_n_and_classified_right(art, output):
    summary = json.loads((art / "summary.json").read_text())
    (fault,) = summary["faults"]
    assert fault["detail"]["finished_requests_at_trigger"] == N
    assert output.count("injected SIGKILL") == 1
    truth = _ground_truth_fault_time(art)
    assert abs(truth - fault["injected_at"]) < 0.05
    records = read_records(str(art / "requests.jsonl"))
    assert len(records) == 60
    # Both times are read after the kill (the deployment's, then the injector's): a request that
    # started or ended between them is on either side within what the clock can tell.
    unsure = (min(truth, fault["injected_at"]), max(truth, fault["injected_at"]))
    wrong = [r for r in records if r.phase != phase_of(r.start_wall, r.end_wall, truth)
             and not any(unsure[0] <= t <= unsure[1] for t in (r.start_wall, r.end_wall))]
    assert not wrong, [(r.request_id, r.phase, r.start_wall - truth, r.end_wall - truth) for r in wrong]
    assert sum(1 for r in records if r.end_wall <= fault["injected_at"]) >= N
    assert summary["passed"]


def test_count_trigger_in_one_process(tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(SCENARIO)
    art = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--headless", "--ft-scenario",
                           str(scenario), "--ft-artifacts", str(art)], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_fired_once_at_n_and_classified_right(art, proc.stdout + proc.stderr)


@pytest.mark.parametrize("repeat", [1, 2])
def test_count_trigger_with_two_locust_workers(tmp_path, repeat):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(SCENARIO)
    art = tmp_path / "run"
    code, out, _ = run_distributed(LOCUSTFILE, ["--ft-artifacts", str(art)], ["--ft-scenario", str(scenario)],
                                   timeout_s=180)
    assert code == 0, out[-3000:]
    _assert_fired_once_at_n_and_classified_right(art, out)
    assert len({r.locust_worker for r in read_records(str(art / "requests.jsonl"))}) == 2
