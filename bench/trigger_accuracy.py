"""How exact is the fault-aware run? Trigger overshoot and recovery figures vs ground truth.

    python bench/trigger_accuracy.py [--runs 3] [--users 25] [--n 100] [--workers 2]

Each run is the real thing: a Locust master + `--workers` Locust workers (distributed mode) drive
`--users` streaming clients at 1 request/s each (25 req/s by default) against the embedded
reference deployment; a scenario SIGKILLs worker-2 after `--n` finished requests. From the run's
artifacts it prints, per run and as medians:

- overshoot: requests that completed between the N-th completion and the injection (the
  master's count is exact; what slips through is what was in flight in the messages) — goal:
  at most the number of Locust workers at 25 req/s;
- T_f error: ftlocust's fault time vs the deployment's own log of the signal;
- server-recovery error: ftlocust's `server_recovery_s` (polled) vs the frontend's ground-truth
  `lease_expired` event for the killed worker — goal: median ≤ 100 ms.

It prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ftlocust.records import read_records  # noqa: E402
from tests.support.distributed import run_distributed  # noqa: E402

SCENARIO = """
name: bench-kill-after-n
target: {{kind: reference, workers: 2, migration_limit: 3, options: {{token_delay_s: 0.005, lease_ttl_s: 3}}}}
load: {{endpoint: completion-stream, requests_per_client: {per_client}, rate: 1}}
faults:
  - {{name: kill-worker-2, kind: process-signal, target: worker-2, signal: SIGKILL, trigger: {{after_requests: {n}}}}}
stop: {{health_poll_s: 0.05}}
"""


def one_run(folder: str, users: int, n: int, workers: int) -> dict:
    per_client = max(8, 2 * n // users + 4)
    scenario = os.path.join(folder, "scenario.yaml")
    with open(scenario, "w") as f:
        f.write(SCENARIO.format(n=n, per_client=per_client))
    art = os.path.join(folder, "run")
    run_distributed(os.path.join(ROOT, "locustfiles", "load.py"), ["-u", str(users), "-r", str(users), "--ft-artifacts", art],
                    ["--ft-scenario", scenario], workers=workers, timeout_s=600)
    with open(os.path.join(art, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(art, "deployment", "events.jsonl")) as f:
        events = [json.loads(line) for line in f if line.strip()]
    (fault,) = summary["faults"]
    t_f = fault["injected_at"]
    signalled = next(e["ts"] for e in events if e["event"] == "process_signalled")
    expired = next((e["ts"] for e in events if e["event"] == "lease_expired" and e.get("role") == "worker-2"), None)
    ends = sorted(r.end_wall for r in read_records(os.path.join(art, "requests.jsonl")))
    t_n = ends[n - 1]
    overshoot = sum(1 for t in ends if t_n < t <= t_f)
    server = summary["recovery"]["server_recovery_s"]
    truth = None if expired is None else expired - signalled
    return {
        "count_at_trigger": fault["detail"].get("finished_requests_at_trigger"),
        "overshoot": overshoot,
        "t_f_error_ms": (t_f - signalled) * 1000,
        "server_recovery_s": server,
        "truth_recovery_s": truth,
        "recovery_error_ms": None if server is None or truth is None else abs(server - truth) * 1000,
        "requests": len(ends),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--users", type=int, default=25)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    rows = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as folder:
            row = one_run(folder, args.users, args.n, args.workers)
        rows.append(row)
        print(f"run {i + 1}: " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)

    def median(key):
        values = [r[key] for r in rows if r[key] is not None]
        return statistics.median(values) if values else None

    print(f"\n{args.users} users × 1 req/s, {args.workers} Locust workers, trigger at N={args.n}, {args.runs} runs")
    print(f"overshoot (requests completed between the N-th and the injection): median {median('overshoot')}, "
          f"max {max(r['overshoot'] for r in rows)}  (goal ≤ {args.workers})")
    print(f"master's count when it fired: {sorted({r['count_at_trigger'] for r in rows})}")
    print(f"T_f vs the deployment's signal log: median {median('t_f_error_ms'):.2f} ms")
    err = median("recovery_error_ms")
    print(f"server recovery vs ground truth (lease expiry): median error "
          f"{'n/a' if err is None else f'{err:.0f} ms'}  (goal ≤ 100 ms)")


if __name__ == "__main__":
    main()
