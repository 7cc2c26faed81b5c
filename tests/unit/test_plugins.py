"""`ftlocust.plugins`: files and modules imported once, before validation; errors are one line."""
import os
import shutil
import sys

import pytest

from ftlocust import checks, faults, plugins
from ftlocust.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES_DIR = os.path.join(ROOT, "examples", "plugins")
EXAMPLE = os.path.join(EXAMPLES_DIR, "pause_workers.py")


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    """Each test starts with nothing loaded and leaves the registries as it found them."""
    monkeypatch.setattr(plugins, "_loaded", {})
    monkeypatch.setattr(faults, "REGISTRY", dict(faults.REGISTRY))
    monkeypatch.setattr(checks, "CHECK_TYPES", dict(checks.CHECK_TYPES))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("ftlocust_plugin_") or name.startswith("ft_test_plugin"):
            del sys.modules[name]


def _write(folder, name, text):
    path = folder / name
    path.write_text(text)
    return path


COUNTER = "import builtins\nbuiltins.FT_PLUGIN_IMPORTS = getattr(builtins, 'FT_PLUGIN_IMPORTS', 0) + 1\n"


@pytest.mark.parametrize("values, names", [
    (None, []), ([], []), ("a", ["a"]), (["a", "b.py"], ["a", "b.py"]),
    (["a, ./b.py", " ", "c"], ["a", "./b.py", "c"]),  # FTLOCUST_PLUGIN=a,./b.py
])
def test_split_names(values, names):
    assert plugins.split_names(values) == names


def test_a_file_registers_its_kind_and_check(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "pause_workers.py")
    (module,) = plugins.load([str(tmp_path / "pause_workers.py")])
    assert faults.kind_class("pause-workers") is module.PauseWorkers
    assert "max_stall" in checks.CHECK_TYPES
    assert "pause-workers" in faults.kinds()


def test_a_file_is_relative_to_the_current_directory(tmp_path, monkeypatch):
    _write(tmp_path, "here.py", "VALUE = 'cwd'\n")
    monkeypatch.chdir(tmp_path)
    (module,) = plugins.load(["here.py"])
    assert module.VALUE == "cwd" and module.__file__ == str(tmp_path / "here.py")


def test_a_scenario_plugin_is_relative_to_the_scenario_folder_not_the_cwd(tmp_path, monkeypatch):
    scenario_dir, cwd = tmp_path / "scenarios", tmp_path / "cwd"
    scenario_dir.mkdir(), cwd.mkdir()
    _write(scenario_dir, "extra.py", "VALUE = 'scenario'\n")
    _write(cwd, "extra.py", "VALUE = 'cwd'\n")  # same name where the user stands: not this one
    monkeypatch.chdir(cwd)
    (module,) = plugins.load(["extra.py"], where="s.yaml: plugins", base_dir=str(scenario_dir))
    assert module.VALUE == "scenario"
    (scenario_dir / "sub").mkdir()
    _write(scenario_dir / "sub", "more.py", "VALUE = 'nested'\n")
    (nested,) = plugins.load(["./sub/more.py"], base_dir=str(scenario_dir))
    assert nested.VALUE == "nested"
    # an absolute path is taken as written
    (absolute,) = plugins.load([str(cwd / "extra.py")], base_dir=str(scenario_dir))
    assert absolute.VALUE == "cwd"


