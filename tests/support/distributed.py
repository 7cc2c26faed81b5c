"""Run a locustfile in Locust's distributed mode on 127.0.0.1: one headless master + N workers."""
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed(locustfile: str, master_args: list[str], common_args: list[str] = (), workers: int = 2,
                    timeout_s: float = 240) -> tuple[int, str, list[int]]:
    """(master exit code, master output, worker exit codes). Ends every process it started."""
    port = free_port()
    base = [sys.executable, "-m", "locust", "-f", locustfile, *common_args]
    master = subprocess.Popen(base + ["--headless", "--master", "--expect-workers", str(workers), "--master-bind-host",
                                      "127.0.0.1", "--master-bind-port", str(port), *master_args],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs = [subprocess.Popen(base + ["--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
    try:
        out, _ = master.communicate(timeout=timeout_s)
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        for p in [master, *procs]:
            if p.poll() is None:
                p.kill()
                p.wait()
    return master.returncode, out, codes
