"""`ftlocust` command: set-up helpers around the drills (the drills themselves run with `locust -f`).

    ftlocust dynamo-env [--path DIR]      create the NVIDIA Dynamo environment (real Dynamo target)
    ftlocust vllm-env --target T          create a real-vLLM environment (vllm, dynamo-vllm or all)
    ftlocust reference --run-dir DIR ...  run the reference deployment until Ctrl-C
"""

from __future__ import annotations

import sys

COMMANDS = {
    "dynamo-env": ("ftlocust.dynamo_env", "create the virtual environment for real NVIDIA Dynamo"),
    "vllm-env": ("ftlocust.vllm_env", "create the virtual environment of a real-vLLM target (--target vllm|dynamo-vllm|all)"),
    "reference": ("ftlocust.targets.reference.__main__", "run the reference deployment on 127.0.0.1"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
        out = sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr
        if argv and argv[0] not in ("-h", "--help"):
            out.write(f"ftlocust: unknown command {argv[0]!r}\n")
        out.write("usage: ftlocust COMMAND [ARGS]\n" + "\n".join(lines) + "\n"
                  "drills: locust -f locustfiles/migration.py --headless (see README.md)\n")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module_name, _ = COMMANDS[argv[0]]
    module = __import__(module_name, fromlist=["main"])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
