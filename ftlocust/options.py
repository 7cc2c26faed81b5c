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
  `ConfigError`; the users turn that into one logged line and stop.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

from ftlocust.cancel import NO_CANCEL, CancelPolicy
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
    input_tokens: int = 100  # prompt length, approximated by words (see users.build_prompt)
    output_tokens: int = 100  # max_tokens, sent with ignore_eos
    rate: float = 1.0  # strict: no two starts of one user closer than 1/rate seconds
    requests_per_client: int = 100  # then the user stops; 0 = no budget (run until stopped)
    cancel: CancelPolicy = NO_CANCEL
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S  # end to end, enforced at socket level
    verify_tokens: str = "auto"  # auto: on when the model id starts with "ftlocust-ref"
    ttft_rows: bool = True  # an extra Locust row per request: request_type "TTFT"

    def __post_init__(self) -> None:
        _check_endpoint(self.endpoint)
        _check_int("--ft-input-tokens", self.input_tokens, minimum=1)
        _check_int("--ft-output-tokens", self.output_tokens, minimum=1)
        _check_positive("--ft-rate", self.rate, "requests per second per user")
        _check_int("--ft-requests-per-client", self.requests_per_client, minimum=0)
        _check_positive("--ft-request-timeout", self.request_timeout_s, "seconds")
        if self.verify_tokens not in VERIFY_CHOICES:
            raise ConfigError(f"--ft-verify-tokens: expected auto, on or off, got {self.verify_tokens!r}")
        if not isinstance(self.cancel, CancelPolicy):
            raise ConfigError(f"--ft-cancel: expected a CancelPolicy, got {self.cancel!r}")
        if self.cancel.mode == "after-chunks" and self.endpoint not in STREAM_KINDS + ("mix",):
            raise ConfigError(
                f"--ft-cancel {self.cancel.spec}: after-chunks needs a streaming endpoint "
                f"(completion-stream, chat-stream or mix), got --ft-endpoint {self.endpoint}"
            )

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
        return cls(
            endpoint=parse_endpoint(get("ft_endpoint", DEFAULT_ENDPOINT)),
            model=model or None,
            input_tokens=parse_int("--ft-input-tokens", get("ft_input_tokens", 100), minimum=1),
            output_tokens=parse_int("--ft-output-tokens", get("ft_output_tokens", 100), minimum=1),
            rate=parse_positive("--ft-rate", get("ft_rate", 1.0), "requests per second per user"),
            requests_per_client=parse_int("--ft-requests-per-client", get("ft_requests_per_client", 100), minimum=0),
            cancel=CancelPolicy.parse(str(get("ft_cancel", "none"))),
            request_timeout_s=parse_positive(
                "--ft-request-timeout", get("ft_request_timeout", DEFAULT_REQUEST_TIMEOUT_S), "seconds"
            ),
            verify_tokens=parse_verify(get("ft_verify_tokens", "auto")),
            ttft_rows=not bool(get("ft_no_ttft_rows", False)),
        )


# --- value parsers: ConfigError with one line naming the flag ---------------------------------


def parse_endpoint(value: Any) -> str:
    text = str(value).strip().lower()
    _check_endpoint(text)
    return text


def parse_int(flag: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{flag}: expected an integer >= {minimum}, got {value!r}")
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(f"{flag}: expected an integer >= {minimum}, got {value!r}") from None
    _check_int(flag, number, minimum)
    return number


def parse_positive(flag: str, value: Any, unit: str) -> float:
    try:
        number = float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except ValueError:
        raise ConfigError(f"{flag}: expected a number > 0 ({unit}), got {value!r}") from None
    if not 0 < number < float("inf"):
        raise ConfigError(f"{flag}: expected a number > 0 ({unit}), got {value!r}")
    return number


def parse_verify(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in VERIFY_CHOICES:
        raise ConfigError(f"--ft-verify-tokens: expected auto, on or off, got {value!r}")
    return text


def _check_endpoint(value: str) -> None:
    if value not in ENDPOINTS:
        raise ConfigError(f"--ft-endpoint: expected one of {', '.join(ENDPOINTS)}, got {value!r}")


def _check_int(flag: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{flag}: expected an integer >= {minimum}, got {value!r}")


def _check_positive(flag: str, value: Any, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ConfigError(f"{flag}: expected a number > 0 ({unit}), got {value!r}")


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


def _cancel_spec(text: str) -> str:
    return CancelPolicy.parse(text).spec


def add_arguments(parser) -> None:
    """Register the load flags on Locust's parser (an `init_command_line_parser` listener).

    Also makes the seed's default load the default: 10 users spawned at 10/s (`-u`/`-r` and
    `locust.conf` still override)."""
    parser.set_defaults(num_users=DEFAULT_USERS, spawn_rate=DEFAULT_SPAWN_RATE)
    g = parser.add_argument_group("ftlocust load", "LLM requests each user sends (ftlocust/options.py)")
    g.add_argument("--ft-endpoint", env_var="FTLOCUST_ENDPOINT", default=DEFAULT_ENDPOINT,
                   type=_argparse_type(parse_endpoint), metavar="KIND",
                   help="completion | completion-stream | chat | chat-stream | mix (default chat-stream)")
    g.add_argument("--ft-model", env_var="FTLOCUST_MODEL", default="", metavar="ID",
                   help="Model id to request (default: the first one GET /v1/models lists)")
    g.add_argument("--ft-input-tokens", env_var="FTLOCUST_INPUT_TOKENS", default=100, metavar="N",
                   type=_argparse_type(lambda v: parse_int("--ft-input-tokens", v, minimum=1)),
                   help="Prompt length in tokens, approximated by words (default 100)")
    g.add_argument("--ft-output-tokens", env_var="FTLOCUST_OUTPUT_TOKENS", default=100, metavar="N",
                   type=_argparse_type(lambda v: parse_int("--ft-output-tokens", v, minimum=1)),
                   help="max_tokens, sent with ignore_eos (default 100)")
    g.add_argument("--ft-rate", env_var="FTLOCUST_RATE", default=1.0, metavar="R",
                   type=_argparse_type(lambda v: parse_positive("--ft-rate", v, "requests per second per user")),
                   help="Requests per second per user, strict: no two starts closer than 1/R (default 1)")
    g.add_argument("--ft-requests-per-client", env_var="FTLOCUST_REQUESTS_PER_CLIENT", default=100, metavar="N",
                   type=_argparse_type(lambda v: parse_int("--ft-requests-per-client", v, minimum=0)),
                   help="Requests per user, then it stops; the run ends when every user is done (0 = no budget)")
    g.add_argument("--ft-cancel", env_var="FTLOCUST_CANCEL", default="none", metavar="POLICY",
                   type=_argparse_type(_cancel_spec),
                   help="none | before-first-token | after-chunks:N | after-ms:T, optionally @fraction (0<f<=1)")
    g.add_argument("--ft-request-timeout", env_var="FTLOCUST_REQUEST_TIMEOUT", default=DEFAULT_REQUEST_TIMEOUT_S,
                   metavar="S",
                   type=_argparse_type(lambda v: parse_positive("--ft-request-timeout", v, "seconds")),
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
