"""The partition kind's fields, target resolution and bad input, against a stand-in deployment
and a stand-in lab (no namespaces: tests/integration/test_partition_drill.py runs it for real)."""

import pytest

from ftlocust.errors import ConfigError
from ftlocust.faults import FaultContext, build_fault
from ftlocust.netns import Partition
from ftlocust.scenario import FaultSpec, TriggerSpec


class Lab:
    ready = True

    def __init__(self):
        self.applied, self.removed = [], []

    def plan(self, a, b, port=None, mode="drop"):
        rule = {"priority": 1000, "src": a, "dst": b, "action": "blackhole" if mode == "drop" else "prohibit"}
        if port:
            rule.update(ip_proto=6, dport=port)
        return Partition(a, b, port, mode, "ftl-x-net", [rule])

    def apply(self, partition):
        self.applied.append(partition)

    def unblock(self, partition):
        self.removed.append(partition)


class Deployment:
    frontend_role = "frontend"
    started_here = True

    def __init__(self, lab=None, workers=2):
        self.partitioner = lab
        self.workers = workers

    def roles(self):
        return ["frontend", *self.worker_roles()]

    def worker_roles(self):
        return [f"worker-{i}" for i in range(1, self.workers + 1)]

    def registry_endpoint(self):
        return "frontend", 8000


def _fault(target="worker-1", **params):
    spec = FaultSpec(kind="partition", target=target, trigger=TriggerSpec(after_seconds=1), params=params, name="cut",
                     duration_s=params.pop("duration_s", None))
    return build_fault(spec, where="f")


class Guardian:
    def __init__(self, lab):
        self.lab, self.held = lab, []

    def hold(self, action):
        assert not self.lab.applied, "a rule went in before every rollback was held"
        self.held.append(action)
        return len(self.held)

    def release(self, hold_id):
        pass


@pytest.mark.parametrize("partition, params, cuts", [
    ("frontend_worker", {}, [("worker-1", "frontend", None)]),
    ("worker_worker", {}, [("worker-1", "worker-2"), ("worker-1", "worker-3")]),
    ("worker_nats", {}, [("worker-1", "frontend", 8000)]),
    ("custom", {"peers": ["client", "worker-2"]}, [("worker-1", "client"), ("worker-1", "worker-2")]),
])
def test_each_partition_type_cuts_the_seeds_pairs_guarded_before_applied(partition, params, cuts):
    lab = Lab()
    ctx = FaultContext(deployment=Deployment(lab, workers=3))
    ctx.guardian = Guardian(lab)
    fault = _fault(partition=partition, duration_s=4, **params)
    fault.preflight(ctx)
    assert fault.reversible and fault.scheduled_recovery_s() == 4
    event = fault.inject(ctx)
    assert [(p.a, p.b, p.port)[:len(c)] for p, c in zip(lab.applied, cuts)] == cuts and len(lab.applied) == len(cuts)
    assert [a["kind"] for a in ctx.guardian.held] == ["rules-delete"] * len(cuts)
    assert event.detail["partition"] == partition and event.target.startswith("worker-1|")
    assert fault.recover(ctx).startswith("lifted partition worker-1|")
    assert lab.removed == lab.applied and event.recovered_at is not None
    assert fault.recover(ctx) is None  # once


@pytest.mark.parametrize("deployment, target, params, message", [
    (Deployment(None), "worker-1", {}, "f.kind: partition needs a deployment in network namespaces"),
    (Deployment(Lab()), "worker-9", {}, "f.target: expected one of frontend, worker-1, worker-2, serving-worker, got 'worker-9'"),
    (Deployment(Lab()), "pid:1", {}, "f.target: a partition cuts a role of the deployment, not a pid"),
    (Deployment(Lab()), "frontend", {"partition": "worker_nats"}, "f.target: partition worker_nats cuts a worker"),
    (Deployment(Lab(), workers=1), "worker-1", {"partition": "worker_worker"}, "worker_worker needs another worker"),
    (Deployment(Lab()), "worker-1", {"partition": "custom", "peers": ["db"]}, "f.peers: expected roles of frontend"),
    (Deployment(Lab()), "worker-1", {"partition": "custom"}, "f.peers: expected a list of roles for partition custom"),
    (Deployment(Lab()), "worker-1", {"peers": ["frontend"]}, "f.peers: only for partition custom"),
    (Deployment(Lab()), "worker-1", {"partition": "FRONTEND_WORKER"}, "f.partition: expected one of frontend_worker"),
    (Deployment(Lab()), "worker-1", {"mode": "loss"}, "f.mode: expected one of drop, reject"),
    (Deployment(Lab()), "worker-1", {"delay_ms": 5}, "f.delay_ms: unknown field"),
])
def test_bad_partitions_are_one_line_errors_before_load(deployment, target, params, message):
    with pytest.raises(ConfigError) as e:
        _fault(target, **params).preflight(FaultContext(deployment=deployment))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_serving_worker_is_resolved_and_planned_when_it_fires():
    lab = Lab()
    ctx = FaultContext(deployment=Deployment(lab), resolve_serving=lambda: "worker-2")
    spec = FaultSpec(kind="partition", target="serving-worker", trigger=TriggerSpec(mid_stream_chunks=5), name="cut")
    fault = build_fault(spec, where="f")
    fault.preflight(ctx)
    assert "the worker serving the probe request" in fault.describe()
    fault.inject(ctx)
    assert [(p.a, p.b) for p in lab.applied] == [("worker-2", "frontend")]
