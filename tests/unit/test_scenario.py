import os

import pytest

from ftlocust.errors import ConfigError
from ftlocust.scenario import load_scenario, scenario_from_dict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_shipped_scenarios_load():
    folder = os.path.join(ROOT, "configs", "scenarios")
    names = [n for n in os.listdir(folder) if n.endswith(".yaml")]
    assert names
    for name in names:
        scenario = load_scenario(os.path.join(folder, name))
        assert scenario.name


def test_migration_scenario_fields():
    s = load_scenario(os.path.join(ROOT, "configs", "scenarios", "migration.yaml"))
    assert s.target.kind == "reference" and s.target.workers == 2 and s.target.migration_limit == 3
    (fault,) = s.faults
    assert fault.kind == "process-signal" and fault.target == "serving-worker"
    assert fault.params == {"signal": "SIGKILL"}
    assert fault.trigger.mid_stream_chunks == 40 and fault.trigger.after_requests is None


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "x", "bogus": 1}, "unknown field 'bogus'"),
        ({}, "name: expected a non-empty string"),
        ({"name": "x", "target": {"kind": "k8s"}}, "target.kind: expected one of reference, dynamo, external"),
        ({"name": "x", "target": {"workers": 0}}, "target.workers: expected a value > 0"),
        ({"name": "x", "faults": [{"kind": "process-signal", "target": "worker-1"}]}, "faults[0]: missing field 'trigger'"),
        (
            {"name": "x", "faults": [{"kind": "k", "target": "t", "trigger": {"after_requests": 1, "after_seconds": 2}}]},
            "faults[0].trigger: expected exactly one of",
        ),
        (
            {"name": "x", "faults": [{"kind": "k", "target": "t", "trigger": {"after_requests": "ten"}}]},
            "faults[0].trigger.after_requests: expected an integer",
        ),
        ({"name": "x", "stop": {"recovery_window_s": 0.1, "health_poll_s": 0.5}}, "shorter than the health poll"),
    ],
)
def test_bad_scenarios_name_the_field(data, message):
    with pytest.raises(ConfigError) as e:
        scenario_from_dict(data, source="s.yaml")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_scenario(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_scenario(str(bad))


def test_load_section_keys_are_validated():
    s = scenario_from_dict({"name": "x", "load": {"endpoint": "chat", "requests_per_client": 5}})
    assert s.load == {"endpoint": "chat", "requests_per_client": 5}
    with pytest.raises(ConfigError, match="load: unknown field 'users'"):
        scenario_from_dict({"name": "x", "load": {"users": 5}}, source="s.yaml")


def test_external_target_evidence_fields():
    s = scenario_from_dict({"name": "x", "target": {"kind": "external", "pids": {"worker-1": "pid:12"},
                                                    "metrics": {"frontend": "http://h/metrics"}}})
    assert s.target.pids == {"worker-1": "pid:12"} and s.target.metrics["frontend"] == "http://h/metrics"
    with pytest.raises(ConfigError, match="only for kind external"):
        scenario_from_dict({"name": "x", "target": {"kind": "reference", "logs": {"a": "/x"}}})
    with pytest.raises(ConfigError, match="target.pids: expected a mapping of role to string"):
        scenario_from_dict({"name": "x", "target": {"kind": "external", "pids": {"w": 12}}})
