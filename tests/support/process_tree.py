"""A process tree for tests: a parent this test starts, with children (and grandchildren)
whose argv[0] / comm carry fake process names, like vLLM's `VLLM::EngineCore`."""

import os
import signal
import subprocess
import sys

import pytest

# A parent that starts children (argv[0] = a fake name, the real python as the executable) and
# prints their pids once /proc shows their argv[0].
TREE = r"""
import ctypes, os, subprocess, sys, time
os.environ["PYTHONEXECUTABLE"] = sys.executable  # argv[0] no longer tells a child python where it is
# NAME (argv[0]), NAME>CHILDNAME (a grandchild), comm:NAME (prctl only), both:NAME (argv[0] + prctl)
spec = sys.argv[1:]
code = "import time; time.sleep(60)"
procs = []

def wait_for_argv0(pid, argv0):
    # Popen returns once the exec has begun; the kernel sets up the new command line a moment
    # later, and until then /proc/<pid>/cmdline reads empty. Bounded: 5 s.
    for _ in range(500):
        try:
            if open("/proc/%d/cmdline" % pid, "rb").read().split(b"\0")[0] == argv0.encode():
                return
        except OSError:
            pass
        time.sleep(0.01)
    sys.exit("pid %d never showed argv[0] %r" % (pid, argv0))

for item in spec:
    if item.startswith(("comm:", "both:")):
        how, name = item.split(":", 1)
        renamed = ("import ctypes, time; ctypes.CDLL(None).prctl(15, %r, 0, 0, 0); print('named', flush=True); "
                   "time.sleep(60)") % name.encode()[:15]
        p = subprocess.Popen([name if how == "both" else sys.executable, "-c", renamed], executable=sys.executable,
                             stdout=subprocess.PIPE)
        p.stdout.readline()
    elif ">" in item:
        middle, leaf = item.split(">")
        inner = ("import subprocess, sys, time; p = subprocess.Popen([%r, '-c', %r], executable=sys.executable); "
                 "print(p.pid, flush=True); time.sleep(60)") % (leaf, code)
        p = subprocess.Popen([middle, "-c", inner], executable=sys.executable, stdout=subprocess.PIPE)
        grandchild = int(p.stdout.readline())
        wait_for_argv0(grandchild, leaf)
        print("grandchild", grandchild, flush=True)
    else:
        p = subprocess.Popen([item, "-c", code], executable=sys.executable)
    if not item.startswith("comm:"):
        wait_for_argv0(p.pid, item.split(">")[0].removeprefix("both:"))
    procs.append(p)
    print("child", p.pid, flush=True)
print("ready", flush=True)
time.sleep(60)
"""


class Tree:
    def __init__(self, *spec):
        self.proc = subprocess.Popen([sys.executable, "-c", TREE, *spec], stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.children, self.grandchildren = [], []
        ready = False
        for line in self.proc.stdout:
            kind, _, pid = line.strip().partition(" ")
            if kind == "ready":
                ready = True
                break
            (self.children if kind == "child" else self.grandchildren).append(int(pid))
        assert ready and self.proc.poll() is None, f"the process tree {spec} did not start (its stderr says why)"
        self.pid = self.proc.pid

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session this test started, by its id
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


@pytest.fixture
def tree():
    """tree(*spec) -> Tree; each one is killed (its own session, by its id) at the end."""
    made = []

    def make(*spec):
        made.append(Tree(*spec))
        return made[-1]

    yield make
    for t in made:
        t.close()
