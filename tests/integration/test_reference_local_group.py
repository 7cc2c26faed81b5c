"""ProcessGroup (ftlocust/targets/local.py) with small real processes on 127.0.0.1."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ftlocust.errors import ConfigError
from ftlocust.targets.local import ProcessGroup, ProcessSpec

pytestmark = pytest.mark.integration

# Serves GET /health on an OS-assigned port, publishes the port in a file, logs a line.
SERVER = textwrap.dedent(
    """
    import http.server, os, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *a): pass
    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    tmp = sys.argv[1] + ".tmp"
    open(tmp, "w").write(str(srv.server_address[1])); os.replace(tmp, sys.argv[1])
    print("serving", srv.server_address[1], flush=True)
    srv.serve_forever()
    """
)


def server_spec(tmp_path, role, **kw):
    port_file = tmp_path / f"{role}.port"

    def health():
        try:
            return f"http://127.0.0.1:{int(port_file.read_text())}/health"
        except (OSError, ValueError):
            return None

    return ProcessSpec(role, [sys.executable, "-c", SERVER, str(port_file)], health_url=health, **kw)


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_start_ready_signal_restart_stop(tmp_path):
    with ProcessGroup(tmp_path) as group:
        pid = group.start(server_spec(tmp_path, "a"))
        assert group.alive("a") and group.pid("a") == pid
        assert (tmp_path / "pids" / "a.pid").read_text().strip() == str(pid)
        assert group.ready_at["a"] >= group.started_at["a"]
        assert "serving" in open(group.log_path("a")).read()
        group.start(server_spec(tmp_path, "b"))
        assert group.roles() == ["a", "b"]

        new_pid = group.restart("a")
        assert new_pid != pid and gone(pid) and group.alive("a")
        assert "serving" in (tmp_path / "logs" / "a.previous.log").read_text()

        assert group.signal("b", signal.SIGKILL) == group.pid("b")
        deadline = time.monotonic() + 5
        while group.alive("b") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not group.alive("b") and group.returncode("b") == -signal.SIGKILL
        with pytest.raises(ConfigError, match="b .*not running"):
            group.signal("b", signal.SIGTERM)
        pids = [group.pid("a"), group.pid("b")]
    assert all(gone(p) for p in pids)
    assert list((tmp_path / "pids").iterdir()) == []


def test_process_that_exits_before_ready_is_a_one_line_error(tmp_path):
    spec = ProcessSpec("bad", [sys.executable, "-c", "print('boom: no such model'); raise SystemExit(3)"],
                       health_url="http://127.0.0.1:9/health")
    with ProcessGroup(tmp_path) as group:
        with pytest.raises(ConfigError) as e:
            group.start(spec)
    msg = str(e.value)
    assert "\n" not in msg and "bad" in msg and "code 3" in msg
    assert str(tmp_path / "logs" / "bad.log") in msg and "boom: no such model" in msg


def test_process_never_ready_times_out(tmp_path):
    spec = ProcessSpec("slow", [sys.executable, "-c", "import time; time.sleep(30)"],
                       health_url=lambda: None, startup_timeout_s=0.5)
    group = ProcessGroup(tmp_path)
    with pytest.raises(ConfigError, match=r"process slow not ready after 0.5 s"):
        group.start(spec)
    pid = group.pid("slow")
    group.stop()
    assert gone(pid)


def test_stop_escalates_to_sigkill_after_grace(tmp_path):
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    with ProcessGroup(tmp_path) as group:
        group.start(ProcessSpec("stubborn", [sys.executable, "-c", stubborn]))
        deadline = time.monotonic() + 10
        while "up" not in open(group.log_path("stubborn")).read() and time.monotonic() < deadline:
            time.sleep(0.02)
        t = time.monotonic()
        group.stop("stubborn", grace_s=0.3)
        assert group.returncode("stubborn") == -signal.SIGKILL
        assert time.monotonic() - t < 5


def test_unknown_role_and_bad_names(tmp_path):
    group = ProcessGroup(tmp_path)
    with pytest.raises(ConfigError, match="nope: not started by this group"):
        group.restart("nope")
    with pytest.raises(ConfigError, match="role"):
        group.start(ProcessSpec("a/b", [sys.executable, "-c", "pass"]))
    with pytest.raises(ConfigError, match="cannot start"):
        group.start(ProcessSpec("x", ["/nonexistent/binary"]))


def test_works_under_gevent_monkey_patching(tmp_path):
    """Locust patches everything: start/wait/stop must still work (no threads, cooperative waits)."""
    script = textwrap.dedent(
        f"""
        from gevent import monkey; monkey.patch_all()
        import sys, gevent
        sys.path.insert(0, {os.getcwd()!r})
        from tests.integration.test_reference_local_group import server_spec
        from ftlocust.targets.local import ProcessGroup
        import pathlib
        tmp = pathlib.Path({str(tmp_path)!r})
        ticks = []
        ticker = gevent.spawn(lambda: [ticks.append(1) or gevent.sleep(0.01) for _ in range(1000)])
        with ProcessGroup(tmp) as g:
            pid = g.start(server_spec(tmp, "svc"))
            g.restart("svc")
        ticker.kill()
        print("OK", len(ticks) > 5)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    assert "OK True" in out.stdout  # the hub kept running other greenlets while we waited


def test_exits_say_how_each_process_ended_except_those_the_group_stopped(tmp_path):
    group = ProcessGroup(tmp_path)
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    try:
        group.start(ProcessSpec("clean", [sys.executable, "-c", "import sys; sys.exit(0)"]), wait=False)
        group.start(ProcessSpec("failing", [sys.executable, "-c", "import sys; sys.exit(3)"]), wait=False)
        killed = group.start(ProcessSpec("killed", sleep), wait=False)
        group.start(ProcessSpec("stopped", sleep), wait=False)
        group.start(ProcessSpec("restarted", sleep), wait=False)
        os.kill(killed, signal.SIGKILL)
        group.restart("restarted", grace_s=1, wait=False)
        group.stop("stopped", grace_s=1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(group.exits()) < 3:
            time.sleep(0.05)
        assert group.exits() == [
            {"role": "clean", "pid": group.pid("clean"), "exit_code": 0, "signal": None},
            {"role": "failing", "pid": group.pid("failing"), "exit_code": 3, "signal": None},
            {"role": "killed", "pid": killed, "exit_code": None, "signal": "SIGKILL"},
        ]  # the stopped one and the restarted one's first process ended by the group's own hand
    finally:
        group.stop(grace_s=1)
    assert len(group.exits()) == 3  # teardown adds nothing
