"""The Dynamo target's pure parts: the tiny model files, option validation, env detection, ports.
No Dynamo env needed (the end-to-end tests are tests/integration/test_dynamo_target.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftlocust import dynamo_env
from ftlocust.errors import ConfigError
from ftlocust.targets import tinymodel
from ftlocust.targets.dynamo import SYSTEM_PORT_RANGE, DynamoDeployment, free_system_ports


def test_tiny_model_is_deterministic_and_complete(tmp_path):
    a = tinymodel.write_tiny_model(tmp_path / "a")
    b = tinymodel.write_tiny_model(tmp_path / "b")
    for name in tinymodel.FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    config = json.loads((a / "config.json").read_text())
    for key in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size", "head_dim",
                "torch_dtype", "vocab_size", "eos_token_id", "max_position_embeddings"):
        assert key in config, key
    assert json.loads((a / "tokenizer_config.json").read_text())["chat_template"]


def test_tiny_model_reuses_a_complete_folder(tmp_path):
    dest = tinymodel.write_tiny_model(tmp_path / "m")
    (dest / "config.json").write_text("{}")  # marker: a second call must not rewrite
    tinymodel.write_tiny_model(dest)
    assert (dest / "config.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging folder left behind


def test_tiny_vocab_has_words_where_the_mocker_emits_ids():
    vocab, merges = tinymodel.build_vocab()
    assert len(vocab) == tinymodel.ORDINARY_TOKENS >= 2000
    by_id = {i: tok for tok, i in vocab.items()}
    assert len(by_id) == len(vocab)  # ids unique
    # Mocker ids 1000..1999: every one a leading-space word ("Ġ" is GPT-2's stand-in for " ").
    assert all(by_id[i].startswith("Ġ") and len(by_id[i]) > 2 for i in range(1000, 2000))
    for merge in merges:  # each merge joins two known tokens into a known token
        left, right = merge.split(" ")
        assert left in vocab and right in vocab and left + right in vocab, merge
    data = tinymodel.tokenizer_json()
    assert [t["id"] for t in data["added_tokens"]] == [4096, 4097]


@pytest.mark.parametrize(
    "options, field",
    [
        ({"workers": 0}, "workers"),
        ({"workers": "2"}, "workers"),
        ({"port": 70000}, "port"),
        ({"migration_limit": -1}, "migration_limit"),
        ({"model": "a b"}, "model"),
        ({"speedup_ratio": 0}, "speedup_ratio"),
        ({"worker_drain_s": -3}, "worker_drain_s"),
        ({"worker_env": ["X=1"]}, "worker_env"),
        ({"extra_worker_args": "--block-size 16"}, "extra_worker_args"),
        ({"extra_frontend_args": [1]}, "extra_frontend_args"),
        ({"network": "host"}, "network"),
    ],
)
def test_bad_options_name_the_field(tmp_path, options, field):
    with pytest.raises(ConfigError, match=f"^{field}: expected"):
        DynamoDeployment(tmp_path, env_path=tmp_path / "no-env", **options)


def test_missing_env_says_how_to_create_it(tmp_path):
    with pytest.raises(ConfigError, match=r"no Dynamo environment at .*python -m ftlocust.dynamo_env"):
        DynamoDeployment(tmp_path / "run", env_path=tmp_path / "no-env")


def test_env_detection_and_refusals(tmp_path, monkeypatch, capsys):
    assert not dynamo_env.is_complete(tmp_path)
    monkeypatch.setenv(dynamo_env.ENV_VAR, str(tmp_path / "custom"))
    assert dynamo_env.default_env_path() == tmp_path / "custom"
    assert dynamo_env.main(["--check", "--path", str(tmp_path)]) == 1
    (tmp_path / "somefile").write_text("x")
    assert dynamo_env.main(["--path", str(tmp_path)]) == 1  # not empty, not a venv: refused
    assert "is not empty and is not a virtual environment" in capsys.readouterr().err
    fake = tmp_path / "fake-env"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "python").write_text("")
    (fake / dynamo_env.MARKER).write_text(dynamo_env.marker_text())
    assert dynamo_env.is_complete(fake)
    assert dynamo_env.create_env(fake, quiet=True) == fake.resolve()  # complete: reused, nothing run


def test_system_ports_fit_dynamos_i16_parser():
    ports = free_system_ports(8)
    assert len(set(ports)) == 8
    assert all(SYSTEM_PORT_RANGE[0] <= p <= SYSTEM_PORT_RANGE[1] <= 32767 for p in ports)


SCENARIOS = sorted((Path(__file__).resolve().parents[2] / "configs" / "dynamo").glob("*.yaml"))


def test_every_issue_drill_has_a_scenario():
    names = {p.stem for p in SCENARIOS}
    assert {"migration-sigkill", "migration-sigterm", "migration-sigterm-short-drain", "migration-off",
            "cancellation", "frontend-sigint", "frontend-sigkill", "rejection"} <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_dynamo_scenarios_load_and_validate(path, tmp_path):
    from ftlocust.checks import build_checks
    from ftlocust.faults import build_fault
    from ftlocust.scenario import load_scenario

    scenario = load_scenario(str(path))
    assert scenario.target.kind == "dynamo" and scenario.name == f"dynamo-{path.stem}"
    build_checks(scenario.checks)
    for spec in scenario.faults:
        build_fault(spec)
    # Every option is a DynamoDeployment keyword with a valid value: validation gets as far as
    # looking for the (absent) env.
    with pytest.raises(ConfigError, match="no Dynamo environment"):
        DynamoDeployment(tmp_path, workers=scenario.target.workers, migration_limit=scenario.target.migration_limit,
                         env_path=tmp_path / "no-env", **scenario.target.options)
