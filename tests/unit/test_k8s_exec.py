"""The shell scripts ftlocust sends into containers, run by this machine's `sh` (the fake API
server only recognises them, so this is where they are shown to work)."""

import subprocess
import sys

from ftlocust.k8s.exec import NOT_THAT_PROCESS, PROCESS_LIST, kill_command
from tests.support.procfs import gone, start_time, wait


def _sleeper(argv0: str = "sleeper") -> subprocess.Popen:
    return subprocess.Popen([argv0, "-c", "import time; time.sleep(60)"], executable=sys.executable)


def test_process_list_gives_pid_start_time_comm_and_argv0():
    p = _sleeper("VLLM::EngineCore")
    try:
        out = subprocess.run(["sh", "-c", PROCESS_LIST], capture_output=True, text=True, timeout=30).stdout
        (line,) = [line for line in out.splitlines() if line.startswith(f"{p.pid}\t")]
        with open(f"/proc/{p.pid}/comm") as f:
            comm = f.read().strip()
        assert line.split("\t") == [str(p.pid), str(start_time(p.pid)), comm, "VLLM::EngineCore"]
    finally:
        p.kill()
        p.wait(10)


def test_kill_with_a_start_time_signals_only_that_process():
    p = _sleeper()
    try:
        start = start_time(p.pid)
        wrong = subprocess.run(kill_command(p.pid, "SIGTERM", start + 1), timeout=30)
        assert wrong.returncode == NOT_THAT_PROCESS and p.poll() is None
        right = subprocess.run(kill_command(p.pid, "SIGTERM", start), timeout=30)
        assert right.returncode == 0 and p.wait(10) == -15
        assert wait(lambda: gone(p.pid), 5)
        again = subprocess.run(kill_command(p.pid, "SIGTERM", start), capture_output=True, timeout=30)
        assert again.returncode == NOT_THAT_PROCESS and again.stderr == b""  # gone: nothing sent, nothing said
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def test_kill_without_a_start_time_is_plain_kill():
    assert kill_command(7, "KILL") == ["sh", "-c", "kill -s KILL 7"]
