"""The helper process of the GPU load faults (`gpu-memory-pressure`, `gpu-compute-overload`).

    python -m ftlocust.gpu_helper --gpu INDEX --pci-bus-id ID (--hold-bytes N | --busy)

Started by the fault at preflight, in its own process group, with its stdin and stdout piped to
the driver. It opens the GPU with the backend (FTLOCUST_GPU_BACKEND, default
`ftlocust.cuda_driver`; the tests' fake is `tests.support.fake_cuda`) and prints one line:

    ready <what the backend saw>      then waits for "go" on stdin
    error <one line>                  and exits 2 (no driver, no such GPU, out of memory, …)

On "go" it allocates (or starts the kernels) and prints `holding <bytes>` / `holding busy`, then
holds until it is ended: SIGTERM (the fault's recover, or the guardian's stop-process), EOF on
stdin, or the death of the driver that started it (a pidfd) — so a driver that dies never
leaves GPU memory held. The driver frees a dead process's GPU memory; nothing is freed here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import sys

BACKEND_ENV = "FTLOCUST_GPU_BACKEND"
DEFAULT_BACKEND = "ftlocust.cuda_driver"


def say(line: str) -> None:
    sys.stdout.write(line.replace("\n", " ") + "\n")
    sys.stdout.flush()


class Watch:
    """stdin (the driver's pipe) and a pidfd on the driver: `ended()` once either says it is over."""

    def __init__(self, parent: int):
        self.fds = [0]
        try:
            self.fds.append(os.pidfd_open(parent))
        except OSError:  # an old kernel: stdin's EOF alone
            pass
        self.over = False

    def wait(self, timeout_s: float | None = None) -> bytes | None:
        """A line from stdin; b"" once the driver is gone; None after timeout_s."""
        ready, _, _ = select.select(self.fds, [], [], timeout_s)
        if not ready:
            return None
        if 0 not in ready:
            self.over = True
            return b""
        line = sys.stdin.buffer.readline()
        if not line:
            self.over = True
        return line

    def ended(self) -> bool:
        return self.over or self.wait(0) == b""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftlocust.gpu_helper")
    p.add_argument("--gpu", type=int, required=True, help="the GPU's NVML index")
    p.add_argument("--pci-bus-id", required=True, help="the GPU's PCI bus id (how CUDA finds it)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--hold-bytes", type=int, help="allocate this much on go")
    what.add_argument("--busy", action="store_true", help="keep the SMs busy on go")
    args = p.parse_args(argv)
    watch = Watch(os.getppid())
    name = os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND
    try:
        backend = importlib.import_module(name)
        device = backend.open(args.gpu, args.pci_bus_id)
        say(f"ready {device.describe()}")
    except Exception as e:
        say(f"error {e or type(e).__name__}" if not isinstance(e, ImportError)
            else f"error {BACKEND_ENV}={name} cannot be imported ({e})")
        return 2
    while True:
        line = watch.wait()
        if not line:
            return 0  # the driver is gone before the fault fired
        if line.strip() == b"go":
            break
    try:
        if args.busy:
            device.keep_busy(started=lambda: say("holding busy"), stop=watch.ended)
            return 0
        say(f"holding {device.hold_memory(args.hold_bytes)}")
    except Exception as e:
        say(f"error {e or type(e).__name__}")
        return 3
    while watch.wait() != b"":
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
