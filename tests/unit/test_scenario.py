import argparse
import os

import pytest

from ftlocust.checks import build_checks
from ftlocust.errors import ConfigError
from ftlocust.faults import build_faults
from ftlocust.scenario import (FaultSpec, Scenario, StopSpec, TargetSpec, TriggerSpec, apply_overrides, load_flags,
                               load_scenario, scenario_from_dict, validate_triggers)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_shipped_scenarios_load():
    names = []
    for folder in (os.path.join(ROOT, "configs", sub) for sub in ("scenarios", "dynamo", "vllm", "dynamo-vllm", "k8s", "gpu")):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".yaml"):
                scenario = load_scenario(os.path.join(folder, name))
                assert scenario.name
                validate_triggers(scenario, total_budget=None, run_time_s=None)
                build_faults(scenario.faults)  # every kind's own fields too
                build_checks(scenario.checks)
                names.append(name)
    assert {"migration.yaml", "decode-worker-pod.yaml", "engine-core.yaml", "engine-core-migration-off.yaml"} <= set(names)


def test_migration_scenario_fields():
    s = load_scenario(os.path.join(ROOT, "configs", "scenarios", "migration.yaml"))
    assert s.target.kind == "reference" and s.target.workers == 2 and s.target.migration_limit == 3
    (fault,) = s.faults
    assert fault.kind == "process-signal" and fault.target == "serving-worker"
    assert fault.params == {"signal": "SIGKILL"}
    assert fault.trigger.mid_stream_chunks == 40 and fault.trigger.after_requests is None
    assert fault.trigger.source.endswith("migration.yaml: faults[0].trigger.mid_stream_chunks")
    assert fault.source.endswith("migration.yaml: faults[0]")
    assert s.probe == {"max_tokens": 400, "start_after_s": 8.0} and s.plugins == []


