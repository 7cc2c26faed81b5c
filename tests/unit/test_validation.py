"""ftlocust.validation: the one vocabulary of bad-input messages (`<where>: expected X, got Y`)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

import pytest

from ftlocust import validation as v
from ftlocust.errors import ConfigError


def message(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as e:
        fn(*args, **kwargs)
    text = str(e.value)
    assert "\n" not in text
    return text


def test_paths():
    assert v.at("x.yaml:", "probe") == "x.yaml: probe"
    assert v.at("x.yaml: probe", "max_tokens") == "x.yaml: probe.max_tokens"
    assert v.at("x.yaml: faults", 0) == "x.yaml: faults[0]"
    assert v.at(v.at("x.yaml: faults", 2), "trigger") == "x.yaml: faults[2].trigger"
    assert v.at("", "name") == "name"


def test_the_shape():
    assert str(v.error("--ft-rate", "a number > 0", "fast")) == "--ft-rate: expected a number > 0, got 'fast'"
    assert str(v.error("x.yaml:", "a mapping at the top level", [1])) == "x.yaml: expected a mapping at the top level, got [1]"
    assert str(v.error("w", "x", hint=", or else")) == "w: expected x, or else"
    assert str(v.error("w", "one of a, b", "c", v.did_you_mean("bcc", ["a", "b", "bc"]))) == \
        "w: expected one of a, b, got 'c'; did you mean 'bc'?"
    assert v.did_you_mean("zzz", ["a", "b"]) == ""
    assert v.show("x" * 500).endswith("…") and len(v.show("x" * 500)) == 160
    assert (v.fmt(400), v.fmt(0.2), v.fmt(1e6), v.fmt(2.0), v.fmt(0.05)) == ("400", "0.2", "1000000", "2", "0.05")
    assert str(v.missing("x.yaml: faults[0].trigger")) == "x.yaml: faults[0].trigger: missing (required)"
    assert str(v.missing("c.check", "the kind")) == "c.check: missing (required: the kind)"
    assert str(v.unknown_field("x.yaml: probe", "max_token", ["max_tokens", "endpoint"])) == \
        "x.yaml: probe.max_token: unknown field (expected one of endpoint, max_tokens); did you mean 'max_tokens'?"
    assert str(v.unknown_field("c", "metric", ["name"], "; did you mean 'name'?")).endswith("did you mean 'name'?")


def test_mapping():
    assert v.mapping(None, "w", ["a"]) == {}
    assert v.mapping({"a": 1}, "w", ["a", "b"], required=["a"]) == {"a": 1}
    assert v.mapping({"anything": 1}, "w") == {"anything": 1}  # allowed None: the caller's own fields
    assert message(v.mapping, [1, 2], "x.yaml: target", ["kind"]) == "x.yaml: target: expected a mapping, got [1, 2]"
    assert message(v.mapping, {"knd": 1}, "x.yaml: target", ["kind", "workers"]) == \
        "x.yaml: target.knd: unknown field (expected one of kind, workers); did you mean 'kind'?"
    assert message(v.mapping, {}, "x.yaml:", ["name"], required=["name"]) == "x.yaml: name: missing (required)"
    assert message(v.mapping, "s", "x.yaml:", ["name"]) == "x.yaml: expected a mapping, got 's'"


def test_exactly_one():
    assert v.exactly_one({"b": 1}, "t", ["a", "b"]) == "b"
    assert message(v.exactly_one, {"a": 1, "b": 2}, "t", ["a", "b"]) == "t: expected exactly one of a, b, got ['a', 'b']"
    assert message(v.exactly_one, {}, "t", ["a", "b"]) == "t: expected exactly one of a, b, got {}"


@pytest.mark.parametrize("value, kwargs, expected", [
    (3, {"integer": True, "minimum": 1}, 3),
    (0.5, {"above": 0}, 0.5),
    (5, {"minimum": 0, "maximum": 5}, 5),
    ("7", {"integer": True, "minimum": 1, "parse": True}, 7),
    (" 2.5 ", {"above": 0, "parse": True}, 2.5),
    (4.9, {"below": 5}, 4.9),
])
def test_numbers_that_pass(value, kwargs, expected):
    assert v.number(value, "w", **kwargs) == expected


@pytest.mark.parametrize("value, kwargs, text", [
    (True, {}, "w: expected a number, got True"),
    ("3", {}, "w: expected a number, got '3'"),  # YAML strings are not numbers unless parsing a flag
    (float("nan"), {}, "w: expected a number, got nan"),
    (float("inf"), {"above": 0}, "w: expected a number > 0, got inf"),
    (1.5, {"integer": True, "minimum": 1}, "w: expected an integer >= 1, got 1.5"),
    (0, {"integer": True, "above": 0}, "w: expected an integer > 0, got 0"),
    (2, {"minimum": 0, "maximum": 1}, "w: expected a number >= 0 and <= 1, got 2"),
    (5, {"below": 5}, "w: expected a number < 5, got 5"),
    ("fast", {"above": 0, "unit": "requests per second", "parse": True}, "w: expected a number > 0 (requests per second), got 'fast'"),
    ("0", {"above": 0, "parse": True}, "w: expected a number > 0, got '0'"),  # as written
    ("1.5", {"integer": True, "minimum": 1, "parse": True}, "w: expected an integer >= 1, got '1.5'"),
    ("inf", {"above": 0, "parse": True}, "w: expected a number > 0, got 'inf'"),
    (0.1, {"minimum": 0.2, "unit": "the poll interval"}, "w: expected a number >= 0.2 (the poll interval), got 0.1"),
])
def test_numbers_that_fail(value, kwargs, text):
    assert message(v.number, value, "w", **kwargs) == text


def test_scalars_and_collections():
    assert v.seconds(None, "w") is None and v.seconds(2, "w") == 2.0
    assert message(v.seconds, 0, "w", positive=True) == "w: expected a number > 0, got 0"
    assert message(v.seconds, None, "w", optional=False) == "w: expected a number >= 0, got None"
    assert v.choice("b", "w", ["a", "b"]) == "b"
    assert message(v.choice, "SIGKIL", "w", ["SIGKILL", "SIGTERM"]) == \
        "w: expected one of SIGKILL, SIGTERM, got 'SIGKIL'; did you mean 'SIGKILL'?"
    assert message(v.string, "", "w") == "w: expected a non-empty string, got ''"
    assert message(v.boolean, "yes", "w") == "w: expected true or false, got 'yes'"
    assert v.string_map(None, "w") == {} and v.string_map({"a": "b"}, "w") == {"a": "b"}
    assert message(v.string_map, {"a": 1}, "w") == "w: expected a mapping of role to string, got {'a': 1}"
    assert v.listing(None, "w") == [] and v.listing([1], "w") == [1]
    assert message(v.listing, {"a": 1}, "w", "checks") == "w: expected a list of checks, got {'a': 1}"
    assert v.string_list(["a", "b"], "w") == ["a", "b"]
    assert message(v.string_list, ["a", ""], "x.yaml: plugins") == "x.yaml: plugins[1]: expected a non-empty string, got ''"


# --- writable_dir (--ft-artifacts) ----------------------------------------------------------------


def test_writable_dir_creates_the_folder(tmp_path):
    path = str(tmp_path / "a" / "b")
    assert v.writable_dir(path) == path and os.path.isdir(path)
    assert v.writable_dir(path) == path  # an existing folder is fine
    assert os.listdir(path) == []  # the write test leaves nothing behind


def test_writable_dir_below_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("x")
    path = str(tmp_path / "file" / "run")
    assert message(v.writable_dir, path) == \
        f"--ft-artifacts: expected a writable folder, got {path!r} (a parent is not a folder: {tmp_path / 'file'})"


def test_writable_dir_that_is_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("x")
    path = str(tmp_path / "file")
    assert message(v.writable_dir, path, where="--out") == f"--out: expected a writable folder, got {path!r} (a file, not a folder)"


def test_writable_dir_needs_a_path():
    assert message(v.writable_dir, "") == "--ft-artifacts: expected a writable folder, got ''"


def test_writable_dir_permission_denied_for_real():
    """A folder with mode 500, written by an unprivileged user. Tests run as root, for whom mode
    bits do not apply: then a forked child drops to uid 65534 (nobody) first."""
    top = tempfile.mkdtemp(prefix="ftlocust-perm-")
    try:
        os.chmod(top, 0o755)
        locked = os.path.join(top, "locked")
        os.mkdir(locked, 0o500)
        os.chmod(locked, 0o500)
        target = os.path.join(locked, "run")
        if os.geteuid() != 0:
            text = message(v.writable_dir, target)
        else:
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: no pytest machinery, just the call and its message
                try:
                    os.close(read)
                    os.setgid(65534)
                    os.setuid(65534)
                    try:
                        v.writable_dir(target)
                        out = "no error"
                    except ConfigError as e:
                        out = str(e)
                    os.write(write, out.encode())
                finally:
                    os._exit(0)
            os.close(write)
            chunks = []
            while chunk := os.read(read, 4096):
                chunks.append(chunk)
            os.close(read)
            os.waitpid(pid, 0)
            text = b"".join(chunks).decode()
        assert text == f"--ft-artifacts: expected a writable folder, got {target!r} (permission denied)"
    finally:
        os.chmod(os.path.join(top, "locked"), 0o700)
        shutil.rmtree(top)


@pytest.mark.parametrize("code, why", [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied"),
                                       (errno.ENOSPC, "No space left on device")])
def test_writable_dir_os_errors_are_one_line(tmp_path, monkeypatch, code, why):
    """What the OS says when the folder cannot be created (no read-only mount here to use)."""
    def refuse(*_a, **_kw):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(v.os, "makedirs", refuse)
    path = str(tmp_path / "new")
    assert message(v.writable_dir, path) == f"--ft-artifacts: expected a writable folder, got {path!r} ({why})"


def test_writable_dir_existing_but_read_only(tmp_path, monkeypatch):
    """The folder exists (makedirs succeeds) but nothing can be written in it: the write test."""
    real_open = os.open

    def read_only(path, flags, *a):
        if ".ftlocust-write-test" in str(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, flags, *a)

    monkeypatch.setattr(v.os, "open", read_only)
    assert message(v.writable_dir, str(tmp_path)).endswith("(read-only file system)")
