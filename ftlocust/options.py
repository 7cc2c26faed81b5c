"""The load flags (`--ft-endpoint`, `--ft-rate`, …) and their validated form, `LoadOptions`.

Flags are registered on Locust's own parser, so each one is also settable as an `FTLOCUST_*`
environment variable or in `locust.conf`, and (where sensible) in the web UI.

Where bad input is caught (one line naming the flag and what was expected, never a traceback):
- per flag, while Locust parses the command line / environment / locust.conf: the `type=`
  converters below print `ftlocust: <line>` and exit 2 before any listener runs (so before an
  embedded target is started);
- across flags (e.g. `after-chunks` with a non-streaming endpoint), in this module's `init`
  listener, which prints the same kind of line and exits 2 before any load;
- values set later (web UI form, programmatic use) by `LoadOptions.from_parsed`, which raises
  `ConfigError`; the users turn that into one logged line and stop;
- a scenario's `load:` values, by the same parser as their flag (`LOAD_FLAGS`), named by their
  YAML path (`x.yaml: load.rate: expected a number > 0 …`), when the scenario is read.

The run flags `ftlocust.hooks` registers (`--ft-fault-after-requests`, `--ft-target-workers`, …)
have their range rules here too (`RUN_FLAGS`, `check_run_flags`, `run_flag_type`). Every message
has `ftlocust.validation`'s shape: `<flag>: expected <what>, got <value>`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

from ftlocust import validation
from ftlocust.cancel import AFTER_CHUNKS, NO_CANCEL, CancelPolicy
from ftlocust.errors import ConfigError

ENDPOINTS = ("completion", "completion-stream", "chat", "chat-stream", "mix")
STREAM_KINDS = ("completion-stream", "chat-stream")
VERIFY_CHOICES = ("auto", "on", "off")

# Load defaults (the Dynamo FT suite's seed load: 10 clients × 100 requests, 100 in / 100 out).
DEFAULT_USERS = 10
DEFAULT_SPAWN_RATE = 10.0
DEFAULT_ENDPOINT = "chat-stream"
DEFAULT_REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class LoadOptions:
    """What every LLM user of a run does. Build with `from_parsed` (flags) or directly (tests)."""

    endpoint: str = DEFAULT_ENDPOINT  # one of ENDPOINTS
    model: str | None = None  # None: discovered from GET /v1/models
    input_tokens: int = 100  # prompt length, approximated by words (see payloads.build_prompt)
    output_tokens: int = 100  # max_tokens, sent with ignore_eos
    rate: float = 1.0  # strict: no two starts of one user closer than 1/rate seconds
    requests_per_client: int = 100  # then the user stops; 0 = no budget (run until stopped)
    cancel: CancelPolicy = NO_CANCEL
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S  # end to end, enforced at socket level
    verify_tokens: str = "auto"  # auto: on when the model id starts with "ftlocust-ref"
    ttft_rows: bool = True  # an extra Locust row per request: request_type "TTFT"

    def __post_init__(self) -> None:
        for flag in LOAD_FLAGS:  # the typed values, by the same rules as the flags (no parsing)
            if flag.rule is not None:
                validation.number(getattr(self, flag.attr), flag.flag, **flag.rule)
        validation.choice(self.endpoint, "--ft-endpoint", ENDPOINTS)
        validation.choice(self.verify_tokens, "--ft-verify-tokens", VERIFY_CHOICES)
        if not isinstance(self.cancel, CancelPolicy):
            raise validation.error("--ft-cancel", "a CancelPolicy", self.cancel)
        check_cancel_endpoint(self.endpoint, self.cancel)

    @property
    def min_interval_s(self) -> float:
        return 1.0 / self.rate

    @classmethod
    def from_parsed(cls, parsed: Any) -> "LoadOptions":
        """From Locust's `environment.parsed_options` (None or missing flags → defaults)."""

        def get(name: str, default: Any) -> Any:
            value = getattr(parsed, name, None) if parsed is not None else None
            return default if value is None else value

        model = str(get("ft_model", "")).strip()
        values = {f.attr: f.parse(get(f.dest, f.default), f.flag) for f in LOAD_FLAGS}
        values["cancel"] = CancelPolicy.parse(values["cancel"])
        return cls(model=model or None, verify_tokens=parse_verify(get("ft_verify_tokens", "auto")),
                   ttft_rows=not bool(get("ft_no_ttft_rows", False)), **values)


# --- value parsers: (value as written, where) → the flag's value; ConfigError naming `where` ------
# `where` is the flag for flags, environment variables and the web UI, and the YAML path for a
# scenario's `load:` section (`x.yaml: load.rate`), so both say the same thing.


def parse_endpoint(value: Any, where: str = "--ft-endpoint") -> str:
    return _word(value, where, ENDPOINTS)


