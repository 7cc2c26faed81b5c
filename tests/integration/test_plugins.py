"""User plugins as a user runs them: the README's example plugin (examples/plugins/) copied to a
folder outside the package, loaded with `--ft-plugin` or the scenario's `plugins:`, against the
reference deployment; and the one-line errors when a plugin breaks or is missing."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples", "plugins")
LOCUST = [sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "locustfiles", "load.py"), "--headless"]
# 100-token streams of ~1 s at 1 request/s per user: some stream is always between two tokens
SMALL = ["-u", "4", "-r", "4", "--ft-requests-per-client", "6", "--ft-target-token-delay", "0.01"]


def _run(args, cwd, timeout=45, env=None):
    """The locust command in its own session. Past `timeout` it dumps its stacks (faulthandler),
    then the whole session is killed — nothing it started outlives the test — and the test fails."""
    proc = subprocess.Popen(LOCUST + args, cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            out, err = "", ""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # the abort ended it already
            pass
        proc.wait()
        _kill_deployment(args)
        pytest.fail(f"locust ran past {timeout} s:\n{out[-3000:]}\n{err[-6000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill_deployment(args):
    """The deployment's processes run in their own sessions: kill those this run started, by PID."""
    if "--ft-artifacts" not in args:
        return
    pids = os.path.join(args[args.index("--ft-artifacts") + 1], "deployment", "pids")
    for name in os.listdir(pids) if os.path.isdir(pids) else []:
        try:
            with open(os.path.join(pids, name)) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"ftlocust.targets" in f.read():  # still the deployment's process, not a reused PID
                    os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _example_scenario(folder, with_plugins_line=True):
    """The example scenario, in `folder`; without its `plugins:` line the plugin must come from a flag."""
    with open(os.path.join(EXAMPLES, "pause-workers.yaml"), encoding="utf-8") as f:
        lines = f.readlines()
    if not with_plugins_line:
        lines = [line for line in lines if not line.startswith("plugins:")]
    path = folder / "pause-workers.yaml"
    path.write_text("".join(lines))
    return path


def _ftlocust_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("ftlocust:")]


def _assert_paused_and_resumed(art, proc):
    out = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, out
    summary = json.loads((art / "summary.json").read_text())
    assert summary["passed"] is True, out
    (fault,) = summary["faults"]
    assert fault["kind"] == "pause-workers" and fault["status"] == "injected"
    assert fault["target"] == "worker-1,worker-2"
    assert fault["injected_at"] and fault["recovered_at"] and fault["rolled_back_at"]
    assert 1.9 <= fault["recovered_at"] - fault["injected_at"] < 4  # the scheduled 2 s pause
    verdicts = {c["name"]: c for c in summary["checks"]}
    # the plugin's check ran and saw the pause: some stream waited ~2 s between two tokens
    stall = verdicts["max_stall <= 5s"]
    assert stall["passed"], stall
    assert 1.5 <= float(stall["detail"].split("tokens ")[1].split(" s")[0]) < 5, stall
    # the rollback journal: one SIGCONT step for both workers, and it succeeded
    rollback = verdicts["every rollback succeeded"]
    assert rollback["passed"] and "pause-all-workers (SIGCONT to worker-1, worker-2)" in rollback["detail"], rollback
    assert summary["phases"]["all"]["failed"] == 0
    # ground truth: the deployment's own event log saw each worker stopped, then continued
    with open(art / "deployment" / "events.jsonl") as f:
        signalled = [(e["role"], e["signal"]) for e in map(json.loads, f) if e["event"] == "process_signalled"]
    assert signalled == [("worker-1", "SIGSTOP"), ("worker-2", "SIGSTOP"), ("worker-1", "SIGCONT"), ("worker-2", "SIGCONT")]
    assert "PASS max_stall <= 5s" in proc.stdout