def _fault(**trigger):
    return {"kind": "process-signal", "target": "worker-1", "trigger": trigger}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "x", "bogus": 1}, "s.yaml: bogus: unknown field (expected one of checks, deployment, faults, gpu, load, name, "
                                    "plugins, probe, stop, target)"),
        ({"name": "x", "prob": {}}, "s.yaml: prob: unknown field (expected one of checks, deployment, faults, gpu, load, name, "
                                    "plugins, probe, stop, target); did you mean 'probe'?"),
        ({}, "s.yaml: name: missing (required)"),
        ({"name": ""}, "s.yaml: name: expected a non-empty string, got ''"),
        ({"name": 5}, "s.yaml: name: expected a non-empty string, got 5"),
        # target
        ({"name": "x", "target": "reference"}, "s.yaml: target: expected a mapping, got 'reference'"),
        ({"name": "x", "target": {"kind": "nomad"}}, "s.yaml: target.kind: expected one of reference, dynamo, external, k8s, vllm, dynamo-vllm, got 'nomad'"),
        ({"name": "x", "target": {"kind": "refrence"}}, "got 'refrence'; did you mean 'reference'?"),
        ({"name": "x", "target": {"workers": 0}}, "s.yaml: target.workers: expected an integer > 0, got 0"),
        ({"name": "x", "target": {"workers": "two"}}, "s.yaml: target.workers: expected an integer > 0, got 'two'"),
        ({"name": "x", "target": {"migration_limit": -1}}, "s.yaml: target.migration_limit: expected an integer >= 0, got -1"),
        ({"name": "x", "target": {"options": [1]}}, "s.yaml: target.options: expected a mapping, got [1]"),
        ({"name": "x", "target": {"options": {1: 2}}}, "s.yaml: target.options: expected a mapping of option name to value"),
        ({"name": "x", "target": {"kind": "external", "metrics": ["http://h"]}},
         "s.yaml: target.metrics: expected a mapping of role to string, got ['http://h']"),
        ({"name": "x", "target": {"workrs": 2}}, "s.yaml: target.workrs: unknown field (expected one of kind, logs, "
                                                 "metrics, migration_limit, options, pids, workers); did you mean 'workers'?"),
        # faults
        ({"name": "x", "faults": {"kind": "k"}}, "s.yaml: faults: expected a list of faults, got {'kind': 'k'}"),
        ({"name": "x", "faults": ["kill"]}, "s.yaml: faults[0]: expected a mapping, got 'kill'"),
        ({"name": "x", "faults": [{"kind": "process-signal", "target": "worker-1"}]}, "s.yaml: faults[0].trigger: missing (required)"),
        ({"name": "x", "faults": [{"target": "w", "trigger": {"after_requests": 1}}]}, "s.yaml: faults[0].kind: missing (required)"),
        ({"name": "x", "faults": [{**_fault(after_requests=1), "kind": 3}]}, "s.yaml: faults[0].kind: expected a non-empty string, got 3"),
        ({"name": "x", "faults": [{**_fault(after_requests=1), "target": ""}]}, "s.yaml: faults[0].target: expected a non-empty string, got ''"),
        ({"name": "x", "faults": [{**_fault(after_requests=1), "name": ["a"]}]}, "s.yaml: faults[0].name: expected a non-empty string, got ['a']"),
        ({"name": "x", "faults": [_fault(after_requests=1, after_seconds=2)]},
         "s.yaml: faults[0].trigger: expected exactly one of after_requests, after_seconds, mid_stream_chunks, "
         "got ['after_requests', 'after_seconds']"),
        ({"name": "x", "faults": [_fault()]}, "s.yaml: faults[0].trigger: expected exactly one of after_requests, "
                                              "after_seconds, mid_stream_chunks, got {}"),
        ({"name": "x", "faults": [{**_fault(), "trigger": 10}]}, "s.yaml: faults[0].trigger: expected a mapping, got 10"),
        ({"name": "x", "faults": [_fault(after_request=1)]}, "s.yaml: faults[0].trigger.after_request: unknown field "
                                                             "(expected one of after_requests, after_seconds, mid_stream_chunks); "
                                                             "did you mean 'after_requests'?"),
        ({"name": "x", "faults": [_fault(after_requests="ten")]}, "s.yaml: faults[0].trigger.after_requests: expected an integer > 0, got 'ten'"),
        ({"name": "x", "faults": [_fault(after_requests=0)]}, "s.yaml: faults[0].trigger.after_requests: expected an integer > 0, got 0"),
        ({"name": "x", "faults": [_fault(after_requests=2.5)]}, "s.yaml: faults[0].trigger.after_requests: expected an integer > 0, got 2.5"),
        ({"name": "x", "faults": [_fault(after_seconds=-1)]}, "s.yaml: faults[0].trigger.after_seconds: expected a number >= 0, got -1"),
        ({"name": "x", "faults": [_fault(after_seconds=True)]}, "s.yaml: faults[0].trigger.after_seconds: expected a number >= 0, got True"),
        ({"name": "x", "faults": [_fault(mid_stream_chunks=0)]}, "s.yaml: faults[0].trigger.mid_stream_chunks: expected an integer > 0, got 0"),
        # stop
        ({"name": "x", "stop": {"recovery_window_s": 0.1, "health_poll_s": 0.5}},
         "s.yaml: stop.recovery_window_s: expected a number >= 0.5 (the health poll interval, stop.health_poll_s), got 0.1"),
        ({"name": "x", "stop": {"recovery_window_s": 0}},
         "s.yaml: stop.recovery_window_s: expected a number >= 0.2 (the health poll interval, stop.health_poll_s), got 0"),
        ({"name": "x", "stop": {"recovery_window_s": "10s"}}, "s.yaml: stop.recovery_window_s: expected a number >= 0.2"),
        ({"name": "x", "stop": {"health_poll_s": 0}}, "s.yaml: stop.health_poll_s: expected a number > 0, got 0"),
        # probe
        ({"name": "x", "probe": {"max_tokens": "many"}}, "s.yaml: probe.max_tokens: expected an integer >= 1, got 'many'"),
        ({"name": "x", "probe": {"max_tokens": 0}}, "s.yaml: probe.max_tokens: expected an integer >= 1, got 0"),
        ({"name": "x", "probe": {"endpoint": "chat"}}, "s.yaml: probe.endpoint: expected one of completion-stream, chat-stream, got 'chat'"),
        ({"name": "x", "probe": {"start_after_s": -3}}, "s.yaml: probe.start_after_s: expected a number >= 0, got -3"),
        ({"name": "x", "probe": {"max_token": 5}}, "s.yaml: probe.max_token: unknown field (expected one of endpoint, "
                                                   "max_tokens, start_after_s); did you mean 'max_tokens'?"),
        # load: the flags' own parsers, named by the scenario path
        ({"name": "x", "load": {"rate": "fast"}}, "s.yaml: load.rate: expected a number > 0 (requests per second per user), got 'fast'"),
        ({"name": "x", "load": {"rate": 0}}, "s.yaml: load.rate: expected a number > 0 (requests per second per user), got 0"),
        ({"name": "x", "load": {"input_tokens": 1.5}}, "s.yaml: load.input_tokens: expected an integer >= 1, got 1.5"),
        ({"name": "x", "load": {"requests_per_client": -1}}, "s.yaml: load.requests_per_client: expected an integer >= 0, got -1"),
        ({"name": "x", "load": {"endpoint": "embeddings"}}, "s.yaml: load.endpoint: expected one of completion, completion-stream"),
        ({"name": "x", "load": {"cancel": "after-chunks:0"}}, "s.yaml: load.cancel: expected after-chunks:N with an integer N >= 1"),
        ({"name": "x", "load": {"request_timeout": None}}, "s.yaml: load.request_timeout: expected a number > 0 (seconds), got None"),
        ({"name": "x", "load": {"endpoint": "chat", "cancel": "after-chunks:3"}},
         "s.yaml: load.endpoint: expected a streaming endpoint (completion-stream, chat-stream or mix) for "
         "s.yaml: load.cancel after-chunks:3, got 'chat'"),
        ({"name": "x", "load": {"users": 5}}, "s.yaml: load.users: unknown field (expected one of cancel, endpoint, "
                                              "input_tokens, output_tokens, rate, request_timeout, requests_per_client)"),
        # checks and plugins
        ({"name": "x", "checks": {"check": "no_failures"}}, "s.yaml: checks: expected a list of checks, got {'check': 'no_failures'}"),
        ({"name": "x", "plugins": "mine"}, "s.yaml: plugins: expected a list of strings, got 'mine'"),
        ({"name": "x", "plugins": ["ok", 3]}, "s.yaml: plugins[1]: expected a non-empty string, got 3"),
        ({"name": "x", "plugins": ["my-plugin"]}, "s.yaml: plugins[0]: expected a module name (package.module) or a .py file path, got 'my-plugin'"),
    ],
)
def test_bad_scenarios_name_the_field(data, message):
    with pytest.raises(ConfigError) as e:
        scenario_from_dict(data, source="s.yaml")
    assert message in str(e.value)
    assert str(e.value).startswith("s.yaml: ")
    assert "\n" not in str(e.value)


