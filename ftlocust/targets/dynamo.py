"""Real NVIDIA Dynamo as a target: its frontend plus N GPU-free mocker workers, on loopback or
each role in its own network namespace (`network: netns`).

How it runs without etcd, NATS or a GPU (measured, shared/reference/dynamo-local.md):
- discovery through files (DYN_DISCOVERY_BACKEND=file) in a directory private to this run, so
  parallel runs never see each other's workers;
- TCP request and response planes bound to 127.0.0.1;
- the ZMQ event plane in broker mode through our loopback XSUB/XPUB forwarder (zmq_broker.py),
  because direct mode binds 0.0.0.0;
- each worker with its own system port (health + metrics) and DYN_HEALTH_CHECK_ENABLED=true,
  without which its /health never turns ready;
- a tiny generated model folder (tinymodel.py), no hub;
- readiness gated on every worker's /health, the model in the frontend's /v1/models, every
  worker visible to the frontend, and one completion answered (frontend /health is 200 even
  with zero workers).

With `network="netns"` each role runs in its own namespace of a `ftlocust.netns` lab made at
start() and deleted at stop() (the guardian deletes it if the driver dies), exactly as the
reference deployment does: every address above (--http-host, DYN_TCP_RPC_HOST,
DYN_TCP_RESPONSE_STREAM_HOST, DYN_EVENT_PLANE_HOST, DYN_SYSTEM_HOST, the broker's bind address
and DYN_ZMQ_BROKER_URL) is the role's lab address instead of 127.0.0.1, so frontend <-> worker
traffic (request plane one way, response streams the other) crosses the lab's router, where
`partition` faults cut it. Discovery stays in files (not cuttable: no `worker_nats` partition).
The driver stays in the root namespace; the lab's creation and removal are logged
(`network_created {...}` / `network_removed {...}` in test.log).

Roles: "broker", "frontend", "worker-1" .. "worker-N". Processes are run and stopped by
`ftlocust.targets.local.ProcessGroup` (only the PIDs it started). A deployment that cannot come
up raises `ConfigError` with one line naming the role and its log.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ftlocust.dynamo_env import env_python, require_env
from ftlocust.errors import ConfigError
from ftlocust.targets.local import NETWORKS, GroupProcesses, NamespacedRoles, ProcessGroup, ProcessSpec, last_line
from ftlocust.targets.tinymodel import write_tiny_model

BROKER_ROLE = "broker"
FRONTEND_ROLE = "frontend"
WORKER_PREFIX = "worker-"
BROKER_SCRIPT = Path(__file__).with_name("zmq_broker.py")
# The drain bound a SIGTERM'd worker waits for in-flight requests (runtime default: 900 s).
DRAIN_ENV = "DYN_RUNTIME_GRACEFUL_SHUTDOWN_TIMEOUT_SECS"
# Dynamo's endpoint path for generation; its frontend /health lists one instance per worker.
GENERATE_ENDPOINT = "generate"


def free_loopback_ports(count: int) -> list[int]:
    """`count` distinct ports the OS just gave out on 127.0.0.1 (bound together, then closed)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# Dynamo 1.6.1 parses DYN_SYSTEM_PORT as a signed 16-bit integer ("expected i16"): a worker
# port must be <= 32767, below Linux's ephemeral range, so the OS cannot hand one out.
SYSTEM_PORT_RANGE = (20000, 32767)


def free_system_ports(count: int, avoid: Iterable[int] = (), attempts: int = 500) -> list[int]:
    """`count` distinct free loopback ports in SYSTEM_PORT_RANGE, chosen at random (so parallel
    runs rarely try the same one) and checked by binding."""
    chosen: list[int] = []
    avoid = set(avoid)
    rng = random.SystemRandom()
    for _ in range(attempts):
        if len(chosen) == count:
            return chosen
        port = rng.randint(*SYSTEM_PORT_RANGE)
        if port in avoid or port in chosen:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    if len(chosen) == count:
        return chosen
    raise ConfigError(f"found only {len(chosen)} of {count} free ports in {SYSTEM_PORT_RANGE} after {attempts} tries")


