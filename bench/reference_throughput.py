"""How many concurrent 20 tok/s streams the reference deployment sustains before TTFT doubles.

Starts a ReferenceDeployment (2 workers by default), then ramps the number of concurrent
closed-loop streaming clients (each request: max_tokens tokens at 1/token_delay tok/s). At each
level it prints the aggregate tokens/s reached against the target, TTFT and inter-token
percentiles relative to the unloaded level, errors, and CPU used by the deployment's processes
(frontend, all workers together) and by this client, in % of one core. It stops after the first level whose median TTFT is more than twice the
baseline's, and reports the highest aggregate tokens/s sustained before that.

The client is aiohttp in this process (one event loop): it competes for the same cores as the
deployment, as the Locust driver does in a real drill.

    python bench/reference_throughput.py [--levels 1,25,50,100,150,200,300] [--step-s 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiohttp  # noqa: E402

from ftlocust.targets.reference import ReferenceDeployment  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except (OSError, IndexError, ValueError):
        return 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Level:
    def __init__(self):
        self.ttft: list[float] = []
        self.itl: list[float] = []
        self.tokens = 0
        self.errors = 0
        self.requests = 0


async def one_stream(session, url, body, stats: Level, window: tuple[float, float], stop_at: float) -> None:
    """Closed loop: one request after the other until stop_at."""
    loop = asyncio.get_running_loop()
    while loop.time() < stop_at:
        t0 = loop.time()
        measured = window[0] <= t0 < window[1]
        first = None
        last = None
        try:
            async with session.post(url, json=body) as resp:
                if resp.status != 200:
                    await resp.read()
                    if measured:
                        stats.errors += 1
                    await asyncio.sleep(0.1)
                    continue
                ok = False
                async for line in resp.content:
                    if line.startswith(b"data: {\"id\""):
                        now = loop.time()
                        if first is None:
                            first = now
                            if measured:
                                stats.ttft.append(now - t0)
                        elif measured:
                            stats.itl.append(now - last)
                        last = now
                        if window[0] <= now < window[1]:
                            stats.tokens += 1
                    elif line.startswith(b"data: [DONE]"):
                        ok = True
                    elif line.startswith(b"data: {\"error\""):
                        ok = False
                if measured:
                    stats.requests += 1
                    if not ok:
                        stats.errors += 1
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            if measured:
                stats.errors += 1
            await asyncio.sleep(0.1)


async def run_level(base_url, model, concurrency, args) -> Level:
    stats = Level()
    loop = asyncio.get_running_loop()
    start = loop.time()
    ramp = min(1.0, args.max_tokens * args.token_delay_s)  # spread the starts: no thundering herd
    window = (start + ramp + args.warmup_s, start + ramp + args.warmup_s + args.step_s)
    body = {"model": model, "prompt": " ".join(["word"] * args.prompt_tokens), "max_tokens": args.max_tokens,
            "stream": True}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def delayed(i):
            await asyncio.sleep(ramp * i / concurrency)
            await one_stream(session, base_url + "/v1/completions", body, stats, window, window[1])

        await asyncio.gather(*(delayed(i) for i in range(concurrency)))
    return stats


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--levels", default="1,25,50,100,150,200,300,400,600,800")
    p.add_argument("--step-s", type=float, default=8.0, help="measured seconds per level")
    p.add_argument("--warmup-s", type=float, default=1.0)
    p.add_argument("--token-delay-s", type=float, default=0.05, help="0.05 = 20 tokens/s per stream")
    p.add_argument("--max-tokens", type=int, default=40)
    p.add_argument("--prompt-tokens", type=int, default=100)
    p.add_argument("--prefill-base-s", type=float, default=0.02, help="unloaded TTFT is about this")
    p.add_argument("--run-dir", default=None)
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="ftlocust-bench-")
    per_stream = 1 / args.token_delay_s
    print(f"reference deployment: {args.workers} workers, {per_stream:g} tok/s per stream, "
          f"max_tokens {args.max_tokens}, prompt {args.prompt_tokens} tokens, prefill base {args.prefill_base_s} s; "
          f"{os.cpu_count()} CPUs; run dir {run_dir}")
    with ReferenceDeployment(run_dir, workers=args.workers, token_delay_s=args.token_delay_s,
                             prefill_base_s=args.prefill_base_s, kv_capacity=10**9) as dep:
        fe_pid = dep.group.pid(dep.frontend_role)
        worker_pids = [dep.group.pid(r) for r in dep.worker_roles()]
        print(f"startup {dep.startup_s:.2f} s\n")
        header = (f"{'streams':>7} {'target':>8} {'tok/s':>8} {'ratio':>6} {'TTFT p50':>9} {'p90':>7} {'xbase':>6} "
                  f"{'ITL p50':>8} {'p99':>7} {'err':>4} {'frontend':>9} {'workers':>8} {'client':>7}")
        print(header)
        print("-" * len(header))
        baseline = None
        best = None
        for c in levels:
            fe0 = cpu_seconds(fe_pid)
            w0 = sum(cpu_seconds(pid) for pid in worker_pids)
            self0 = sum(os.times()[:2])
            t0 = time.monotonic()
            stats = asyncio.run(run_level(dep.base_url, dep.model, c, args))
            wall = time.monotonic() - t0
            fe_cpu = (cpu_seconds(fe_pid) - fe0) / wall
            w_cpu = (sum(cpu_seconds(pid) for pid in worker_pids) - w0) / wall
            own_cpu = (sum(os.times()[:2]) - self0) / wall
            rate = stats.tokens / args.step_s
            target = c * per_stream
            ttft50 = statistics.median(stats.ttft) if stats.ttft else float("nan")
            if baseline is None:
                baseline = ttft50
            ratio_ttft = ttft50 / baseline
            print(f"{c:>7} {target:>8.0f} {rate:>8.0f} {rate / target:>6.2f} {ttft50 * 1000:>7.1f}ms "
                  f"{pct(stats.ttft, 0.9) * 1000:>5.1f}ms {ratio_ttft:>6.2f} {pct(stats.itl, 0.5) * 1000:>6.1f}ms "
                  f"{pct(stats.itl, 0.99) * 1000:>5.0f}ms {stats.errors:>4} {fe_cpu * 100:>8.0f}% {w_cpu * 100:>7.0f}% "
                  f"{own_cpu * 100:>6.0f}%",
                  flush=True)
            if ratio_ttft > 2 or stats.errors:
                print(f"\nTTFT median doubled (x{ratio_ttft:.2f}) at {c} streams" if ratio_ttft > 2
                      else f"\nerrors at {c} streams")
                break
            best = (c, rate)
        if best:
            print(f"\nhighest aggregate sustained before TTFT doubled: {best[1]:.0f} tokens/s "
                  f"({best[0]} streams x {per_stream:g} tok/s, {args.workers} workers)")
        else:
            print("\nno level sustained")
    return 0


if __name__ == "__main__":
    sys.exit(main())
