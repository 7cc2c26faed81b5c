"""Load flags → LoadOptions, and --ft-cancel → CancelPolicy: values, defaults, one-line errors."""

from __future__ import annotations

import argparse

import pytest
from locust.argument_parser import get_parser

from ftlocust import options
from ftlocust.cancel import NO_CANCEL, CancelPolicy, selected
from ftlocust.errors import ConfigError
from ftlocust.options import LoadOptions


def parse(*args: str) -> argparse.Namespace:
    return get_parser(default_config_files=[]).parse_args(["-f", "locustfiles/load.py", *args])


# --- LoadOptions ---------------------------------------------------------------------------------


def test_defaults_are_the_seed_load():
    o = LoadOptions.from_parsed(None)
    assert o == LoadOptions()
    assert (o.endpoint, o.model, o.input_tokens, o.output_tokens) == ("chat-stream", None, 100, 100)
    assert (o.rate, o.requests_per_client, o.cancel, o.verify_tokens, o.ttft_rows) == (1.0, 100, NO_CANCEL, "auto", True)
    assert o.min_interval_s == 1.0


def test_from_parsed_converts_every_flag():
    ns = argparse.Namespace(ft_endpoint="Mix", ft_model=" m1 ", ft_input_tokens="7", ft_output_tokens=9, ft_rate="2.5",
                            ft_requests_per_client="0", ft_cancel="after-chunks:3@0.5", ft_request_timeout="1.5",
                            ft_verify_tokens="OFF", ft_no_ttft_rows=True)
    o = LoadOptions.from_parsed(ns)
    assert o == LoadOptions(endpoint="mix", model="m1", input_tokens=7, output_tokens=9, rate=2.5,
                            requests_per_client=0, cancel=CancelPolicy("after-chunks", 3, 0.5),
                            request_timeout_s=1.5, verify_tokens="off", ttft_rows=False)
    assert o.min_interval_s == 0.4


@pytest.mark.parametrize("field, value, message", [
    ("ft_endpoint", "embeddings", "--ft-endpoint: expected one of completion, completion-stream, chat, chat-stream, mix, got 'embeddings'"),
    ("ft_rate", "0", "--ft-rate: expected a number > 0 (requests per second per user), got '0'"),
    ("ft_rate", -1.0, "--ft-rate: expected a number > 0 (requests per second per user), got -1.0"),
    ("ft_rate", "fast", "--ft-rate: expected a number > 0 (requests per second per user), got 'fast'"),
    ("ft_rate", "inf", "--ft-rate: expected a number > 0 (requests per second per user), got 'inf'"),
    ("ft_input_tokens", "0", "--ft-input-tokens: expected an integer >= 1, got '0'"),
    ("ft_input_tokens", 0, "--ft-input-tokens: expected an integer >= 1, got 0"),
    ("ft_output_tokens", "1.5", "--ft-output-tokens: expected an integer >= 1, got '1.5'"),
    ("ft_requests_per_client", "-3", "--ft-requests-per-client: expected an integer >= 0, got '-3'"),
    ("ft_request_timeout", True, "--ft-request-timeout: expected a number > 0 (seconds), got True"),
    ("ft_request_timeout", "0", "--ft-request-timeout: expected a number > 0 (seconds), got '0'"),
    ("ft_verify_tokens", "maybe", "--ft-verify-tokens: expected one of auto, on, off, got 'maybe'"),
    ("ft_endpoint", "chat-strem", "--ft-endpoint: expected one of completion, completion-stream, chat, chat-stream, mix, "
                                  "got 'chat-strem'; did you mean 'chat-stream'?"),
    ("ft_cancel", "after-chunks", "--ft-cancel: expected after-chunks:N with an integer N >= 1, got 'after-chunks'"),
])
def test_bad_values_are_one_line_naming_the_flag(field, value, message):
    with pytest.raises(ConfigError) as e:
        LoadOptions.from_parsed(argparse.Namespace(**{field: value}))
    assert str(e.value) == message


def test_after_chunks_needs_a_streaming_endpoint():
    with pytest.raises(ConfigError, match=r"^--ft-endpoint: expected a streaming endpoint \(completion-stream, chat-stream or mix\) "
                                          r"for --ft-cancel after-chunks:2, got 'completion'$"):
        LoadOptions(endpoint="completion", cancel=CancelPolicy.parse("after-chunks:2"))
    LoadOptions(endpoint="mix", cancel=CancelPolicy.parse("after-chunks:2"))  # streams of the mix only
    LoadOptions(endpoint="chat", cancel=CancelPolicy.parse("after-ms:5"))


def test_options_are_frozen():
    with pytest.raises(Exception):
        LoadOptions().rate = 2.0  # type: ignore[misc]