def http_exchange(method: str, url_base: tuple[str, int], path: str, body: Any = None, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """One small HTTP exchange with a server of the deployment; (status, body). Raises OSError."""
    host, port = url_base
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_served(address: tuple[str, int], model: str, deadline: float, raise_if_dead: Callable[[], None],
                failure: str, completion_timeout_s: float = 10.0, poll_s: float = 0.1) -> None:
    """Until `model` is listed in /v1/models at `address` and one completion is answered: an
    OpenAI-compatible server's readiness (its /health can say 200 before it serves).
    `raise_if_dead()` raises when a process it needs is gone; past `deadline`, ConfigError
    `failure: <what was seen last>`."""
    last = "no answer yet"
    while True:
        raise_if_dead()
        try:
            status, body = http_exchange("GET", address, "/v1/models", timeout_s=3)
            if status == 200 and any(m.get("id") == model for m in json.loads(body).get("data", [])):
                request = {"model": model, "prompt": "ready", "max_tokens": 1}
                status, body = http_exchange("POST", address, "/v1/completions", request, timeout_s=completion_timeout_s)
                if status == 200 and json.loads(body).get("choices"):
                    return
                last = f"completion answered {status}: {body[:200]!r}"
            else:
                last = f"model {model!r} not in /v1/models yet ({status})"
        except (OSError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise ConfigError(f"{failure}: {last}")
        time.sleep(poll_s)


def arg_list(value: Any, field: str) -> tuple[str, ...]:
    """Extra command-line arguments: a list of strings (not one string, which would be split)."""
    if isinstance(value, str) or not isinstance(value, Iterable) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{field}: expected a list of strings, got {value!r}")
    return tuple(value)


class DynamoDeployment(NamespacedRoles, GroupProcesses):
    """A local Dynamo (frontend + `workers` mocker workers + event broker) under `run_dir`.

    Options (all keywords are scenario `target.options` too):
      port               frontend HTTP port; 0 picks a free loopback port
      migration_limit    frontend --migration-limit (0 disables migration)
      model              served model name
      env_path           the Dynamo venv (default: $FTLOCUST_DYNAMO_ENV or <project>/.dynamo-env)
      speedup_ratio      mocker --speedup-ratio (1.0: 50-170 tokens/s per stream on 2 cores,
                         depending on CPU contention; 2.0 about twice that)
      worker_drain_s     DYN_RUNTIME_GRACEFUL_SHUTDOWN_TIMEOUT_SECS for the workers: how long a
                         SIGTERM'd worker drains in-flight requests (None: Dynamo's 900 s)
      extra_frontend_args / extra_worker_args   appended to the command lines
      worker_env         extra environment for every worker (wins over the above)
      router_mode        frontend --router-mode
      startup_timeout_s  per process and for the whole readiness gate
      network            loopback (the default: every role on 127.0.0.1) or netns (each role in
                         its own network namespace, bound to and advertising its address there,
                         so `partition` faults can cut it off; needs root and iproute2)
    """

    frontend_role = FRONTEND_ROLE
    broker_role = BROKER_ROLE
    events_path = None  # ground-truth events exist only for the reference deployment
    started_here = True

    kind = "dynamo"  # its name in the target registry (error messages name the options by it)

    @classmethod
    def from_spec(cls, spec, run_dir: str, host: str | None = None) -> "DynamoDeployment":
        """From a scenario's `target`: workers, migration limit, options."""
        from ftlocust.targets import options_for

        options = options_for(cls, spec.options, cls.kind, {"workers", "migration_limit"})
        return cls(run_dir, workers=spec.workers, migration_limit=spec.migration_limit, **options)

    def __init__(
        self,
        run_dir: str | os.PathLike,
        workers: int = 2,
        port: int = 0,
        migration_limit: int = 3,
        model: str = "tiny",
        env_path: str | os.PathLike | None = None,
        speedup_ratio: float = 1.0,
        extra_frontend_args: Iterable[str] = (),
        extra_worker_args: Iterable[str] = (),
        worker_env: Mapping[str, str] | None = None,
        worker_drain_s: float | None = None,
        router_mode: str = "round-robin",
        startup_timeout_s: float = 90.0,
        network: str = "loopback",
    ):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers: expected an integer >= 1, got {workers!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"port: expected an integer 0..65535 (0: pick a free one), got {port!r}")
        if isinstance(migration_limit, bool) or not isinstance(migration_limit, int) or migration_limit < 0:
            raise ConfigError(f"migration_limit: expected an integer >= 0, got {migration_limit!r}")
        if not isinstance(model, str) or not model or any(c.isspace() or c == "/" for c in model):
            raise ConfigError(f"model: expected a name without spaces or '/', got {model!r}")
        if isinstance(speedup_ratio, bool) or not isinstance(speedup_ratio, (int, float)) or speedup_ratio <= 0:
            # Dynamo documents 0 as "infinite" but 1.6.1 treats it as 1.0: refuse the surprise.
            raise ConfigError(f"speedup_ratio: expected a number > 0, got {speedup_ratio!r}")
        if worker_drain_s is not None and (
            isinstance(worker_drain_s, bool) or not isinstance(worker_drain_s, (int, float)) or worker_drain_s <= 0
        ):
            raise ConfigError(f"worker_drain_s: expected a number of seconds > 0, got {worker_drain_s!r}")
        if worker_env is not None and (
            not isinstance(worker_env, Mapping)
            or not all(isinstance(k, str) and isinstance(v, (str, int, float)) for k, v in worker_env.items())
        ):
            raise ConfigError(f"worker_env: expected a mapping of variable names to values, got {worker_env!r}")
        if not isinstance(router_mode, str) or not router_mode:
            raise ConfigError(f"router_mode: expected a Dynamo --router-mode name, got {router_mode!r}")
        if isinstance(startup_timeout_s, bool) or not isinstance(startup_timeout_s, (int, float)) or startup_timeout_s <= 0:
            raise ConfigError(f"startup_timeout_s: expected a number > 0, got {startup_timeout_s!r}")
        if network not in NETWORKS:
            raise ConfigError(f"network: expected {' or '.join(NETWORKS)}, got {network!r}")
        self.extra_frontend_args = arg_list(extra_frontend_args, "extra_frontend_args")
        self.extra_worker_args = arg_list(extra_worker_args, "extra_worker_args")
        self.env_path = self._require_env(env_path)
        self.python = str(env_python(self.env_path))
        self.run_dir = Path(run_dir).resolve()
        self.workers = workers
        self.migration_limit = migration_limit
        self.model = model
        self.speedup_ratio = float(speedup_ratio)
        self.worker_drain_s = worker_drain_s
        self.worker_env = {k: str(v) for k, v in (worker_env or {}).items()}
        self.router_mode = router_mode
        self.startup_timeout_s = float(startup_timeout_s)
        self.requested_port = port
        self.port: int | None = None
        self.group = ProcessGroup(str(self.run_dir))
        self.startup_s: float | None = None
        self.model_dir = self.run_dir / "model"
        self.kv_dir = self.run_dir / "kv"
        self.home_dir = self.run_dir / "home"
        self._system_ports: dict[str, int] = {}
        self._broker_ports: tuple[int, int] | None = None
        self._init_network(network)

    @staticmethod
    def _require_env(env_path: str | os.PathLike | None) -> Path:
        """The venv the processes run from (a subclass with other workers needs another)."""
        return require_env(env_path)

    # ----- addresses -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("DynamoDeployment.base_url: not started")
        return f"http://{self._host(FRONTEND_ROLE)}:{self.port}"

    def worker_roles(self) -> list[str]:
        return [f"{WORKER_PREFIX}{i}" for i in range(1, self.workers + 1)]

    def metrics_url(self, role: str) -> str:
        return self._system_url(role, "/metrics")

    def health_url(self, role: str) -> str:
        return self._system_url(role, "/health")

    def _system_url(self, role: str, path: str) -> str:
        if role == FRONTEND_ROLE:
            return self.base_url + path
        if role in self._system_ports:
            return f"http://{self._host(role)}:{self._system_ports[role]}{path}"
        if role == BROKER_ROLE:
            raise ConfigError(f"role {role!r} has no HTTP endpoint (it is the ZMQ event broker)")
        raise ConfigError(f"role: unknown {role!r} (expected one of {', '.join(self.roles())})")

    def roles(self) -> list[str]:
        return [BROKER_ROLE, FRONTEND_ROLE, *self.worker_roles()]

    def address(self, role: str) -> str | None:
        if role == BROKER_ROLE:
            return f"{self._host(role)}:{self._broker_ports[0]}" if self._broker_ports else None
        try:
            return self._system_url(role, "").split("://", 1)[1]
        except (ConfigError, RuntimeError):
            return None

    def log_path(self, role: str) -> str:
        return self.group.log_path(role)

    def registry_endpoint(self) -> None:
        """None: discovery is files (DYN_DISCOVERY_BACKEND=file), no network endpoint a worker
        registers with, so a `partition` of kind worker_nats is refused. (The event broker is
        not the analogue: it carries KV and load events, not registrations or liveness.)"""
        return None

    # ----- process specs ---------------------------------------------------------------

    def _common_env(self, role: str) -> dict[str, str]:
        """Set over the caller's environment (ProcessGroup merges), so a caller's other DYN_*
        variables still reach the processes. Every host is the role's own address."""
        xsub, xpub = self._broker_ports
        host, broker = self._host(role), self._host(BROKER_ROLE)
        env = dict(
            DYN_DISCOVERY_BACKEND="file",
            DYN_FILE_KV=str(self.kv_dir),
            DYN_REQUEST_PLANE="tcp",
            DYN_RESPONSE_PLANE="tcp",
            DYN_EVENT_PLANE="zmq",
            DYN_ZMQ_BROKER_URL=f"xsub=tcp://{broker}:{xsub} , xpub=tcp://{broker}:{xpub}",
            DYN_TCP_RPC_HOST=host,
            DYN_TCP_RESPONSE_STREAM_HOST=host,
            DYN_EVENT_PLANE_HOST=host,
            DYN_SDK_DISABLE_ANSI_LOGGING="1",
            DYN_LOG=os.environ.get("DYN_LOG", "info"),  # info: the `request received request_id=` lines
            HF_HUB_OFFLINE="1",  # the model folder is local; never try the hub
            PYTHONUNBUFFERED="1",
        )
        return env

    def _broker_spec(self) -> ProcessSpec:
        xsub, xpub = self._broker_ports
        argv = [self.python, str(BROKER_SCRIPT), str(xsub), str(xpub), self._host(BROKER_ROLE)]
        return ProcessSpec(BROKER_ROLE, self._prefix(BROKER_ROLE) + argv,
                           env={"PYTHONUNBUFFERED": "1"}, startup_timeout_s=self.startup_timeout_s)

    def _frontend_spec(self) -> ProcessSpec:
        argv = [
            self.python, "-m", "dynamo.frontend",
            "--http-host", self._host(FRONTEND_ROLE), "--http-port", str(self.port),
            "--router-mode", self.router_mode,
            "--migration-limit", str(self.migration_limit),
            *self.extra_frontend_args,
        ]
        # The frontend caches model cards under $HOME/.cache/dynamo/mdc: a HOME per run keeps
        # parallel runs (and the user's cache) apart.
        env = dict(self._common_env(FRONTEND_ROLE), HOME=str(self.home_dir))
        return ProcessSpec(FRONTEND_ROLE, self._prefix(FRONTEND_ROLE) + argv, env=env,
                           health_url=self.base_url + "/health",
                           startup_timeout_s=self.startup_timeout_s)

    def _worker_argv(self, role: str) -> list[str]:
        """The worker's command line (a subclass with other workers replaces it)."""
        return [
            self.python, "-m", "dynamo.mocker",
            "--model-path", str(self.model_dir), "--model-name", self.model,
            "--speedup-ratio", f"{self.speedup_ratio:g}",
            *self.extra_worker_args,
        ]

    def _worker_engine_env(self, role: str) -> dict[str, str]:
        """What the worker's engine needs in its environment (the mocker: nothing)."""
        return {}

    def _worker_spec(self, role: str) -> ProcessSpec:
        argv = self._worker_argv(role)
        env = self._common_env(role)
        env.update(self._worker_engine_env(role))
        env.update(
            DYN_SYSTEM_HOST=self._host(role),
            DYN_SYSTEM_PORT=str(self._system_ports[role]),
            DYN_HEALTH_CHECK_ENABLED="true",
        )
        if self.worker_drain_s is not None:
            env[DRAIN_ENV] = f"{self.worker_drain_s:g}"
        env.update(self.worker_env)
        return ProcessSpec(role, self._prefix(role) + argv, env=env, health_url=self.health_url(role),
                           startup_timeout_s=self.startup_timeout_s)

    # ----- lifecycle -------------------------------------------------------------------

    def start(self) -> "DynamoDeployment":
        """Start broker, frontend and workers (in netns mode, in the lab's namespaces, made
        first); return once the model is served end to end."""
        started = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.kv_dir, ignore_errors=True)  # stale registrations of an earlier start
        self.kv_dir.mkdir()
        self.home_dir.mkdir(exist_ok=True)
        write_tiny_model(self.model_dir, self.model)
        ports = free_loopback_ports(3)
        self.port = self.requested_port or ports[0]
        self._broker_ports = (ports[1], ports[2])
        self._system_ports = dict(zip(self.worker_roles(), free_system_ports(self.workers, avoid=ports)))
        if self.network_lab is not None:
            self._make_network()

        self.group.start(self._broker_spec(), wait=False)
        self._wait_broker()
        # Frontend and workers start together (each takes ~1 s of CPU to boot).
        self.group.start(self._frontend_spec(), wait=False)
        for role in self.worker_roles():
            self.group.start(self._worker_spec(role), wait=False)
        for role in (FRONTEND_ROLE, *self.worker_roles()):
            self.group.wait_ready(role)
        deadline = started + self.startup_timeout_s
        for role in self.worker_roles():
            self._wait_routable(role, deadline)
        self._wait_served(deadline)
        self.startup_s = time.monotonic() - started
        self._instances = {role: self.instance_id(role) for role in self.worker_roles()}
        return self

    def signal(self, role: str, sig: int) -> int:
        """Send a signal to one role's process; return its PID."""
        if role not in self.roles():
            raise ConfigError(f"role: unknown {role!r} (expected one of {', '.join(self.roles())})")
        return self.group.signal(role, sig)

    def recovered(self, role: str) -> bool:
        """Server view after a fault on `role`: the frontend serves and routes only to live
        instances — a dead worker's instance is gone from its list, a live (or restarted) one
        is listed again."""
        if role in (FRONTEND_ROLE, BROKER_ROLE):
            return self.group.alive(role) and bool(self.generate_instances())
        listed = self.generate_instances()
        if self.group.alive(role):
            instance = self.instance_id(role)
            self._instances[role] = instance
            return instance is not None and instance in listed
        return bool(listed) and self._instances.get(role) not in listed

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop every process this deployment started (SIGTERM, SIGKILL after `grace_s`).
        Workers first (they drain), the broker last, then the lab's namespaces. Safe after a
        partial start, and twice."""
        started = set(self.group.roles())
        try:
            for role in [*self.worker_roles(), FRONTEND_ROLE, BROKER_ROLE]:
                if role in started:
                    self.group.stop(role, grace_s=grace_s)
        finally:
            self._remove_network()

    def restart(self, role: str, grace_s: float = 10.0) -> None:
        """Restart one role with its original command and ports (stopped first if running,
        SIGKILL after `grace_s`; a dead one is started again), then wait until it is back in
        service: a worker healthy and routable by the frontend, the frontend serving the model,
        the broker listening."""
        if role not in self.roles():
            raise ConfigError(f"role: unknown {role!r} (expected one of {', '.join(self.roles())})")
        deadline = time.monotonic() + self.startup_timeout_s
        self.group.restart(role, grace_s=grace_s, wait=True)
        if role == BROKER_ROLE:
            self._wait_broker()
        elif role == FRONTEND_ROLE:
            for worker in self.worker_roles():
                if self.group.alive(worker):
                    self._wait_routable(worker, deadline)
            self._wait_served(deadline)
        else:
            self._wait_routable(role, deadline)
            self._instances[role] = self.instance_id(role)

    # ----- readiness -------------------------------------------------------------------

    def _wait_broker(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if not self.group.alive(BROKER_ROLE):
                raise ConfigError(self._exited(BROKER_ROLE))
            try:
                socket.create_connection((self._host(BROKER_ROLE), self._broker_ports[0]), timeout=1).close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ConfigError(f"the ZMQ broker did not listen within {self.startup_timeout_s:g} s")
            time.sleep(0.05)

    def generate_instances(self) -> list[int]:
        """Instance ids of the workers the frontend currently lists for generation (its /health).
        A SIGKILLed worker stays listed until its discovery entry expires (~10 s)."""
        status, body = http_exchange("GET", (self._host(FRONTEND_ROLE), self.port), "/health", timeout_s=3)
        if status != 200:
            return []
        instances = json.loads(body).get("instances") or []
        return [i["instance_id"] for i in instances if i.get("endpoint") == GENERATE_ENDPOINT]

    def instance_id(self, role: str) -> int | None:
        """The Dynamo instance id of a worker role (decimal, as in frontend logs' worker_id=),
        read from the worker's own /metrics (hex worker_id label); None if it does not answer."""
        if role not in self._system_ports:
            raise ConfigError(f"role: expected a worker role ({', '.join(self.worker_roles())}), got {role!r}")
        try:
            status, body = http_exchange("GET", (self._host(role), self._system_ports[role]), "/metrics", timeout_s=3)
        except OSError:
            return None
        found = re.search(r'dynamo_endpoint="generate"[^}]*worker_id="([0-9a-f]+)"', body.decode(errors="replace"))
        return int(found.group(1), 16) if status == 200 and found else None

    def _wait_routable(self, role: str, deadline: float) -> None:
        """Until the frontend lists this worker's (new) instance."""
        instance = None
        while True:
            if not self.group.alive(role):
                raise ConfigError(self._exited(role))
            try:
                instance = instance or self.instance_id(role)
                if instance is not None and instance in self.generate_instances():
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ConfigError(f"the frontend did not list {role} within {self.startup_timeout_s:g} s")
            time.sleep(0.1)

    def _wait_served(self, deadline: float) -> None:
        wait_served((self._host(FRONTEND_ROLE), self.port), self.model, deadline, self._raise_if_dead,
                    f"Dynamo did not serve {self.model!r} within {self.startup_timeout_s:g} s")

    def _raise_if_dead(self) -> None:
        for role in (BROKER_ROLE, FRONTEND_ROLE):
            if role in self.group.roles() and not self.group.alive(role):
                raise ConfigError(self._exited(role))

    def _exited(self, role: str) -> str:
        return (f"Dynamo {role} exited with code {self.group.returncode(role)} while starting "
                f"(log: {self.log_path(role)}): {last_line(self.log_path(role)) or 'no output'}")

    # ----- evidence helpers ------------------------------------------------------------

    def worker_log_paths(self) -> dict[str, str]:
        return {role: self.log_path(role) for role in self.worker_roles()}