def parse_verify(value: Any, where: str = "--ft-verify-tokens") -> str:
    return _word(value, where, VERIFY_CHOICES)


def parse_cancel(value: Any, where: str = "--ft-cancel") -> str:
    """The canonical spelling of a cancel policy (what `--ft-cancel` holds once parsed)."""
    return CancelPolicy.parse(value, where).spec


def _word(value: Any, where: str, choices: tuple[str, ...]) -> str:
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in choices:
        raise validation.error(where, "one of " + ", ".join(choices), value, validation.did_you_mean(text, choices))
    return text


def check_cancel_endpoint(endpoint: str, cancel: CancelPolicy, endpoint_where: str = "--ft-endpoint",
                          cancel_where: str = "--ft-cancel") -> None:
    """after-chunks cancels streams only: it needs an endpoint that streams (or the mix)."""
    if cancel.mode == AFTER_CHUNKS and endpoint not in STREAM_KINDS + ("mix",):
        raise validation.error(endpoint_where, f"a streaming endpoint (completion-stream, chat-stream or mix) "
                                               f"for {cancel_where} {cancel.spec}", endpoint)


@dataclass(frozen=True)
class LoadFlag:
    """One load flag: its scenario `load:` key, `LoadOptions` field, argparse dest, flag name,
    default, parser, and (numbers) the rule the parser applies."""

    key: str
    attr: str
    dest: str
    flag: str
    default: Any
    parse: Callable[[Any, str], Any]
    rule: dict | None = None


def _number_flag(key: str, attr: str, default: Any, **rule: Any) -> LoadFlag:
    flag = "--ft-" + key.replace("_", "-")
    parse = (lambda value, where: int(validation.number(value, where, parse=True, **rule))) if rule.get("integer") \
        else (lambda value, where: float(validation.number(value, where, parse=True, **rule)))
    return LoadFlag(key, attr, "ft_" + key, flag, default, parse, rule)


