"""The fault interface: the registry of kinds and the shared target resolution."""

import pytest

from ftlocust import faults
from ftlocust.errors import ConfigError
from ftlocust.processes import ProcessRef
from ftlocust.faults import SERVING_WORKER, Fault, FaultContext, build_fault, build_faults, resolve_at_fire, resolve_target
from ftlocust.scenario import FaultSpec, TriggerSpec


def _spec(target="worker-1", kind="process-signal", trigger=None, **params):
    return FaultSpec(kind=kind, target=target, trigger=trigger or TriggerSpec(after_requests=1), params=params, name="f")


class FakeDeployment:
    started_here = True

    def __init__(self, roles=("frontend", "worker-1", "worker-2"), pids=None):
        self._roles = list(roles)
        self._pids = pids or {}

    def roles(self):
        return list(self._roles)

    def pid(self, role):
        return self._pids.get(role)

    def process(self, role):
        return ProcessRef(self._pids[role], "fake", "1") if role in self._pids else None


def test_unknown_kind_names_the_known_ones_and_the_close_one():
    with pytest.raises(ConfigError) as e:
        build_fault(_spec(kind="proces-signal"), where="s.yaml: faults[0]")
    assert str(e.value) == ("s.yaml: faults[0].kind: expected one of fault-service, gpu-compute-overload, "
                            "gpu-memory-pressure, gpu-overheat, gpu-throttle, gpu-xid, partition, pod-delete, "
                            "pod-signal, process-signal, got 'proces-signal'; did you mean 'process-signal'?")


def test_builtin_kinds_are_imported_on_first_use():
    assert "process-signal" in faults.kinds()
    fault = build_fault(_spec())
    assert type(fault).__module__ == "ftlocust.fault_kinds.process_signal"


def test_a_kind_whose_library_is_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(faults.BUILTIN_KINDS, "needs-lib", "ftlocust.fault_kinds.no_such_module_here")
    with pytest.raises(ConfigError) as e:
        build_fault(_spec(kind="needs-lib"), where="faults[0]")
    assert str(e.value).startswith("faults[0].kind: needs-lib needs a library that is not installed")


def test_register_a_kind(monkeypatch):
    monkeypatch.setattr(faults, "REGISTRY", dict(faults.REGISTRY))

    @faults.register
    class Noop(Fault):
        kind = "noop"

    (fault,) = build_faults([_spec(kind="noop")], where="x.yaml: faults")
    assert isinstance(fault, Noop) and fault.where == "x.yaml: faults[0]"
    with pytest.raises(ConfigError, match=r"faults\[0\]\.extra: unknown field for kind noop"):
        build_faults([_spec(kind="noop", extra=1)])
    with pytest.raises(ValueError):
        faults.register(type("Nameless", (Fault,), {}))


def test_role_resolution():
    ctx = FaultContext(deployment=FakeDeployment())
    assert resolve_target(_spec("worker-2"), ctx, "f").role == "worker-2"
    with pytest.raises(ConfigError) as e:
        resolve_target(_spec("worker-9"), ctx, "f")
    assert "f.target: expected one of frontend, worker-1, worker-2, serving-worker, got 'worker-9'" in str(e.value)
    with pytest.raises(ConfigError, match="needs trigger.mid_stream_chunks"):
        resolve_target(_spec(SERVING_WORKER), ctx, "f")


def test_serving_worker_is_resolved_when_the_fault_fires():
    spec = _spec(SERVING_WORKER, trigger=TriggerSpec(mid_stream_chunks=10))
    found = []
    ctx = FaultContext(deployment=FakeDeployment(), resolve_serving=lambda: found[0] if found else None)
    target = resolve_target(spec, ctx, "f")
    assert target.role is None and "serving the probe" in target.describe()
    with pytest.raises(RuntimeError, match="could not find the worker serving"):
        resolve_at_fire(target, ctx)
    found.append("worker-2")
    assert resolve_at_fire(target, ctx).role == "worker-2"


def test_external_roles_are_only_the_named_processes():
    deployment = FakeDeployment(roles=("frontend", "worker-1"), pids={"worker-1": 4242})
    deployment.started_here = False
    ctx = FaultContext(deployment=deployment)
    target = resolve_target(_spec("worker-1"), ctx, "f")
    assert target.role == "worker-1" and target.process.pid == 4242
    assert target.describe() == "worker-1 (pid 4242: fake)"
    with pytest.raises(ConfigError, match="'frontend' is not a process named in target.pids"):
        resolve_target(_spec("frontend"), ctx, "f")