def test_a_module_name_is_imported_from_sys_path(tmp_path, monkeypatch):
    _write(tmp_path, "ft_test_plugin_mod.py", "VALUE = 'module'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (module,) = plugins.load(["ft_test_plugin_mod"])
    assert module.VALUE == "module" and module.__name__ == "ft_test_plugin_mod"


def test_each_plugin_is_imported_once(tmp_path, monkeypatch):
    import builtins

    monkeypatch.setattr(builtins, "FT_PLUGIN_IMPORTS", 0, raising=False)
    path = _write(tmp_path, "counted.py", COUNTER)
    monkeypatch.chdir(tmp_path)
    first = plugins.load(["counted.py"])
    # the same file by another name (--ft-plugin and the scenario's plugins: both name it)
    again = plugins.load([str(path), "./counted.py"], base_dir=str(tmp_path))
    assert builtins.FT_PLUGIN_IMPORTS == 1
    assert again == first * 2


def test_two_files_with_the_same_name_both_load(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    ma, mb = plugins.load([str(_write(a, "same.py", "VALUE = 'a'\n")), str(_write(b, "same.py", "VALUE = 'b'\n"))])
    assert (ma.VALUE, mb.VALUE) == ("a", "b")
    assert sys.modules[ma.__name__] is ma and sys.modules[mb.__name__] is mb


@pytest.mark.parametrize("text, why", [
    ("raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here"),
    ("def broken(:\n", "SyntaxError"),
    ("import ft_test_plugin_not_installed\n", "ModuleNotFoundError: No module named 'ft_test_plugin_not_installed'"),
    ("raise ValueError('two\\nlines')\n", "ValueError: two lines"),
    ("import sys\nsys.exit(1)\n", "SystemExit: 1"),
    ("from ftlocust.errors import ConfigError\nraise ConfigError('bad setting')\n", "ConfigError: bad setting"),
])
def test_an_import_error_is_one_line_naming_the_plugin(tmp_path, text, why):
    path = _write(tmp_path, "boom.py", text)
    with pytest.raises(ConfigError) as e:
        plugins.load([str(path)], where="--ft-plugin")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"--ft-plugin: plugin {str(path)!r} failed to import: ")
    assert why in message
    assert not [m for m in sys.modules if m.startswith("ftlocust_plugin_boom")]  # nothing half-imported
    assert not plugins._loaded  # not cached: fixed, it loads next time
    path.write_text("VALUE = 1\n")
    assert plugins.load([str(path)])[0].VALUE == 1


def test_a_missing_file_or_module_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^s\.yaml: plugins: no such plugin file 'nope\.py' \(looked for .*/nope\.py\)$"):
        plugins.load(["nope.py"], where="s.yaml: plugins", base_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"^--ft-plugin: plugin 'ft_test_plugin_missing' failed to import: "
                                          r"ModuleNotFoundError: No module named 'ft_test_plugin_missing'$"):
        plugins.load(["ft_test_plugin_missing"])


def test_an_unloaded_plugins_kind_is_unknown(tmp_path):
    with pytest.raises(ConfigError, match=r"^x: faults\[0\]\.kind: expected one of .*process-signal.*, got 'pause-workers' \(a plugin's kind\? load it with --ft-plugin or the scenario's plugins:\)$"):
        faults.kind_class("pause-workers", "x: faults[0]")


# --- the example plugin's fault kind and check, on a fake deployment ---------------------------


class _FakeDeployment:
    def __init__(self, workers=("worker-1", "worker-2"), fail_on=None):
        self.workers, self.fail_on, self.sent = list(workers), fail_on, []

    def worker_roles(self):
        return self.workers

    def signal(self, role, sig):
        if (role, sig) == self.fail_on:
            raise ProcessLookupError(f"no process for {role}")
        self.sent.append((role, sig.name))
        return 1000


def _pause_fault(params, target="workers"):
    from ftlocust.scenario import FaultSpec, TriggerSpec

    (module,) = plugins.load([EXAMPLE])
    spec = FaultSpec(kind="pause-workers", target=target, trigger=TriggerSpec(after_seconds=3), params=params, name="p")
    return faults.build_fault(spec, "s.yaml: faults[0]"), module


@pytest.mark.parametrize("params, target, message", [
    ({}, "workers", "s.yaml: faults[0].seconds: missing (required)"),
    ({"seconds": 0}, "workers", "s.yaml: faults[0].seconds: expected a number > 0, got 0"),
    ({"seconds": 2, "secs": 1}, "workers", "s.yaml: faults[0].secs: unknown field (expected one of seconds); did you mean 'seconds'?"),
    ({"seconds": 2}, "worker-1", "s.yaml: faults[0].target: expected one of workers, got 'worker-1'; did you mean 'workers'?"),
])
def test_the_example_kind_validates_its_fields_in_one_line(params, target, message):
    with pytest.raises(ConfigError) as e:
        _pause_fault(params, target)
    assert str(e.value) == message


def test_the_example_kind_pauses_every_worker_and_lifts_once():
    from ftlocust.faults import FaultContext

    fault, _ = _pause_fault({"seconds": 2})
    deployment = _FakeDeployment()
    ctx = FaultContext(deployment=deployment)
    fault.preflight(ctx)
    assert fault.describe() == "SIGSTOP worker-1, worker-2 for 2 s, 3 s after load start"
    assert fault.recover(ctx) is None  # nothing injected yet: nothing to undo
    event = fault.inject(ctx)
    assert deployment.sent == [("worker-1", "SIGSTOP"), ("worker-2", "SIGSTOP")]
    assert event.injected_at is not None and event.recovered_at is None and event.target == "worker-1,worker-2"
    assert fault.scheduled_recovery_s() == 2 and fault.affected_role() == "worker-1"
    assert fault.recover(ctx) == "SIGCONT to worker-1, worker-2"
    assert event.recovered_at >= event.injected_at
    assert fault.recover(ctx) is None  # idempotent: the end-of-run rollback after the scheduled one
    assert deployment.sent[2:] == [("worker-1", "SIGCONT"), ("worker-2", "SIGCONT")]


def test_the_example_kind_undoes_a_partial_inject_and_retries_a_failed_rollback():
    import signal

    from ftlocust.faults import FaultContext

    fault, _ = _pause_fault({"seconds": 2})
    deployment = _FakeDeployment(fail_on=("worker-2", signal.SIGSTOP))
    ctx = FaultContext(deployment=deployment)
    fault.preflight(ctx)
    with pytest.raises(ProcessLookupError):
        fault.inject(ctx)
    assert deployment.sent == [("worker-1", "SIGSTOP"), ("worker-1", "SIGCONT")]  # nothing left stopped

    fault, _ = _pause_fault({"seconds": 2})
    deployment = _FakeDeployment(fail_on=("worker-1", signal.SIGCONT))
    ctx = FaultContext(deployment=deployment)
    fault.preflight(ctx)
    fault.inject(ctx)
    with pytest.raises(ProcessLookupError):  # the drill journals it: `every rollback succeeded` fails
        fault.recover(ctx)
    deployment.fail_on = None
    assert fault.recover(ctx) == "SIGCONT to worker-1, worker-2"


def test_the_example_kind_needs_workers():
    from ftlocust.faults import FaultContext

    fault, _ = _pause_fault({"seconds": 2})
    with pytest.raises(ConfigError, match=r"^s\.yaml: faults\[0\]\.target: the deployment names no worker to pause$"):
        fault.preflight(FaultContext(deployment=_FakeDeployment(workers=())))


def test_the_example_check():
    from ftlocust.records import RequestRecord

    plugins.load([EXAMPLE])
    (check,) = checks.build_checks([{"check": "max_stall", "max_s": 1.5}])
    assert check.name == "max_stall <= 1.5s"

    def record(request_id, itl_max_s):
        return RequestRecord(kind="chat-stream", endpoint="/v1/chat/completions", stream=True, request_id=request_id, itl_max_s=itl_max_s)

    ok = checks.RunResult(records=[record("a", 0.01), record("b", 1.2), record("c", None)])
    assert check.evaluate(ok).passed
    assert "1.200 s (b)" in check.evaluate(ok).detail
    bad = checks.RunResult(records=[record("a", 0.01), record("d", 2.04)])
    verdict = check.evaluate(bad)
    assert not verdict.passed and verdict.detail == "longest wait between two tokens 2.040 s (d), max 1.5 s"
    assert check.evaluate(checks.RunResult()).detail.startswith("empty:")
    with pytest.raises(ConfigError, match=r"^checks\[0\].*max_s.*missing"):  # one line, the field named
        checks.build_checks(["max_stall"])


# --- the README shows the example as it is in the repository ------------------------------------


def _readme_section(title):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def _blocks(section, language):
    fence = f"```{language}\n"
    blocks, at = [], section.find(fence)
    while at != -1:
        body_start = at + len(fence)
        body_end = section.index("```\n", body_start)
        blocks.append(section[body_start:body_end])
        at = section.find(fence, body_end + 4)
    return blocks


def test_the_readme_plugins_section_shows_the_example_files_exactly():
    section = _readme_section("Plugins")
    for language, name in (("python", "pause_workers.py"), ("yaml", "pause-workers.yaml")):
        with open(os.path.join(EXAMPLES_DIR, name), encoding="utf-8") as f:
            assert _blocks(section, language) == [f.read()], f"README's {language} block differs from examples/plugins/{name}"
    assert "    .venv/bin/locust -f locustfiles/load.py --headless --ft-scenario examples/plugins/pause-workers.yaml\n" in section