# --- CancelPolicy --------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, mode, value, fraction, canonical", [
    ("none", "none", None, 1.0, "none"),
    ("", "none", None, 1.0, "none"),
    (" Before-First-Token ", "before-first-token", None, 1.0, "before-first-token"),
    ("before-first-token@0.25", "before-first-token", None, 0.25, "before-first-token@0.25"),
    ("after-chunks:5", "after-chunks", 5, 1.0, "after-chunks:5"),
    ("after-chunks:5@1", "after-chunks", 5, 1.0, "after-chunks:5"),
    ("after-ms:250", "after-ms", 250.0, 1.0, "after-ms:250"),
    ("after-ms:0.5@0.1", "after-ms", 0.5, 0.1, "after-ms:0.5@0.1"),
])
def test_cancel_specs(spec, mode, value, fraction, canonical):
    p = CancelPolicy.parse(spec)
    assert (p.mode, p.value, p.fraction, p.spec, str(p)) == (mode, value, fraction, canonical, canonical)
    assert p.active == (mode != "none")
    assert CancelPolicy.parse(p.spec) == p


@pytest.mark.parametrize("spec, part", [
    ("sometimes", "expected none, before-first-token, after-chunks:N or after-ms:T"),
    ("after-chunk:3", "got 'after-chunk:3'; did you mean 'after-chunks'?"),
    ("after-chunks:0", "expected after-chunks:N with an integer N >= 1, got 'after-chunks:0'"),
    ("after-chunks:2.5", "expected after-chunks:N with an integer N >= 1"),
    ("after-ms:-1", "expected after-ms:T with milliseconds T >= 0, got 'after-ms:-1'"),
    ("after-ms:x", "expected after-ms:T with milliseconds T >= 0"),
    ("after-ms:nan", "expected after-ms:T with milliseconds T >= 0"),
    ("after-ms:10@0", "expected @fraction with 0 < f <= 1, got 'after-ms:10@0'"),
    ("after-ms:10@1.5", "expected @fraction with 0 < f <= 1"),
    ("after-ms:10@half", "expected @fraction with 0 < f <= 1"),
    ("before-first-token:3", "expected before-first-token without a value"),
    ("none@0.5", "expected none without @fraction"),
    (5, "got 5"),
])
def test_malformed_cancel_specs(spec, part):
    with pytest.raises(ConfigError) as e:
        CancelPolicy.parse(spec)
    assert str(e.value).startswith("--ft-cancel: expected ") and part in str(e.value) and "\n" not in str(e.value)


def test_cancel_errors_name_where_the_policy_came_from():
    with pytest.raises(ConfigError, match=r"^x\.yaml: load\.cancel: expected after-ms:T"):
        CancelPolicy.parse("after-ms:x", where="x.yaml: load.cancel")


def test_which_requests_a_policy_cancels():
    assert not NO_CANCEL.applies(1, stream=True)
    chunks = CancelPolicy.parse("after-chunks:2")
    assert chunks.applies(1, stream=True) and not chunks.applies(1, stream=False)
    assert CancelPolicy.parse("after-ms:1").applies(1, stream=False)
    half = CancelPolicy.parse("after-ms:1@0.5")
    picks = [half.applies(seed, stream=True) for seed in range(10_000)]
    assert picks == [half.applies(seed, stream=True) for seed in range(10_000)]  # reproducible
    assert 4_500 < sum(picks) < 5_500
    assert sum(selected(seed, 0.1) for seed in range(10_000)) in range(900, 1_100)
    assert all(selected(seed, 1.0) for seed in range(100))


def test_timer_delays():
    assert CancelPolicy.parse("after-ms:250").timer_delay_s(stream=True) == 0.25
    assert CancelPolicy.parse("before-first-token").timer_delay_s(stream=False) > 0
    assert CancelPolicy.parse("after-chunks:3").timer_delay_s(stream=True) is None
    assert NO_CANCEL.timer_delay_s(stream=True) is None


# --- the Locust parser ---------------------------------------------------------------------------


def test_flags_are_on_locusts_parser_with_defaults():
    ns = parse()
    assert (ns.ft_endpoint, ns.ft_model, ns.ft_input_tokens, ns.ft_output_tokens) == ("chat-stream", "", 100, 100)
    assert (ns.ft_rate, ns.ft_requests_per_client, ns.ft_cancel, ns.ft_verify_tokens) == (1.0, 100, "none", "auto")
    assert (ns.num_users, ns.spawn_rate) == (10, 10.0)  # the seed's 10 clients
    assert LoadOptions.from_parsed(ns) == LoadOptions()
    ns = parse("--ft-endpoint", "completion", "--ft-rate", "2", "--ft-cancel", "After-MS:50@0.25", "-u", "3",
               "--ft-no-ttft-rows", "--ft-request-timeout", "9")
    assert (ns.ft_endpoint, ns.ft_rate, ns.ft_cancel, ns.num_users, ns.ft_request_timeout) == ("completion", 2.0, "after-ms:50@0.25", 3, 9.0)
    assert LoadOptions.from_parsed(ns).ttft_rows is False