def test_external_only_fields():
    s = scenario_from_dict({"name": "x", "target": {"kind": "external", "pids": {"worker-1": "pid:12"},
                                                    "metrics": {"frontend": "http://h/metrics"}}})
    assert s.target.pids == {"worker-1": "pid:12"} and s.target.metrics["frontend"] == "http://h/metrics"
    with pytest.raises(ConfigError, match=r"^s\.yaml: target\.logs: expected no logs for kind reference \(only for kind "
                                          r"external: ftlocust knows its own deployments\), got \{'a': '/x'\}$"):
        scenario_from_dict({"name": "x", "target": {"kind": "reference", "logs": {"a": "/x"}}}, source="s.yaml")
    with pytest.raises(ConfigError, match="target.pids: expected a mapping of role to string"):
        scenario_from_dict({"name": "x", "target": {"kind": "external", "pids": {"w": 12}}})


def test_good_values_are_kept_and_normalised():
    s = scenario_from_dict({
        "name": "x",
        "target": {"kind": "dynamo", "workers": 3, "migration_limit": 0, "options": {"speedup_ratio": 1.0}},
        "faults": [{"kind": "process-signal", "target": "frontend", "signal": "SIGINT", "restart": True,
                    "trigger": {"after_seconds": 5}},
                   {"name": "two", "kind": "process-signal", "target": "worker-1", "trigger": {"after_requests": 7}}],
        "stop": {"recovery_window_s": 12, "health_poll_s": 0.5},
        "probe": {"max_tokens": 600, "endpoint": "chat-stream", "start_after_s": 3},
        "load": {"endpoint": "Completion-Stream", "rate": "2", "cancel": "AFTER-CHUNKS:5", "request_timeout": 30},
        "checks": ["no_failures"],
        "plugins": ["my_pkg.faults", "plugins/extra.py"],
    })
    assert (s.target.kind, s.target.workers, s.target.migration_limit, s.target.options) == ("dynamo", 3, 0, {"speedup_ratio": 1.0})
    assert [f.name for f in s.faults] == ["process-signal:frontend", "two"]
    assert s.faults[0].params == {"signal": "SIGINT", "restart": True}  # the kind checks its own fields
    assert s.faults[0].trigger == TriggerSpec(after_seconds=5.0) and s.faults[1].trigger == TriggerSpec(after_requests=7)
    assert s.stop == StopSpec(recovery_window_s=12.0, health_poll_s=0.5)
    assert s.probe == {"max_tokens": 600, "endpoint": "chat-stream", "start_after_s": 3.0}
    assert s.load == {"endpoint": "completion-stream", "rate": 2.0, "cancel": "after-chunks:5", "request_timeout": 30.0}
    assert s.checks == ["no_failures"] and s.plugins == ["my_pkg.faults", "plugins/extra.py"]
    assert s.where == "<scenario>:"


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"^--ft-scenario: expected a scenario file, got '.*nope\.yaml' \(no such file\)$"):
        load_scenario(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"\(a folder\)$"):
        load_scenario(str(tmp_path))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: expected valid YAML, got a syntax error at line \d"):
        load_scenario(str(bad))
    listed = tmp_path / "list.yaml"
    listed.write_text("- name: x\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping at the top level, got \[\{'name': 'x'\}\]$"):
        load_scenario(str(listed))


