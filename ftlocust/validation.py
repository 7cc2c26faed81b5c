"""One vocabulary for bad input: flags, scenario fields, fault params and check specs.

Every error is a `ConfigError` whose message is one line of the same shape:

    <where>: expected <what>, got <value>[; did you mean '<x>'?]

`where` names the flag (`--ft-rate`) or the file and YAML path of the field
(`configs/scenarios/migration.yaml: faults[0].signal`); the root of a file is `"<file>:"`, so
`at("x.yaml:", "probe")` is `x.yaml: probe`. Unknown and missing fields keep the same `where`
(the path of the field) and say so: `<where>: unknown field (expected one of a, b)`,
`<where>: missing (required)`. Each fault kind and check validates its own fields with these
helpers, next to its behaviour (chaostoolkit pairs `validate_*` with `run_*` the same way), so
the wording is the same wherever the input came from. Flags are parsed with the same helpers:
`number(text, "--ft-rate", above=0, parse=True)` accepts "2.5" and reports `got '2.5x'`.
"""

from __future__ import annotations

import difflib
import errno
import math
import os
from typing import Any, Iterable, Mapping

from ftlocust.errors import ConfigError

_NOTHING = object()


def at(where: str, key: str | int) -> str:
    """The path of a field below `where`: `at("x.yaml: faults", 0)` → `x.yaml: faults[0]`."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    if not where:
        return str(key)
    return f"{where} {key}" if where.endswith(":") else f"{where}.{key}"


def show(value: Any, limit: int = 160) -> str:
    """`value` as the user would recognise it (repr), cut to `limit` characters (one line)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def fmt(x: float) -> str:
    """A bound or limit as written: 400, 0.2, 1000000 (never 1e+06)."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:g}" if isinstance(x, float) else str(x)


def did_you_mean(word: Any, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _head(where: str) -> str:
    return where[:-1] if where.endswith(":") else where


def error(where: str, expected: str, got: Any = _NOTHING, hint: str = "") -> ConfigError:
    """`<where>: expected <expected>, got <value><hint>` as a ConfigError (to raise)."""
    text = f"{_head(where)}: expected {expected}"
    if got is not _NOTHING:
        text += f", got {show(got)}"
    return ConfigError(text + hint)


def unknown_field(where: str, key: Any, allowed: Iterable[str], hint: str | None = None) -> ConfigError:
    """`<where>.<key>: unknown field (expected one of …); did you mean …?` — `where` is the
    mapping's path; `hint` replaces the did-you-mean (a known slip for another field)."""
    allowed = sorted(allowed)
    if hint is None:
        hint = did_you_mean(key, allowed)
    return ConfigError(f"{at(where, str(key))}: unknown field (expected one of {', '.join(allowed)}){hint}")


def missing(where: str, what: str = "") -> ConfigError:
    """`<where>: missing (required)` or `<where>: missing (required: <what>)`."""
    return ConfigError(f"{_head(where)}: missing (required{': ' + what if what else ''})")


