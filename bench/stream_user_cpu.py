"""Requests per Locust CPU-second: ftlocust's streaming user vs a plain FastHttpUser.

    python bench/stream_user_cpu.py [--seconds 10] [--users 50] [--rate 10] [--tokens 20] [--rounds 3]

Both read the same SSE stream from tests/support/stream_server.py (chat-stream, no token delay)
in their own headless Locust run, taking turns; the Locust process's user+system CPU time comes
from psutil over the steady window (after the ramp-up, before the end), the requests in that
window from the server's own log.
Both send at the same paced rate (users × --rate requests per second, below what the server
can serve), so CPU per request is compared at equal throughput; `--rate 0` saturates instead
(noisier: then the server is the bottleneck and batching effects differ between runs).

The plain user is what one writes by hand following shared/reference/locust-facts.md: readline,
json.loads per event, TTFT at the first content, one Locust event with the end-to-end time. The
ftlocust user (`ftlocust.users.LLMUser`, no hooks, so no request log) also builds a record, ITL
statistics, the timeout/cancel watchdog and, by default, a TTFT row — measured both with and
without those rows. Prints the ratios; the goal is ftlocust ≥ 0.9× the plain user.
It prints numbers and asserts nothing. The server and Locust are pinned to different CPUs
when the machine has at least two.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support.stream_server import StreamServer  # noqa: E402

WARMUP_S = 2.5  # ramp-up (all users in 1 s) and first requests: not measured

PLAIN = '''
import json, time
from locust import FastHttpUser, constant, constant_throughput, task

HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream", "Accept-Encoding": "identity"}

class PlainStreamUser(FastHttpUser):
    wait_time = constant_throughput(RATE) if RATE else constant(0)

    @task
    def chat_stream(self):
        body = json.dumps({"model": "test-model", "messages": [{"role": "user", "content": "hello " * 100}],
                           "max_tokens": MAX_TOKENS, "ignore_eos": True, "stream": True,
                           "stream_options": {"include_usage": True}})
        t0 = time.perf_counter()
        with self.client.post("/v1/chat/completions", data=body, headers=HEADERS, stream=True,
                              catch_response=True, name="chat-stream") as resp:
            ghc = resp._response
            if ghc is None:
                resp.failure("no response")
                return
            n, done, ttft = 0, False, None
            while True:
                line = ghc.readline(b"\\n")
                if not line:
                    break
                if line.startswith(b"data:"):
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        continue
                    obj = json.loads(data)
                    choices = obj.get("choices")
                    if choices and (choices[0].get("delta") or {}).get("content"):
                        n += 1
                        if ttft is None:
                            ttft = time.perf_counter() - t0
            resp.request_meta["response_time"] = (time.perf_counter() - t0) * 1000
            resp.request_meta["response_length"] = n
            if done:
                resp.success()
            else:
                resp.failure("stream ended without [DONE]")
'''

FTLOCUST = '''
from ftlocust.users import LLMUser

class FtStreamUser(LLMUser):
    kind = "chat-stream"
'''


def run_locust(locustfile: str, server: StreamServer, users: int, seconds: int, extra: list[str],
               cpu: int | None) -> dict:
    """One headless run; CPU and requests are taken over the steady window only (after the
    ramp-up, before the end), so start-up and import costs do not blur the comparison."""
    import psutil

    urllib.request.urlopen(urllib.request.Request(server.url + "/reset", method="POST"), timeout=10).read()
    cmd = [sys.executable, "-m", "locust", "-f", locustfile, "--headless", "--host", server.url, "-u", str(users),
           "-r", str(users), "-t", f"{seconds}s", "--loglevel", "WARNING", "--only-summary", *extra]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("LOCUST_SKIP_MONKEY_PATCH", None)
    preexec = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec, stdin=subprocess.DEVNULL)
    ps = psutil.Process(proc.pid)
    started = time.monotonic()
    time.sleep(WARMUP_S)
    c0, w0 = ps.cpu_times(), time.time()
    time.sleep(max(1.0, seconds - WARMUP_S - 1.0))
    c1, w1 = ps.cpu_times(), time.time()
    _, err = proc.communicate(timeout=seconds + 60)
    if proc.returncode not in (0, 1) or time.monotonic() - started < seconds:
        raise SystemExit(f"locust run failed (exit {proc.returncode}): {err[-1500:]}")
    cpu_s = (c1.user - c0.user) + (c1.system - c0.system)
    log = server.stats()["log"]
    window = [e for e in log if w0 <= e["t_start"] < w1]
    failures = sum(1 for e in log if not e["completed"])
    requests = len(window)
    return {"requests": requests, "failures": failures, "cpu_s": cpu_s, "per_cpu_s": requests / cpu_s if cpu_s else 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--rate", type=float, default=10.0, help="requests per second per user; 0 = no pacing")
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, locust_cpu = (cpus[1], cpus[0]) if len(cpus) >= 2 else (None, None)
    with tempfile.TemporaryDirectory() as tmp:
        plain_file = os.path.join(tmp, "plain_locustfile.py")
        ft_file = os.path.join(tmp, "ftlocust_locustfile.py")
        with open(plain_file, "w") as f:
            f.write(PLAIN.replace("MAX_TOKENS", str(args.tokens)).replace("RATE", repr(args.rate)))
        with open(ft_file, "w") as f:
            f.write(FTLOCUST)
        ft_flags = ["--ft-rate", str(args.rate or 1000000), "--ft-requests-per-client", "0", "--ft-output-tokens", str(args.tokens),
                    "--ft-model", "test-model"]
        variants = {
            "plain FastHttpUser": (plain_file, []),
            "ftlocust LLMUser": (ft_file, ft_flags),
            "ftlocust LLMUser --ft-no-ttft-rows": (ft_file, [*ft_flags, "--ft-no-ttft-rows"]),
        }
        results: dict[str, list[dict]] = {name: [] for name in variants}
        with StreamServer("--token-delay", "0", max_seconds=args.rounds * len(variants) * (args.seconds + 30)) as server:
            if server_cpu is not None:
                os.sched_setaffinity(server.proc.pid, {server_cpu})
            for _ in range(args.rounds):
                for name, (locustfile, extra) in variants.items():
                    r = run_locust(locustfile, server, args.users, args.seconds, extra, locust_cpu)
                    results[name].append(r)
                    print(f"{name:38s} {r['requests']:7d} req  {r['failures']:4d} unfinished  {r['cpu_s']:6.2f} CPU-s  "
                          f"{r['per_cpu_s']:8.1f} req/CPU-s", flush=True)

    median = {name: statistics.median(r["per_cpu_s"] for r in rs) for name, rs in results.items()}
    base = median["plain FastHttpUser"]
    print()
    pace = f"{args.rate:g} req/s per user" if args.rate else "no pacing"
    print(f"median requests per Locust CPU-second over {args.rounds} round(s), {args.users} users, {pace}, "
          f"{args.tokens} tokens per stream:")
    for name, value in median.items():
        print(f"  {name:38s} {value:8.1f}  ratio {value / base if base else float('nan'):.2f}x")
    print(f"goal: ftlocust >= 0.90x the plain user")


if __name__ == "__main__":
    main()
