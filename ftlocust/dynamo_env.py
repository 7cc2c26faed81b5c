"""Create the virtual environment that real NVIDIA Dynamo runs from.

Dynamo's pins clash with ftlocust's, and one of its declared dependencies (`aisimulate`, only
needed for `--ais-perf-model`) cannot be installed from PyPI, so Dynamo lives in its own venv:
the two Dynamo wheels are installed with `--no-deps`, then an explicit dependency list
(measured in shared/reference/dynamo-local.md, section 0).

    python -m ftlocust.dynamo_env [--path DIR] [--python PY]

Default path: $FTLOCUST_DYNAMO_ENV, else `.dynamo-env` in the project root. Idempotent: a
complete env (marker file written last) is reused; a half-built one is finished.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ftlocust.errors import ConfigError

DYNAMO_VERSION = "1.6.1"
DYNAMO_PACKAGES = (f"ai-dynamo=={DYNAMO_VERSION}", f"ai-dynamo-runtime=={DYNAMO_VERSION}")
# ai-dynamo's requirements minus aisimulate, plus tokenizers (the tiny-model check uses it).
DYNAMO_DEPENDENCIES = (
    "aiohttp>=3.14.3,<4",
    "certifi>=2026.10.19",
    "kubernetes>=32.0.1,<33",
    "msgspec>=0.19",
    "prometheus-client>=0.23.1,<1",
    "pyzmq>=26",
    "redis>=6.2,<9",
    "tqdm>=4",
    "transformers>=4.56",
    "typing-extensions>=4.10",
    "zstandard>=0.23,<1",
    "pydantic>=2.10.6,<=2.13.5",
    "uvloop>=0.21",
    "tokenizers",
)
ENV_VAR = "FTLOCUST_DYNAMO_ENV"
MARKER = ".ftlocust-dynamo-env"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# What a usable env must import; checked once before the marker is written.
IMPORT_CHECK = "import dynamo.frontend, dynamo.mocker, zmq, tokenizers"


def default_env_path() -> Path:
    """$FTLOCUST_DYNAMO_ENV if set, else <project root>/.dynamo-env."""
    configured = os.environ.get(ENV_VAR)
    return Path(configured).expanduser() if configured else PROJECT_ROOT / ".dynamo-env"


def env_python(env_path: Path | str) -> Path:
    return Path(env_path) / "bin" / "python"


def marker_text() -> str:
    return f"ai-dynamo=={DYNAMO_VERSION}\n"


def is_complete(env_path: Path | str | None = None) -> bool:
    """True when `env_path` (default: default_env_path()) holds a finished Dynamo env."""
    path = Path(env_path) if env_path is not None else default_env_path()
    marker = path / MARKER
    try:
        return env_python(path).exists() and marker.read_text() == marker_text()
    except OSError:
        return False


def require_env(env_path: Path | str | None = None) -> Path:
    """The env path, or ConfigError telling the user how to create it."""
    path = Path(env_path) if env_path is not None else default_env_path()
    if not is_complete(path):
        raise ConfigError(
            f"no Dynamo environment at {path}: create it with "
            f"`python -m ftlocust.dynamo_env --path {path}`"
        )
    return path


def prepare_env_dir(path: Path) -> tuple[Path, list[str]]:
    """Make `path` the folder of an env being built (refusing a file or a folder that is not
    a venv); return its build log and its pip command."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--path {path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / "pyvenv.cfg").exists():
        raise ConfigError(f"--path {path}: directory is not empty and is not a virtual environment")
    path.mkdir(parents=True, exist_ok=True)
    return path / "ftlocust-build.log", [str(env_python(path)), "-m", "pip", "--disable-pip-version-check", "--no-input"]


def run_step(step: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
    """Run one step, appending its output to the env's build log; one-line error on failure.
    `env`: set over this process's environment for the step."""
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(argv)}\n")
        log.flush()
        try:
            result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=dict(os.environ, **env) if env else None)
        except OSError as exc:
            raise ConfigError(f"{step} failed: cannot run {argv[0]}: {exc.strerror}") from None
    if result.returncode != 0:
        raise ConfigError(f"{step} failed (exit {result.returncode}): {_last_error_line(log_path)} — full log: {log_path}")


def _last_error_line(log_path: Path) -> str:
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1][:300]


def create_env(env_path: Path | str | None = None, python: str | None = None, quiet: bool = False) -> Path:
    """Create (or finish, or reuse) the Dynamo env; return its path."""
    path = Path(env_path).expanduser().resolve() if env_path is not None else default_env_path().resolve()
    say = (lambda msg: None) if quiet else (lambda msg: print(f"[dynamo-env] {msg}", flush=True))
    if is_complete(path):
        say(f"reusing complete environment at {path}")
        return path
    log_path, pip = prepare_env_dir(path)
    started = time.monotonic()
    wheels = path / "wheels"

    if not env_python(path).exists():
        say(f"1/5 creating virtual environment at {path}")
        run_step("creating the venv", [python or _base_python(), "-m", "venv", str(path)], log_path)
    else:
        say(f"1/5 finishing the half-built environment at {path}")
    say(f"2/5 downloading {' '.join(DYNAMO_PACKAGES)} (--no-deps)")
    run_step("downloading Dynamo", pip + ["download", "--no-deps", "-d", str(wheels), *DYNAMO_PACKAGES], log_path)
    found = sorted(str(w) for w in wheels.glob(f"ai_dynamo*-{DYNAMO_VERSION}-*.whl"))
    if len(found) != 2:
        raise ConfigError(f"downloading Dynamo: expected 2 wheels in {wheels}, found {len(found)} — log: {log_path}")
    say("3/5 installing the Dynamo wheels (--no-deps)")
    run_step("installing Dynamo", pip + ["install", "--no-deps", *found], log_path)
    say(f"4/5 installing {len(DYNAMO_DEPENDENCIES)} dependencies (a few minutes)")
    run_step("installing Dynamo's dependencies", pip + ["install", *DYNAMO_DEPENDENCIES], log_path)
    say("5/5 checking that the frontend and the mocker import")
    run_step("import check", [str(env_python(path)), "-c", IMPORT_CHECK], log_path)
    shutil.rmtree(wheels, ignore_errors=True)  # installed; 80 MB not worth keeping
    (path / MARKER).write_text(marker_text())
    say(f"done in {time.monotonic() - started:.0f} s: {path}")
    return path


def _base_python() -> str:
    """The interpreter the env is made from: the one running us (a venv's python is fine)."""
    return sys.executable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ftlocust.dynamo_env",
        description=f"Create the virtual environment for NVIDIA Dynamo {DYNAMO_VERSION} (frontend + mocker).",
    )
    parser.add_argument("--path", help=f"where to create it (default: ${ENV_VAR} or <project>/.dynamo-env)")
    parser.add_argument("--python", help="interpreter to build the venv from (default: this one; needs 3.10-3.12)")
    parser.add_argument("--check", action="store_true", help="only report whether a complete env exists (exit 0/1)")
    args = parser.parse_args(argv)
    path = Path(args.path) if args.path else default_env_path()
    if args.check:
        ok = is_complete(path)
        print(f"{path}: {'complete' if ok else 'missing or incomplete'}")
        return 0 if ok else 1
    try:
        create_env(path, python=args.python)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