@pytest.mark.timeout(60)
def test_a_plugin_file_outside_the_package_with_ft_plugin(tmp_path):
    shutil.copy(os.path.join(EXAMPLES, "pause_workers.py"), tmp_path / "pause_workers.py")
    scenario = _example_scenario(tmp_path, with_plugins_line=False)
    art = tmp_path / "run"
    # relative to the current directory, as a user types it from their own folder
    proc = _run(SMALL + ["--ft-plugin", "pause_workers.py", "--ft-scenario", str(scenario),
                         "--ft-artifacts", str(art)], cwd=tmp_path)
    _assert_paused_and_resumed(art, proc)


@pytest.mark.timeout(60)
def test_a_plugin_named_by_the_scenario_relative_to_its_folder(tmp_path):
    drill = tmp_path / "drills"
    drill.mkdir()
    shutil.copy(os.path.join(EXAMPLES, "pause_workers.py"), drill / "pause_workers.py")
    scenario = _example_scenario(drill)  # plugins: [pause_workers.py]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    art = tmp_path / "run"
    proc = _run(SMALL + ["--ft-scenario", str(scenario), "--ft-artifacts", str(art)], cwd=elsewhere)
    _assert_paused_and_resumed(art, proc)


@pytest.mark.timeout(60)
def test_the_environment_variable_and_locust_conf_load_plugins(tmp_path):
    shutil.copy(os.path.join(EXAMPLES, "pause_workers.py"), tmp_path / "pause_workers.py")
    (tmp_path / "extra.py").write_text("from ftlocust.checks import register_check\n"
                                       "register_check('always', [], label=lambda p: 'always')"
                                       "(lambda p, r: (True, 'yes'))\n")
    scenario = _example_scenario(tmp_path, with_plugins_line=False)
    scenario.write_text(scenario.read_text() + "  - always\n")
    args = ["--ft-scenario", str(scenario), "--ft-dry-run"]
    proc = _run(args, cwd=tmp_path, env={"FTLOCUST_PLUGIN": "pause_workers.py,./extra.py"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fault 1: SIGSTOP worker-1, worker-2 for 2 s, 3 s after load start" in proc.stdout
    assert "check: max_stall <= 5s" in proc.stdout and "check: always" in proc.stdout
    (tmp_path / "locust.conf").write_text("ft-plugin = pause_workers.py\n")
    scenario.write_text(scenario.read_text().replace("  - always\n", ""))
    proc = _run(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "check: max_stall <= 5s" in proc.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["flag", "scenario"])
def test_a_plugin_that_raises_on_import_is_one_line_exit_2(tmp_path, how):
    (tmp_path / "broken.py").write_text("import os\nraise RuntimeError('needs ' + 'a GPU')\n")
    scenario = _example_scenario(tmp_path, with_plugins_line=False)
    if how == "scenario":
        scenario.write_text("plugins: [broken.py]\n" + scenario.read_text())
        args, named = [], f"{scenario}: plugins: plugin 'broken.py'"
    else:
        args, named = ["--ft-plugin", str(tmp_path / "broken.py")], f"--ft-plugin: plugin '{tmp_path / 'broken.py'}'"
    proc = _run(args + ["--ft-scenario", str(scenario), "--ft-artifacts", str(tmp_path / "run")], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert _ftlocust_lines(proc.stderr) == [f"ftlocust: {named} failed to import: RuntimeError: needs a GPU"]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "deployment").exists()  # nothing started


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["kind", "check"])
def test_a_plugins_kind_or_check_without_the_plugin_is_one_line_exit_2(tmp_path, what):
    scenario = _example_scenario(tmp_path, with_plugins_line=False)
    if what == "kind":  # checks are built first: leave only the fault to the plugin
        scenario.write_text(scenario.read_text().replace("  - {check: max_stall, max_s: 5}\n", ""))
    proc = _run(["--ft-scenario", str(scenario), "--ft-artifacts", str(tmp_path / "run")], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = _ftlocust_lines(proc.stderr)
    if what == "kind":
        assert line.startswith(f"ftlocust: {scenario}: faults[0].kind: expected one of ")
        assert line.endswith("got 'pause-workers' (a plugin's kind? load it with --ft-plugin or the scenario's plugins:)")
    else:
        assert line.startswith(f"ftlocust: {scenario}: checks[1]") and "'max_stall'" in line, line
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "deployment").exists()