def mapping(data: Any, where: str, allowed: Iterable[str] | None = None, required: Iterable[str] = ()) -> dict:
    """`data` as a dict whose keys are all in `allowed` (None: any key) and include every
    `required` one. None is an empty mapping."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise error(where, "a mapping", data)
    if allowed is not None:
        allowed = sorted(allowed)
        for key in data:
            if key not in allowed:
                raise unknown_field(where, key, allowed)
    for key in required:
        if key not in data:
            raise missing(at(where, key))
    return dict(data)


def exactly_one(data: Mapping, where: str, keys: Iterable[str]) -> str:
    """The one key of `keys` that `data` (a validated mapping) sets."""
    keys = list(keys)
    given = [k for k in keys if k in data]
    if len(given) != 1:
        raise error(where, "exactly one of " + ", ".join(keys), given or dict(data))
    return given[0]


def number(value: Any, where: str, *, integer: bool = False, minimum: float | None = None,
           above: float | None = None, maximum: float | None = None, below: float | None = None,
           unit: str = "", parse: bool = False) -> int | float:
    """A finite int/float (not a bool); `minimum`/`maximum` inclusive, `above`/`below` exclusive.
    `unit` is named after the bounds (`a number > 0 (seconds)`); with `parse` a string is
    converted first (flags, environment variables), and `got` shows it as written."""
    kind = "an integer" if integer else "a number"
    bounds = []
    if minimum is not None:
        bounds.append(f">= {fmt(minimum)}")
    if above is not None:
        bounds.append(f"> {fmt(above)}")
    if maximum is not None:
        bounds.append(f"<= {fmt(maximum)}")
    if below is not None:
        bounds.append(f"< {fmt(below)}")
    expected = kind + (" " + " and ".join(bounds) if bounds else "") + (f" ({unit})" if unit else "")
    given = value
    if parse and isinstance(value, str):
        try:
            value = int(value.strip()) if integer else float(value.strip())
        except ValueError:
            raise error(where, expected, given) from None
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types) or (isinstance(value, float) and not math.isfinite(value)):
        raise error(where, expected, given)
    if (minimum is not None and value < minimum) or (above is not None and value <= above) or \
            (maximum is not None and value > maximum) or (below is not None and value >= below):
        raise error(where, expected, given)
    return value


def seconds(value: Any, where: str, *, optional: bool = True, positive: bool = False) -> float | None:
    """A duration in seconds (>= 0, or > 0 with `positive`); None allowed when `optional`."""
    if value is None and optional:
        return None
    if positive:
        return float(number(value, where, above=0))
    return float(number(value, where, minimum=0))


def choice(value: Any, where: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise error(where, "one of " + ", ".join(map(str, choices)), value, did_you_mean(value, choices))
    return value


def string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise error(where, "a non-empty string", value)
    return value


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise error(where, "true or false", value)
    return value


def string_map(value: Any, where: str, what: str = "string") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise error(where, f"a mapping of role to {what}", value)
    return dict(value)


def listing(value: Any, where: str, what: str = "items") -> list:
    """A YAML list (None: empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise error(where, f"a list of {what}", value)
    return list(value)


def string_list(value: Any, where: str) -> list[str]:
    """A list of non-empty strings (None: empty); a bad item is named by its index."""
    return [string(item, at(where, i)) for i, item in enumerate(listing(value, where, "strings"))]


def writable_dir(path: Any, where: str = "--ft-artifacts") -> str:
    """The folder `path`, created if needed and proven writable (a file is created and removed
    in it), or a one-line ConfigError: a file in the way, permission denied, read-only."""
    expected = "a writable folder"
    if not isinstance(path, str) or not path:
        raise error(where, expected, path)

    def fail(why: str) -> ConfigError:
        return error(where, expected, path, f" ({why})")

    def why(e: OSError) -> str:
        if e.errno == errno.EROFS:
            return "read-only file system"
        if e.errno in (errno.EACCES, errno.EPERM):
            return "permission denied"
        if e.errno == errno.ENOTDIR or isinstance(e, NotADirectoryError):
            return "a parent is not a folder: " + _first_file_on(path)
        if e.errno == errno.EEXIST and not os.path.isdir(path):
            return "a file, not a folder"
        return e.strerror or type(e).__name__

    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise fail(why(e)) from None
    if not os.path.isdir(path):
        raise fail("a file, not a folder")
    probe = os.path.join(path, f".ftlocust-write-test-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as e:
        raise fail(why(e)) from None
    os.close(fd)
    os.unlink(probe)
    return path


def _first_file_on(path: str) -> str:
    """The first component of `path` that exists and is not a folder (for the message)."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        prefix = os.sep.join(parts[:i])
        if os.path.exists(prefix) and not os.path.isdir(prefix):
            return prefix
    return path
