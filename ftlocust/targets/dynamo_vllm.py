"""Real NVIDIA Dynamo with real vLLM workers: the Dynamo frontend plus N `python -m dynamo.vllm`
workers (each an aggregated vLLM engine: its `VLLM::EngineCore` and `VLLM::Worker` children),
all on 127.0.0.1. The seed suite's `vllm-agg-tp-1-dp-N` deployment, on this machine.

Everything about running Dynamo without etcd, NATS or a GPU is `ftlocust.targets.dynamo`'s (file
discovery in the run folder, TCP planes and the ZMQ broker on loopback, readiness gated on
every worker being routable); only the workers differ: `dynamo.vllm` on the model folder
(default: the env's tiny random-weight Llama), with vLLM's KV-event publisher bound to its own
loopback port (its default binds every address), `--dtype float32 --enforce-eager` and the CPU
variables of `ftlocust.targets.vllm.engine_env` on CPU, and each engine on its own core.

What Dynamo's vLLM worker does when its engine core dies (measured, shared/reference/vllm-cpu.md):
it logs `EngineDeadError`, withdraws its registration and exits; the frontend retries its
streams on another worker when migration is on (`migration_limit`) and answers an in-band 503
when it is off. `configs/dynamo-vllm/` has both drills.

The environment is `python -m ftlocust.vllm_env --target dynamo-vllm` (Dynamo 1.6.1 needs
vLLM 0.31.0); the frontend runs from it too, so both sides are the same Dynamo.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

from ftlocust import vllm_env
from ftlocust.errors import ConfigError
from ftlocust.targets.dynamo import DynamoDeployment, free_system_ports
from ftlocust.processes import descendants_named
from ftlocust.targets.vllm import ENGINE_CORE, check_device, check_positive, core_list, engine_args, engine_env

TARGET = "dynamo-vllm"


class DynamoVllmDeployment(DynamoDeployment):
    """A local Dynamo (frontend + `workers` dynamo.vllm workers + event broker) under `run_dir`.

    Options: those of `DynamoDeployment` that concern the frontend and the run (port,
    migration_limit, model, worker_drain_s, extra_frontend_args, extra_worker_args, worker_env,
    router_mode, startup_timeout_s), and:
      env_path           the env (default: $FTLOCUST_DYNAMO_VLLM_ENV or <project>/.dynamo-vllm-env)
      model_path         the model folder (default: the env's tiny model)
      device             auto (what the env was built for), cpu or cuda
      kv_cache_gib       CPU KV cache per worker (VLLM_CPU_KVCACHE_SPACE), GiB
    """

    kind = TARGET

    def __init__(
        self,
        run_dir: str | os.PathLike,
        workers: int = 2,
        port: int = 0,
        migration_limit: int = 3,
        model: str = "tiny",
        env_path: str | os.PathLike | None = None,
        model_path: str | os.PathLike | None = None,
        device: str = "auto",
        kv_cache_gib: float = 1.0,
        extra_frontend_args: Iterable[str] = (),
        extra_worker_args: Iterable[str] = (),
        worker_env: Mapping[str, str] | None = None,
        worker_drain_s: float | None = None,
        router_mode: str = "round-robin",
        startup_timeout_s: float = 300.0,
    ):
        super().__init__(run_dir, workers=workers, port=port, migration_limit=migration_limit, model=model,
                         env_path=env_path, extra_frontend_args=extra_frontend_args,
                         extra_worker_args=extra_worker_args, worker_env=worker_env,
                         worker_drain_s=worker_drain_s, router_mode=router_mode,
                         startup_timeout_s=startup_timeout_s)
        self.device = check_device(device, self.env_path, TARGET)
        self.vllm_model_path = (Path(model_path) if model_path is not None
                                else vllm_env.tiny_model_path(self.env_path))
        if not (self.vllm_model_path / "config.json").is_file():
            raise ConfigError(f"model_path: {self.vllm_model_path} has no config.json (a model folder was expected)")
        self.kv_cache_gib = check_positive(kv_cache_gib, "kv_cache_gib")
        self._kv_event_ports: dict[str, int] = {}

    def recovered(self, role: str) -> bool:
        """`DynamoDeployment.recovered`, and a live worker must have its engine core again: for
        a moment after the engine core dies the worker still runs and is still listed."""
        if role in self.worker_roles() and self.group.alive(role):
            pid = self.group.pid(role)
            if pid is None or not descendants_named(pid, ENGINE_CORE):
                return False
        return super().recovered(role)

    @staticmethod
    def _require_env(env_path: str | os.PathLike | None) -> Path:
        return vllm_env.require_env(TARGET, env_path)

    def _worker_argv(self, role: str) -> list[str]:
        if role not in self._kv_event_ports:  # kept across restarts, like the system port
            taken = {*self._system_ports.values(), *self._kv_event_ports.values(), self.port, *self._broker_ports}
            self._kv_event_ports[role] = free_system_ports(1, avoid=taken)[0]
        kv_events = {"enable_kv_cache_events": True, "publisher": "zmq",
                     "endpoint": f"tcp://{self._host(role)}:{self._kv_event_ports[role]}"}
        return [
            self.python, "-m", "dynamo.vllm",
            *engine_args(self.device, self.vllm_model_path, self.model),
            "--kv-events-config", json.dumps(kv_events),
            *self.extra_worker_args,
        ]

    def _worker_engine_env(self, role: str) -> dict[str, str]:
        return engine_env(self.device, core_list(self.worker_roles().index(role)), self.kv_cache_gib)
