"""The GPU monitor in real drills, through the fake NVML (every Locust process inherits
FTLOCUST_NVML_MODULE / FAKE_NVML_STATE): gpu.jsonl spans the load, the summary has the GPUs'
figures per phase and per fault, the report draws the series; `--ft-gpu-monitor on` without
NVML is one line and exit 2 before load; the web UI's GPUs tab serves the latest samples.

    locust -f locustfiles/migration.py --headless --ft-scenario gpu.yaml
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from ftlocust.jsonl import read_jsonl
from ftlocust.records import read_records
from tests.support import fake_nvml
from tests.integration.test_webui_runs import _wait_for
from tests.support.distributed import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

SCENARIO = """
name: gpu-monitored
target: {kind: reference, workers: 2, migration_limit: 3, options: {token_delay_s: 0.005}}
load: {endpoint: completion-stream, requests_per_client: 10, rate: 4, output_tokens: 20}
gpu: {interval_s: 0.2}
faults:
  - {name: hang-worker-1, kind: process-signal, target: worker-1, signal: SIGSTOP, duration_s: 1.0,
     trigger: {after_requests: 8}}
checks:
  - {check: gpu_metric, field: util_pct, stat: max, window: run, max: 100}
  - {check: gpu_metric, field: mem_used_mib, stat: max, window: "fault:hang-worker-1", gpu: "GPU-fake-0001", min: 500}