def test_a_file_names_its_path_in_every_message(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\nprobe: {max_tokens: many}\n")
    with pytest.raises(ConfigError) as e:
        load_scenario(str(path))
    assert str(e.value) == f"{path}: probe.max_tokens: expected an integer >= 1, got 'many'"


# --- validate_triggers: unreachable triggers, before load -----------------------------------------


def _scenario(trigger: dict, probe: dict | None = None) -> Scenario:
    return scenario_from_dict({"name": "x", "probe": probe or {}, "faults": [_fault(**trigger)]}, source="x.yaml")


def test_trigger_beyond_the_request_budget():
    s = _scenario({"after_requests": 50})
    with pytest.raises(ConfigError) as e:
        validate_triggers(s, total_budget=20, run_time_s=None)
    assert str(e.value) == ("x.yaml: faults[0].trigger.after_requests: expected at most the total request budget 20 "
                            "(users × --ft-requests-per-client), got 50")
    validate_triggers(s, total_budget=50, run_time_s=None)
    validate_triggers(s, total_budget=None, run_time_s=None)  # no budget: runs until stopped


def test_trigger_from_the_flag_names_the_flag():
    s = apply_overrides(_scenario({"mid_stream_chunks": 40}), target_overrides={}, fault_after_requests=100000)
    with pytest.raises(ConfigError, match=r"^--ft-fault-after-requests: expected at most the total request budget 1000 "):
        validate_triggers(s, total_budget=1000, run_time_s=None)


def test_trigger_at_or_past_the_run_time():
    s = _scenario({"after_seconds": 30})
    with pytest.raises(ConfigError) as e:
        validate_triggers(s, total_budget=None, run_time_s=30)
    assert str(e.value) == "x.yaml: faults[0].trigger.after_seconds: expected less than the run time 30 s (-t), got 30.0"
    validate_triggers(s, total_budget=None, run_time_s=31)
    validate_triggers(s, total_budget=None, run_time_s=None)


def test_mid_stream_trigger_beyond_the_probe_length():
    s = _scenario({"mid_stream_chunks": 400}, probe={"max_tokens": 50})
    with pytest.raises(ConfigError) as e:
        validate_triggers(s, total_budget=None, run_time_s=None)
    assert str(e.value) == ("x.yaml: faults[0].trigger.mid_stream_chunks: expected at most probe.max_tokens 50 "
                            "(the probe stream's length), got 400")
    validate_triggers(_scenario({"mid_stream_chunks": 50}, probe={"max_tokens": 50}), total_budget=None, run_time_s=None)
    validate_triggers(_scenario({"mid_stream_chunks": 400}), total_budget=None, run_time_s=None)  # the default 400
    with pytest.raises(ConfigError, match=r"expected at most 400, the probe stream's default length \(probe\.max_tokens\), got 401$"):
        validate_triggers(_scenario({"mid_stream_chunks": 401}), total_budget=None, run_time_s=None)


def test_triggers_of_a_scenario_built_in_code_are_named_by_position():
    s = Scenario(name="t", faults=[FaultSpec(kind="k", target="x", trigger=TriggerSpec(after_requests=9))])
    with pytest.raises(ConfigError, match=r"^t: faults\[0\]\.trigger\.after_requests: expected at most"):
        validate_triggers(s, total_budget=3, run_time_s=None)


# --- apply_overrides: the run flags on a scenario ---------------------------------------------------


def _full() -> Scenario:
    return scenario_from_dict({"name": "m", "target": {"kind": "reference", "workers": 2, "migration_limit": 3,
                                                      "options": {"token_delay_s": 0.01}},
                               "faults": [_fault(mid_stream_chunks=40), _fault(after_seconds=9)],
                               "stop": {"health_poll_s": 0.2}}, source="m.yaml")


def test_overrides_return_a_new_scenario():
    s = _full()
    new = apply_overrides(s, target_overrides={"workers": 4, "migration_limit": 0, "token_delay_s": None, "x": 1},
                          recovery_window_s=5.0, fault_after_requests=None, fault_after_seconds=None, target_kind=None)
    assert (new.target.workers, new.target.migration_limit, new.target.options) == (4, 0, {"token_delay_s": 0.01, "x": 1})
    assert new.stop.recovery_window_s == 5.0
    assert (s.target.workers, s.target.options, s.stop.recovery_window_s) == (2, {"token_delay_s": 0.01}, None)  # untouched
    assert apply_overrides(s, target_overrides={}) == s


def test_fault_flags_replace_the_first_trigger_only():
    s = _full()
    new = apply_overrides(s, target_overrides={}, fault_after_requests=30)
    assert new.faults[0].trigger == TriggerSpec(after_requests=30) and new.faults[0].trigger.source == "--ft-fault-after-requests"
    assert new.faults[1].trigger == TriggerSpec(after_seconds=9.0)
    new = apply_overrides(s, target_overrides={}, fault_after_seconds=2)
    assert new.faults[0].trigger == TriggerSpec(after_seconds=2.0) and new.faults[0].trigger.source == "--ft-fault-after-seconds"
    with pytest.raises(ConfigError, match=r"^--ft-fault-after-seconds: expected one trigger: --ft-fault-after-requests or "
                                          r"--ft-fault-after-seconds, not both, got 2$"):
        apply_overrides(s, target_overrides={}, fault_after_requests=3, fault_after_seconds=2)
    assert apply_overrides(Scenario(name="none"), target_overrides={}, fault_after_requests=3).faults == []


def test_another_target_kind_drops_the_scenario_options():
    s = _full()
    new = apply_overrides(s, target_overrides={}, target_kind="dynamo")
    assert (new.target.kind, new.target.options, new.target.workers) == ("dynamo", {}, 2)
    assert apply_overrides(s, target_overrides={}, target_kind="reference").target.options == {"token_delay_s": 0.01}
    with pytest.raises(ConfigError, match=r"^--ft-target: expected one of reference, dynamo, external, k8s, vllm, dynamo-vllm, got 'nomad'$"):
        apply_overrides(s, target_overrides={}, target_kind="nomad")
    external = scenario_from_dict({"name": "e", "target": {"kind": "external", "pids": {"worker-1": "pid:1"}}})
    with pytest.raises(ConfigError, match=r"^--ft-target: expected no --ft-target with an external scenario target"):
        apply_overrides(external, target_overrides={}, target_kind="reference")


@pytest.mark.parametrize("kwargs, message", [
    ({"target_overrides": {"workers": 0}}, "--ft-target-workers: expected an integer > 0, got 0"),
    ({"target_overrides": {"migration_limit": -1}}, "--ft-target-migration-limit: expected an integer >= 0, got -1"),
    ({"target_overrides": {"token_delay_s": 0.1}, "target_kind": "dynamo"},
     "--ft-target-token-delay: expected no value for a dynamo target (only the reference deployment has a token delay), got 0.1"),
    ({"target_overrides": {}, "recovery_window_s": 0.05},
     "--ft-recovery-window: expected a number >= 0.2 (the health poll interval, stop.health_poll_s), got 0.05"),
    ({"target_overrides": {}, "fault_after_requests": 0}, "--ft-fault-after-requests: expected an integer > 0, got 0"),
    ({"target_overrides": {}, "fault_after_seconds": -1}, "--ft-fault-after-seconds: expected a number >= 0, got -1"),
])
def test_bad_overrides_name_the_flag(kwargs, message):
    with pytest.raises(ConfigError) as e:
        apply_overrides(_full(), **kwargs)
    assert str(e.value) == message


# --- load_flags: the scenario's load: as flag values ------------------------------------------------


def _parsed(**flags):
    defaults = {"ft_endpoint": "chat-stream", "ft_input_tokens": 100, "ft_output_tokens": 100, "ft_rate": 1.0,
                "ft_requests_per_client": 100, "ft_cancel": "none", "ft_request_timeout": 60.0}
    return argparse.Namespace(**{**defaults, **flags}), defaults


def test_scenario_load_replaces_defaults_and_an_explicit_flag_wins():
    s = scenario_from_dict({"name": "x", "load": {"endpoint": "completion-stream", "requests_per_client": 5, "rate": 2}})
    parsed, defaults = _parsed(ft_rate=4.0)
    assert load_flags(s, parsed, defaults) == {"ft_endpoint": "completion-stream", "ft_requests_per_client": 5}
    assert parsed.ft_endpoint == "chat-stream"  # pure: the caller sets what it returns
    assert load_flags(Scenario(name="none"), parsed, defaults) == {}


def test_scenario_load_cross_check_names_each_value_where_it_came_from():
    s = scenario_from_dict({"name": "x", "load": {"cancel": "after-chunks:2"}}, source="x.yaml")
    parsed, defaults = _parsed(ft_endpoint="chat")
    with pytest.raises(ConfigError) as e:
        load_flags(s, parsed, defaults)
    assert str(e.value) == ("--ft-endpoint: expected a streaming endpoint (completion-stream, chat-stream or mix) "
                            "for x.yaml: load.cancel after-chunks:2, got 'chat'")
    s = scenario_from_dict({"name": "x", "load": {"endpoint": "chat"}}, source="x.yaml")
    parsed, defaults = _parsed(ft_cancel="after-chunks:2")
    with pytest.raises(ConfigError, match=r"^x\.yaml: load\.endpoint: expected a streaming endpoint .* for --ft-cancel "
                                          r"after-chunks:2, got 'chat'$"):
        load_flags(s, parsed, defaults)


def test_k8s_flags_fill_a_k8s_targets_options_and_are_refused_for_others():
    s = scenario_from_dict({"name": "k", "target": {"kind": "k8s", "options": {"frontend": "port-forward"}}})
    out = apply_overrides(s, target_overrides={"namespace": "dynamo", "dynamo_graph": "vllm-agg", "context": None})
    assert out.target.options == {"frontend": "port-forward", "namespace": "dynamo", "dynamo_graph": "vllm-agg"}
    reference = scenario_from_dict({"name": "r"})
    with pytest.raises(ConfigError) as e:
        apply_overrides(reference, target_overrides={"namespace": "dynamo"})
    assert str(e.value) == ("--ft-k8s-namespace: expected only for a k8s target (the scenario's target is "
                            "reference), got 'dynamo'")
