"""A stand-in driver for the guardian tests: starts a guardian, a process group (a sleeper with
a child of its own) held by `stop-process`, SIGSTOPs the sleeper with a held SIGCONT, prints
{"sleeper", "child", "guardian"} as one JSON line, then does what --then says and sleeps.

    python -m tests.support.guardian_driver OUT_DIR [--then release|close|close-held|exit]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from ftlocust.guardian import Guardian, process_action

CHILD = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(120)"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out_dir")
    p.add_argument("--then", default="sleep", choices=("sleep", "release", "close", "close-held", "exit"))
    args = p.parse_args()
    g = Guardian.start(args.out_dir)
    sleeper = subprocess.Popen([sys.executable, "-c", CHILD], start_new_session=True)
    group = g.hold(process_action("stop-process", sleeper.pid, label="sleeper", grace_s=0.5))
    deadline = time.monotonic() + 20
    child = None
    while child is None and time.monotonic() < deadline:  # the sleeper's own child, in its group
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == sleeper.pid:
                    child = int(name)
        time.sleep(0.02)
    cont = g.hold(process_action("signal", sleeper.pid, label="sleeper", signal="SIGCONT"))
    os.kill(sleeper.pid, signal.SIGSTOP)
    print(json.dumps({"sleeper": sleeper.pid, "child": child, "guardian": g.proc.pid}), flush=True)
    if args.then == "release":
        os.kill(sleeper.pid, signal.SIGCONT)
        g.release(cont)
        os.kill(sleeper.pid, signal.SIGSTOP)  # stopped again, but nothing held: must stay stopped
    elif args.then in ("close", "close-held"):
        if args.then == "close":  # undo everything itself: the guardian has nothing left to do
            os.killpg(sleeper.pid, signal.SIGKILL)
            g.release(cont)
            g.release(group)
        g.close()
    elif args.then == "exit":
        sys.exit(0)  # exits without close: the guardian takes it as a death
    time.sleep(120)


if __name__ == "__main__":
    main()
