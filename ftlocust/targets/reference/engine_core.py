"""The engine-core child of a reference worker: a process named like vLLM's `VLLM::EngineCore`.

It does no work. It exists so that a drill can SIGKILL a worker's engine core by its process
name, as the seed suite does on real vLLM / SGLang / TensorRT-LLM workers, and the worker
reacts as Dynamo's vLLM worker did (worker.py: `EngineDeadError`, deregister, exit 1).

Its command line starts with the name (the worker passes it as argv[0], with the real python as
the executable), and it sets its /proc/self/comm to the name cut to 15 characters with
prctl(PR_SET_NAME), as setproctitle does for vLLM: `pgrep -f '^VLLM::EngineCore'` finds it,
`pgrep -x VLLM::EngineCore` does not. It exits when its parent worker is gone.

Started as a script (`NAME -S .../engine_core.py --parent-pid N`) so that it imports nothing
but the standard library and is up in milliseconds. Keep it that way: no ftlocust imports.
"""

import ctypes
import os
import signal
import sys
import time

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1


def _prctl(option: int, arg) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(option, arg, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the name is only in the command line


def main(argv: list[str]) -> int:
    parent = None
    if "--parent-pid" in argv:
        parent = int(argv[argv.index("--parent-pid") + 1])
    with open("/proc/self/cmdline", "rb") as f:
        name = f.read().split(b"\0", 1)[0]  # argv[0] as the worker gave it
    _prctl(PR_SET_NAME, ctypes.c_char_p(name[:15]))
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the worker died: go with it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while parent is None or os.getppid() == parent:  # also if the death signal was missed
        time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