LOAD_FLAGS: tuple[LoadFlag, ...] = (
    LoadFlag("endpoint", "endpoint", "ft_endpoint", "--ft-endpoint", DEFAULT_ENDPOINT, parse_endpoint),
    _number_flag("input_tokens", "input_tokens", 100, integer=True, minimum=1),
    _number_flag("output_tokens", "output_tokens", 100, integer=True, minimum=1),
    _number_flag("rate", "rate", 1.0, above=0, unit="requests per second per user"),
    _number_flag("requests_per_client", "requests_per_client", 100, integer=True, minimum=0),
    LoadFlag("cancel", "cancel", "ft_cancel", "--ft-cancel", "none", parse_cancel),
    _number_flag("request_timeout", "request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S, above=0, unit="seconds"),
)
LOAD_FLAG: dict[str, LoadFlag] = {f.key: f for f in LOAD_FLAGS}  # by scenario `load:` key


# --- the run flags (registered by ftlocust.hooks): range rules, the one place ------------------

RUN_FLAGS: dict[str, tuple[str, dict]] = {  # argparse dest → (flag, validation.number rule)
    "ft_fault_after_requests": ("--ft-fault-after-requests", {"integer": True, "above": 0}),
    "ft_fault_after_seconds": ("--ft-fault-after-seconds", {"minimum": 0}),
    "ft_recovery_window": ("--ft-recovery-window", {"minimum": 0}),
    "ft_target_workers": ("--ft-target-workers", {"integer": True, "above": 0}),
    "ft_target_migration_limit": ("--ft-target-migration-limit", {"integer": True, "minimum": 0}),
    "ft_target_token_delay": ("--ft-target-token-delay", {"minimum": 0}),
}


def run_flag(dest: str, value: Any) -> int | float:
    """One run flag's value (a string is parsed), checked by its rule; ConfigError naming the flag."""
    flag, rule = RUN_FLAGS[dest]
    number = validation.number(value, flag, parse=True, **rule)
    return int(number) if rule.get("integer") else float(number)


def check_run_flags(parsed: Any) -> None:
    """Every run flag that is set, checked by its rule (was hooks._check_numbers)."""
    for dest in RUN_FLAGS:
        value = getattr(parsed, dest, None)
        if value is not None:
            run_flag(dest, value)


def run_flag_type(dest: str) -> Callable[[str], Any]:
    """An argparse `type=` for a run flag: bad text is one line and exit 2 (not argparse's usage)."""
    return _argparse_type(lambda text: run_flag(dest, text))


def gpu_monitor_flag_type() -> Callable[[str], Any]:
    """`--ft-gpu-monitor`'s argparse `type=`: auto | on | off (ftlocust.gpu_monitor)."""
    from ftlocust.gpu_monitor import parse_flag

    return _argparse_type(lambda text: parse_flag(text, "--ft-gpu-monitor"))


# --- Locust wiring ------------------------------------------------------------------------------


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse `type=` that reports bad input as one line and exits 2 (argparse's own error
    would print the whole usage text first)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as e:
            sys.stderr.write(f"ftlocust: {e}\n")
            raise SystemExit(2) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _flag_type(key: str) -> Callable[[str], Any]:
    flag = LOAD_FLAG[key]
    return _argparse_type(lambda text: flag.parse(text, flag.flag))


def add_arguments(parser) -> None:
    """Register the load flags on Locust's parser (an `init_command_line_parser` listener).

    Also makes the seed's default load the default: 10 users spawned at 10/s (`-u`/`-r` and
    `locust.conf` still override)."""
    parser.set_defaults(num_users=DEFAULT_USERS, spawn_rate=DEFAULT_SPAWN_RATE)
    g = parser.add_argument_group("ftlocust load", "LLM requests each user sends (ftlocust/options.py)")
    g.add_argument("--ft-endpoint", env_var="FTLOCUST_ENDPOINT", default=DEFAULT_ENDPOINT,
                   type=_flag_type("endpoint"), metavar="KIND",
                   help="completion | completion-stream | chat | chat-stream | mix (default chat-stream)")
    g.add_argument("--ft-model", env_var="FTLOCUST_MODEL", default="", metavar="ID",
                   help="Model id to request (default: the first one GET /v1/models lists)")
    g.add_argument("--ft-input-tokens", env_var="FTLOCUST_INPUT_TOKENS", default=100, metavar="N",
                   type=_flag_type("input_tokens"),
                   help="Prompt length in tokens, approximated by words (default 100)")
    g.add_argument("--ft-output-tokens", env_var="FTLOCUST_OUTPUT_TOKENS", default=100, metavar="N",
                   type=_flag_type("output_tokens"),
                   help="max_tokens, sent with ignore_eos (default 100)")
    g.add_argument("--ft-rate", env_var="FTLOCUST_RATE", default=1.0, metavar="R",
                   type=_flag_type("rate"),
                   help="Requests per second per user, strict: no two starts closer than 1/R (default 1)")
    g.add_argument("--ft-requests-per-client", env_var="FTLOCUST_REQUESTS_PER_CLIENT", default=100, metavar="N",
                   type=_flag_type("requests_per_client"),
                   help="Requests per user, then it stops; the run ends when every user is done (0 = no budget)")
    g.add_argument("--ft-cancel", env_var="FTLOCUST_CANCEL", default="none", metavar="POLICY",
                   type=_flag_type("cancel"),
                   help="none | before-first-token | after-chunks:N | after-ms:T, optionally @fraction (0<f<=1)")
    g.add_argument("--ft-request-timeout", env_var="FTLOCUST_REQUEST_TIMEOUT", default=DEFAULT_REQUEST_TIMEOUT_S,
                   metavar="S",
                   type=_flag_type("request_timeout"),
                   help="End-to-end limit per request in seconds, enforced on the socket "
                        f"(default {DEFAULT_REQUEST_TIMEOUT_S:g})")
    g.add_argument("--ft-verify-tokens", env_var="FTLOCUST_VERIFY_TOKENS", default="auto", metavar="auto|on|off",
                   type=_argparse_type(parse_verify),
                   help="Check token continuity (reference deployment only; "
                        "auto: when the model id starts with ftlocust-ref)")
    g.add_argument("--ft-no-ttft-rows", env_var="FTLOCUST_NO_TTFT_ROWS", action="store_true", default=False,
                   help="Do not add a 'TTFT' row per request to Locust's statistics")
    for action in g._group_actions:
        if action.dest != "ft_no_ttft_rows":
            _show_in_web_ui(action)


def _show_in_web_ui(action) -> None:
    # What LocustArgumentParser.add_argument(include_in_web_ui=True) sets; argument groups
    # (which keep --help readable) do not take that keyword.
    action.include_in_web_ui = True
    action.is_secret = False
    action.is_required = False
    action.is_multiple = False


def validate_on_init(environment, **_kw) -> None:
    """`init` listener: cross-flag validation before any load; one line and exit 2 on error.

    Workers skip it: they get the master's options with the first spawn message."""
    parsed = getattr(environment, "parsed_options", None)
    if parsed is None or getattr(parsed, "worker", False):
        return
    try:
        LoadOptions.from_parsed(parsed)
    except ConfigError as e:
        sys.stderr.write(f"ftlocust: {e}\n")
        sys.exit(2)


def _register() -> None:
    from locust import events

    events.init_command_line_parser.add_listener(add_arguments)
    events.init.add_listener(validate_on_init)


_register()
