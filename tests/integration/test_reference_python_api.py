"""ReferenceDeployment used from Python, as the drills use it (start, observe, restart, stop)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ftlocust.errors import ConfigError
from ftlocust.targets.reference import ReferenceDeployment, check_continuity, client, read_events

pytestmark = pytest.mark.integration


def pid_gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


def complete(dep, **kw):
    return client.post_json(dep.base_url, "/v1/completions",
                            {"model": dep.model, "prompt": "p q r", "max_tokens": 2, **kw})


def test_start_observe_restart_stop(tmp_path):
    dep = ReferenceDeployment(tmp_path, workers=2, token_delay_s=0.005, lease_ttl_s=3)
    with dep:
        assert dep.startup_s is not None and 0 < dep.startup_s < 60
        assert dep.frontend_role == "frontend" and dep.worker_roles() == ["worker-1", "worker-2"]
        assert dep.group.roles() == ["frontend", "worker-1", "worker-2"]
        for role in dep.roles():
            assert client.get_json(dep.health_url(role).rsplit("/", 1)[0], "/health")[0] == 200
            assert "dynamo_" in client.get_text(dep.metrics_url(role))
            assert os.path.exists(dep.log_path(role))
            assert role in dep.group.ready_at and dep.group.ready_at[role] >= dep.group.started_at[role]
        assert dep.events_path == str(tmp_path / "events.jsonl")

        old_pid = dep.group.pid("worker-1")
        new_pid = dep.restart("worker-1")
        assert new_pid != old_pid and pid_gone(old_pid)
        assert os.path.exists(tmp_path / "logs" / "worker-1.previous.log")
        assert client.get_json(dep.url("worker-1"), "/health")[0] == 200

        base = dep.base_url
        fe_pid = dep.restart("frontend")
        assert dep.base_url == base and dep.group.pid("frontend") == fe_pid
        # workers re-registered with the new frontend: both serve again
        names = {i["name"] for i in client.get_json(base, "/health")[1]["instances"]}
        deadline = time.monotonic() + 10
        while names != {"worker-1", "worker-2"} and time.monotonic() < deadline:
            time.sleep(0.05)
            names = {i["name"] for i in client.get_json(base, "/health")[1]["instances"]}
        assert names == {"worker-1", "worker-2"}
        assert all(complete(dep)[0] == 200 for _ in range(4))

        assert dep.signal("worker-2", signal.SIGKILL) == dep.group.pid("worker-2")
        pids = dep.pids()
    assert all(pid_gone(p) for p in pids.values())
    events = [e["event"] for e in read_events(dep.events_path)]
    for name in ("process_started", "process_ready", "deployment_ready", "process_restarted",
                 "process_signalled", "process_stopped", "deployment_stopped"):
        assert name in events, name


def test_bad_arguments_are_one_line_config_errors(tmp_path):
    for kwargs, needle in (({"workers": 0}, "workers=0"), ({"port": 70000}, "port=70000"),
                           ({"migration_limit": -1}, "migration_limit=-1"), ({"lease_ttl_s": 0}, "lease_ttl_s=0"),
                           ({"token_delay_s": -1}, "token_delay_s=-1")):
        with pytest.raises(ConfigError, match=needle):
            ReferenceDeployment(tmp_path, **kwargs)
    dep = ReferenceDeployment(tmp_path)
    with pytest.raises(ConfigError, match="not part of this deployment"):
        dep.log_path("worker-9")


def test_disagg_roles_and_migration_between_decode_workers(tmp_path):
    with ReferenceDeployment(tmp_path, workers=2, disagg=True, prefill_workers=1, token_delay_s=0.01) as dep:
        assert dep.worker_roles() == ["prefill-1", "decode-1", "decode-2"]
        s = client.stream(dep.base_url, "/v1/completions",
                          {"model": dep.model, "prompt": "a b", "max_tokens": 200, "seed": 3})
        s.read_tokens(10)
        rid = s.result.request_id
        serving = next(r for r in ("decode-1", "decode-2")
                       if f"request received request_id={rid}" in open(dep.log_path(r)).read())
        dep.signal(serving, signal.SIGKILL)
        r = s.read_all()
        assert r.done and check_continuity(3, r.texts, 200) == "ok"
        # the new decode worker asked the prefill worker again (prompt + tokens so far)
        assert open(dep.log_path("prefill-1")).read().count(f"request received request_id={rid}") == 2


def test_start_and_stop_under_gevent_monkey_patching(tmp_path):
    """Drills start the deployment inside Locust, where gevent patches sockets, sleep, subprocess."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = textwrap.dedent(
        f"""
        from gevent import monkey; monkey.patch_all()
        import gevent
        from ftlocust.targets.reference import ReferenceDeployment, client
        ticks = []
        ticker = gevent.spawn(lambda: [ticks.append(1) or gevent.sleep(0.01) for _ in range(100000)])
        with ReferenceDeployment({str(tmp_path)!r}, workers=1, token_delay_s=0.001) as dep:
            status, _, body = client.post_json(dep.base_url, "/v1/completions",
                                               {{"model": dep.model, "prompt": "x", "max_tokens": 3}})
            pids = list(dep.pids().values())
        ticker.kill()
        print("OK", status, len(ticks) > 10, pids)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK 200 True" in out.stdout
    pids = [int(p) for p in out.stdout.split("[", 1)[1].rstrip("]\n").split(",")]
    assert len(pids) == 2 and all(pid_gone(p) for p in pids)
