"""A scenario's `deployment:` — the seed suite's deployment matrix (backend × agg/disagg × TP ×
DP), mapped onto a target ftlocust can start here.

    deployment: vllm-agg-tp-1-dp-2            # the seed's name for it, or the same as fields:
    deployment: {backend: vllm, mode: agg, tp: 1, dp: 2}

The seed suite (shared/reference/dynamo-ft-suite.md §1.5) names deployments
`{backend}-agg-tp-{tp}-dp-{dp}`; `dp > 1` means that many replicas of the decode worker, `tp`
is `--tensor-parallel-size`. Here a row runs on the first target of its backend's list whose
environment is present (`BACKEND_TARGETS`, a registry: a plugin may add a backend):

- `vllm`: `dynamo-vllm` (real Dynamo, DP real vLLM workers, TP passed to vLLM), else the
  reference deployment with DP workers, each running a child named `VLLM::EngineCore` that
  imitates vLLM's engine core (TP must be 1 there: it has no tensor parallelism).
- `sglang`, `trtllm`: Dynamo's mocker workers (`dynamo`), else the reference deployment.

`disagg` has no local target yet: a one-line error says so. The summary's `deployment` says
which target ran the row and whether its engine was real (`real_engine`), so a row run on the
imitation can never pass for one run on vLLM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ftlocust import validation as v
from ftlocust.errors import ConfigError

BACKENDS = ("vllm", "sglang", "trtllm")
MODES = ("agg", "disagg")
NAME = re.compile(r"^(?P<backend>[a-z]+)-(?P<mode>agg)-tp-(?P<tp>\d+)-dp-(?P<dp>\d+)$")
FIELDS = ("backend", "mode", "tp", "dp")


@dataclass(frozen=True)
class DeploymentSpec:
    backend: str
    mode: str = "agg"
    tp: int = 1
    dp: int = 1

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.mode}-tp-{self.tp}-dp-{self.dp}"


@dataclass(frozen=True)
class LocalTarget:
    """One way to run a backend's row here: `kind`, present when `available()` says so,
    `options(spec)` its target options, `real_engine` whether it runs the backend's engine."""

    kind: str
    available: Callable[[], bool]
    options: Callable[[DeploymentSpec], dict] = field(default=lambda spec: {})
    real_engine: bool = False
    max_tp: int | None = None  # None: any TP (the engine's own flag)


def _vllm_env_present() -> bool:
    from ftlocust import vllm_env

    return vllm_env.is_complete("dynamo-vllm")


def _dynamo_env_present() -> bool:
    from ftlocust import dynamo_env

    return dynamo_env.is_complete()


def _vllm_options(spec: DeploymentSpec) -> dict:
    return {"extra_worker_args": ["--tensor-parallel-size", str(spec.tp)]} if spec.tp != 1 else {}


REFERENCE_VLLM = LocalTarget("reference", lambda: True, lambda spec: {"engine_core": "VLLM::EngineCore"}, max_tp=1)
REFERENCE = LocalTarget("reference", lambda: True, max_tp=1)
BACKEND_TARGETS: dict[str, list[LocalTarget]] = {
    "vllm": [LocalTarget("dynamo-vllm", _vllm_env_present, _vllm_options, real_engine=True), REFERENCE_VLLM],
    "sglang": [LocalTarget("dynamo", _dynamo_env_present, max_tp=1), REFERENCE],
    "trtllm": [LocalTarget("dynamo", _dynamo_env_present, max_tp=1), REFERENCE],
}


def deployment_from_value(data: Any, where: str) -> DeploymentSpec | None:
    """`deployment:` as the seed's name or as fields; None when absent."""
    if data is None:
        return None
    if isinstance(data, str):
        found = NAME.match(data)
        if found is None or found["backend"] not in BACKEND_TARGETS:
            raise v.error(where, f"a seed deployment name like vllm-agg-tp-1-dp-2 (backends: {', '.join(BACKEND_TARGETS)})", data)
        return DeploymentSpec(found["backend"], found["mode"], int(found["tp"]), int(found["dp"]))
    d = v.mapping(data, where, FIELDS, required=("backend",))
    spec = DeploymentSpec(
        backend=v.choice(d["backend"], f"{where}.backend", tuple(BACKEND_TARGETS)),
        mode=v.choice(d.get("mode", "agg"), f"{where}.mode", MODES),
        tp=int(v.number(d.get("tp", 1), f"{where}.tp", integer=True, above=0)),
        dp=int(v.number(d.get("dp", 1), f"{where}.dp", integer=True, above=0)),
    )
    return spec


@dataclass(frozen=True)
class Placement:
    """Where a row runs: the target kind, its workers and options, and what that means."""

    kind: str
    workers: int
    options: dict
    real_engine: bool

    def describe(self, spec: DeploymentSpec) -> dict:
        return {"name": spec.name, "backend": spec.backend, "mode": spec.mode, "tp": spec.tp, "dp": spec.dp,
                "target": self.kind, "real_engine": self.real_engine}


def place(spec: DeploymentSpec, where: str) -> Placement:
    """The first available target of the backend that can run the row (one-line error if none)."""
    if spec.mode != "agg":
        raise ConfigError(f"{where}.mode: {spec.mode} has no local target yet (agg only: one worker kind, no "
                          f"prefill/decode split)")
    refused = []
    for local in BACKEND_TARGETS[spec.backend]:
        if not local.available():
            refused.append(f"{local.kind}: its environment is missing")
            continue
        if local.max_tp is not None and spec.tp > local.max_tp:
            refused.append(f"{local.kind}: no tensor parallelism (tp {spec.tp})")
            continue
        return Placement(local.kind, spec.dp, local.options(spec), local.real_engine)
    raise ConfigError(f"{where}: no local target can run {spec.name} ({'; '.join(refused)})")
