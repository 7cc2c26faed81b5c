"""Launcher: python -m ftlocust.targets.reference --workers 2 --port 8000 --run-dir DIR [...]

Starts the reference deployment, prints its base URL and PIDs, stays up until SIGINT/SIGTERM,
then stops every process it started. Bad input or a process that never gets ready: one line on
stderr naming the process and its log file, exit code 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from ftlocust.errors import ConfigError
from ftlocust.targets.reference.deployment import ReferenceDeployment


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ftlocust.targets.reference",
        description="Run the ftlocust reference deployment (frontend + workers) on 127.0.0.1.",
    )
    p.add_argument("--run-dir", required=True, help="folder for logs/, pids/, addr/ and events.jsonl")
    p.add_argument("--workers", type=int, default=2, help="workers (decode workers with --disagg)")
    p.add_argument("--port", type=int, default=8000, help="frontend port (0 = OS-assigned)")
    p.add_argument("--migration-limit", type=int, default=3, help="0 disables migration")
    p.add_argument("--disagg", action="store_true", help="prefill + decode workers")
    p.add_argument("--prefill-workers", type=int, default=1, help="prefill workers with --disagg")
    p.add_argument("--model", default="ftlocust-ref")
    p.add_argument("--token-delay-s", type=float, default=0.02, help="inter-token latency")
    p.add_argument("--prefill-base-s", type=float, default=0.005)
    p.add_argument("--prefill-per-token-s", type=float, default=0.0001, help="prefill time per prompt token")
    p.add_argument("--kv-capacity", type=int, default=65536, help="KV tokens per worker")
    p.add_argument("--busy-threshold", type=float, default=0.0,
                   help="503 when every worker's KV load >= this fraction of capacity (0 = never)")
    p.add_argument("--rejection-status", type=int, choices=(503, 529), default=503,
                   help="status of a rejection: 503 (Dynamo's docs) or 529 (Dynamo 1.6.1 as measured)")
    p.add_argument("--context-length", type=int, default=8192)
    p.add_argument("--lease-ttl-s", type=float, default=10.0)
    p.add_argument("--drain-timeout-s", type=float, default=10.0, help="worker drain on SIGTERM")
    p.add_argument("--frontend-drain-timeout-s", type=float, default=5.0)
    p.add_argument("--inhibit-s", type=float, default=5.0, help="skip a worker that refused a connection")
    p.add_argument("--engine-core", default=None, metavar="NAME",
                   help="each worker runs a child named NAME (e.g. VLLM::EngineCore) and exits 1 when it dies")
    p.add_argument("--kernel-log", action="store_true",
                   help="workers watch RUN_DIR/kernel.log for XID lines naming their GPU (exit 1 on one)")
    p.add_argument("--asleep", action="append", default=None, metavar="ROLE",
                   help="start this worker asleep (registered, not serving); repeatable")
    p.add_argument("--startup-timeout-s", type=float, default=60.0)
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop_requested = []

    def on_signal(signum, frame):
        stop_requested.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        dep = ReferenceDeployment(
            args.run_dir, workers=args.workers, port=args.port, migration_limit=args.migration_limit,
            disagg=args.disagg, prefill_workers=args.prefill_workers, model=args.model,
            token_delay_s=args.token_delay_s, prefill_base_s=args.prefill_base_s,
            prefill_per_token_s=args.prefill_per_token_s, kv_capacity=args.kv_capacity,
            busy_threshold=args.busy_threshold, rejection_status=args.rejection_status,
            context_length=args.context_length, lease_ttl_s=args.lease_ttl_s,
            drain_timeout_s=args.drain_timeout_s, frontend_drain_timeout_s=args.frontend_drain_timeout_s,
            inhibit_s=args.inhibit_s, engine_core=args.engine_core, startup_timeout_s=args.startup_timeout_s,
            kernel_log=args.kernel_log, asleep=args.asleep,
            log_level=args.log_level,
        )
        dep.start()
    except ConfigError as e:
        print(f"ftlocust reference: {e}", file=sys.stderr)
        return 2
    print(f"reference deployment up in {dep.startup_s:.2f} s: {dep.base_url} (model {dep.model})", flush=True)
    for role in dep.roles():
        print(f"  {role:<10} pid {dep.group.pid(role):<8} log {dep.log_path(role)}", flush=True)
    print(f"  events     {dep.events_path}", flush=True)
    print("Ctrl-C (SIGINT) or SIGTERM stops every process above.", flush=True)
    try:
        while not stop_requested:
            # Ground truth for drills: a process that exits on its own (or is killed) is recorded.
            for role in dep.roles():
                code = dep.record_exit(role)
                if code is not None:
                    print(f"  {role} (pid {dep.group.pid(role)}) exited with code {code}", flush=True)
            time.sleep(0.2)
    finally:
        print("stopping ...", flush=True)
        dep.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