"""


def _env(tmp_path, gpus=2, fail=None, module="tests.support.fake_nvml"):
    state = tmp_path / "nvml.json"
    fake_nvml.write_state(str(state), [fake_nvml.gpu(i) for i in range(gpus)], fail=fail)
    return {**os.environ, "FTLOCUST_NVML_MODULE": module, "FAKE_NVML_STATE": str(state)}


def _locust(args, env, timeout=180):
    return subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / "migration.py"),
                           "--headless", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _png_height(path):
    with open(path, "rb") as f:
        return struct.unpack(">I", f.read(24)[20:24])[0]


def test_a_drill_samples_the_gpus_from_load_start_to_the_end_of_the_run(tmp_path):
    scenario = tmp_path / "gpu.yaml"
    scenario.write_text(SCENARIO)
    art = tmp_path / "run"
    proc = _locust(["-u", "3", "-r", "3", "--ft-scenario", str(scenario), "--ft-artifacts", str(art)],
                   _env(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    (fault,) = summary["faults"]
    assert fault["status"] == "injected" and fault["recovered_at"] is not None
    records = read_records(str(art / "requests.jsonl"))
    lines = read_jsonl(art / "gpu.jsonl")
    assert lines and not any("error" in line for line in lines)
    assert {line["uuid"] for line in lines} == {"GPU-fake-0000", "GPU-fake-0001"}
    first_start = min(r.start_wall for r in records)
    last_end = max(r.end_wall for r in records)
    times = sorted(line["t"] for line in lines if line["index"] == 0)
    assert times[0] <= first_start + 0.3 and times[-1] >= last_end  # the samples span the load…
    assert times[-1] >= max(r["at"] for r in summary["rollbacks"])  # …and the rollback
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) < 2.0, gaps  # every 0.2 s, also while the load ran (10 intervals: a busy box's slack)
    monitor = summary["gpu_monitor"]
    assert monitor["monitored"] and monitor["samples"] == len(lines) and monitor["interval_s"] == 0.2
    gpus = summary["gpus"]
    assert [g["uuid"] for g in gpus] == ["GPU-fake-0000", "GPU-fake-0001"]
    for g in gpus:
        p = g["phases"]
        assert set(p) == {"before", "spanning", "after", "run"}
        assert p["before"]["samples"] >= 1 and p["after"]["samples"] >= 1
        assert p["before"]["samples"] + p["spanning"]["samples"] + p["after"]["samples"] == p["run"]["samples"]
        assert p["run"]["mem_used_mib"]["max"] == 512 and p["run"]["power_w"]["mean"] == 75
        (w,) = g["faults"]
        assert w["name"] == "hang-worker-1" and w["from"] == fault["injected_at"] and w["to"] == fault["recovered_at"]
        # the window holds exactly the samples gpu.jsonl has between the fault's ends, and some
        inside = [line for line in lines if line["index"] == g["index"] and w["from"] <= line["t"] <= w["to"]]
        assert w["samples"] == len(inside) >= 2
    checks = {c["name"]: c for c in summary["checks"]}
    assert all(c["passed"] for c in checks.values()), checks
    html = (art / "report.html").read_text()
    assert "<h2>GPUs</h2>" in html and "util %, memory used (MiB), SM clock (MHz), power (W)" in html
    assert "<th>fault:hang-worker-1</th>" in html
    assert _png_height(art / "timeline.png") == 1050  # the GPU rows on the requests' time axis


def test_without_nvml_auto_says_why_in_one_line_and_runs(tmp_path):
    art = tmp_path / "run"
    scenario = tmp_path / "gpu.yaml"
    scenario.write_text(SCENARIO.split("faults:")[0])  # no fault, no GPU check
    proc = _locust(["-u", "2", "-r", "2", "--ft-scenario", str(scenario), "--ft-artifacts", str(art),
                    "--ft-requests-per-client", "3"], _env(tmp_path, module="tests.support.no_such_nvml"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if "GPU monitor off" in x]
    assert "INFO" in line and "FTLOCUST_NVML_MODULE=tests.support.no_such_nvml cannot be imported" in line
    assert not (art / "gpu.jsonl").exists()
    assert json.loads((art / "summary.json").read_text())["gpus"] == []


@pytest.mark.parametrize("env_kw, why", [
    ({"fail": {"nvmlInit": 9}}, "NVML: cannot initialise: the NVIDIA driver is not loaded"),
    ({"module": "tests.support.no_such_nvml"}, "NVML: FTLOCUST_NVML_MODULE=tests.support.no_such_nvml cannot be "
                                               "imported (No module named 'tests.support.no_such_nvml')"),
])
def test_monitor_on_without_nvml_is_one_line_and_exit_2_before_load(tmp_path, env_kw, why):
    art = tmp_path / "run"
    proc = _locust(["--ft-gpu-monitor", "on", "--ft-artifacts", str(art), "--ft-requests-per-client", "3"],
                   _env(tmp_path, **env_kw), timeout=60)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("ftlocust:")]
    assert errors == [f"ftlocust: --ft-gpu-monitor on needs NVML: {why}"], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not (art / "requests.jsonl").exists() and not (art / "deployment").exists()  # before load, nothing started


def test_the_web_ui_gpus_tab_serves_the_latest_samples(tmp_path):
    scenario = tmp_path / "gpu.yaml"
    scenario.write_text(SCENARIO.split("faults:")[0])  # no fault: the run goes on until Stop
    art = tmp_path / "run"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / "load.py"), "--web-host", "127.0.0.1",
         "--web-port", str(port), "--ft-scenario", str(scenario), "--ft-artifacts", str(art),
         "--ft-requests-per-client", "0"],
        cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def get(path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, json.load(r) if "json" in r.headers.get("Content-Type", "") else r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)
        except OSError:
            return None, None

    def wait_for(what, predicate, timeout_s=60):
        return _wait_for(what, predicate, timeout_s, proc)

    try:
        host = wait_for("the deployment", lambda: (m := re.search(r"deployment ready at (\S+)", _read(art / "test.log")))
                        and m.group(1))
        wait_for("the web UI", lambda: get("/")[0] == 200)
        status, page = get("/")
        assert re.search(r'"extended_tabs": ?\[\{"key": ?"gpus", ?"title": ?"GPUs"\}\]', page), page[-2000:]
        status, body = get("/ftlocust/tabs/gpus")
        assert status == 404 and body["error"] == "no GPU monitor is sampling now"  # before load: not served
        data = urllib.parse.urlencode({"user_count": 2, "spawn_rate": 2, "host": host}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/swarm", data=data), timeout=30):
            pass
        rows = wait_for("the GPUs tab", lambda: (a := get("/ftlocust/tabs/gpus"))[0] == 200 and len(a[1]["rows"]) == 2
                        and all("util_pct" in r for r in a[1]["rows"]) and a[1]["rows"])
        assert [r["uuid"] for r in rows] == ["GPU-fake-0000", "GPU-fake-0001"]
        assert rows[0]["mem_used_mib"] == 512 and rows[0]["throttle"] == "gpu_idle" and rows[0]["age_s"] < 5
        status, stats = get("/stats/requests")
        (tab,) = [e for e in stats["extended_stats"] if e["key"] == "gpus"]
        assert [r["uuid"] for r in tab["data"]] == ["GPU-fake-0000", "GPU-fake-0001"]
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/stop", data=b""), timeout=60):
            pass
        assert get("/ftlocust/tabs/gpus")[0] == 404  # the run is over: its monitor stopped
        assert read_jsonl(art / "gpu.jsonl")
        proc.terminate()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _read(path):
    try:
        return Path(path).read_text()
    except OSError:
        return ""