def test_flags_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FTLOCUST_ENDPOINT", "chat")
    monkeypatch.setenv("FTLOCUST_REQUESTS_PER_CLIENT", "7")
    monkeypatch.setenv("FTLOCUST_CANCEL", "before-first-token")
    ns = parse()
    assert (ns.ft_endpoint, ns.ft_requests_per_client, ns.ft_cancel) == ("chat", 7, "before-first-token")


def test_flags_show_in_the_web_ui():
    parser = get_parser(default_config_files=[])
    shown = set(parser.args_included_in_web_ui)
    assert {"ft_endpoint", "ft_model", "ft_rate", "ft_cancel", "ft_requests_per_client", "ft_request_timeout"} <= shown
    assert "ft_no_ttft_rows" not in shown


@pytest.mark.parametrize("args, line", [
    (["--ft-rate", "0"], "ftlocust: --ft-rate: expected a number > 0 (requests per second per user), got '0'"),
    (["--ft-endpoint", "nope"], "ftlocust: --ft-endpoint: expected one of completion, completion-stream, chat, chat-stream, mix, got 'nope'"),
    (["--ft-cancel", "after-ms"], "ftlocust: --ft-cancel: expected after-ms:T with milliseconds T >= 0, got 'after-ms'"),
    (["--ft-input-tokens", "many"], "ftlocust: --ft-input-tokens: expected an integer >= 1, got 'many'"),
])
def test_bad_flags_exit_2_with_one_line(args, line, capsys):
    with pytest.raises(SystemExit) as e:
        parse(*args)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == line


def test_cross_flag_check_at_init(capsys):
    class Env:
        parsed_options = parse("--ft-endpoint", "chat", "--ft-cancel", "after-chunks:4")

    with pytest.raises(SystemExit) as e:
        options.validate_on_init(Env())
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == ("ftlocust: --ft-endpoint: expected a streaming endpoint (completion-stream, "
                                               "chat-stream or mix) for --ft-cancel after-chunks:4, got 'chat'")

    class Worker:
        parsed_options = argparse.Namespace(worker=True, ft_endpoint="chat", ft_cancel="after-chunks:4")

    options.validate_on_init(Worker())  # workers get the master's options later


# --- the run flags (registered by hooks): one rule each ---------------------------------------------


@pytest.mark.parametrize("dest, value, message", [
    ("ft_fault_after_requests", 0, "--ft-fault-after-requests: expected an integer > 0, got 0"),
    ("ft_target_workers", "none", "--ft-target-workers: expected an integer > 0, got 'none'"),
    ("ft_target_migration_limit", -1, "--ft-target-migration-limit: expected an integer >= 0, got -1"),
    ("ft_fault_after_seconds", -0.5, "--ft-fault-after-seconds: expected a number >= 0, got -0.5"),
    ("ft_recovery_window", float("nan"), "--ft-recovery-window: expected a number >= 0, got nan"),
    ("ft_target_token_delay", -1.0, "--ft-target-token-delay: expected a number >= 0, got -1.0"),
])
def test_run_flags_are_checked_by_one_rule_each(dest, value, message):
    with pytest.raises(ConfigError) as e:
        options.check_run_flags(argparse.Namespace(**{dest: value}))
    assert str(e.value) == message


def test_run_flags_that_are_fine_or_unset_pass():
    options.check_run_flags(argparse.Namespace(ft_fault_after_requests=5, ft_target_workers=1, ft_target_migration_limit=0,
                                               ft_fault_after_seconds=0.0, ft_recovery_window=None))
    options.check_run_flags(argparse.Namespace())
    assert options.run_flag("ft_target_workers", "3") == 3 and options.run_flag("ft_recovery_window", "2") == 2.0


def test_run_flag_type_is_one_line_and_exit_2(capsys):
    convert = options.run_flag_type("ft_target_workers")
    assert convert("2") == 2
    with pytest.raises(SystemExit) as e:
        convert("two")
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "ftlocust: --ft-target-workers: expected an integer > 0, got 'two'"


def test_every_load_flag_has_one_parser_for_flag_and_scenario():
    assert [f.key for f in options.LOAD_FLAGS] == ["endpoint", "input_tokens", "output_tokens", "rate",
                                                   "requests_per_client", "cancel", "request_timeout"]
    rate = options.LOAD_FLAG["rate"]
    assert rate.parse("2.5", rate.flag) == 2.5 and options.LOAD_FLAG["cancel"].parse("AFTER-MS:5", "x") == "after-ms:5"
    with pytest.raises(ConfigError, match=r"^x\.yaml: load\.rate: expected a number > 0 \(requests per second per user\), got 'fast'$"):
        rate.parse("fast", "x.yaml: load.rate")
    ns = parse()
    for f in options.LOAD_FLAGS:  # the registered default is the one LoadOptions falls back to
        assert getattr(ns, f.dest) == f.default
