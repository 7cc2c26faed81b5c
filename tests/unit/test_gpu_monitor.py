"""The GPU monitor through the fake NVML: samples, gpu.jsonl, a bounded stop, the windows'
figures, auto / on / off with their one-line errors, the gpu_metric check, the report, the
timeline and the web UI's GPUs tab; one test against the real NVML (`@pytest.mark.gpu`)."""
import json
import struct
import sys
import threading
import time

import gevent
import pytest

from ftlocust import checks, gpu_monitor, options, phases
from ftlocust.drill import Drill, DrillOptions
from ftlocust.errors import ConfigError
from ftlocust.faults import REGISTRY
from ftlocust.gpu import GpuSample, GpuUnavailable
from ftlocust.gpu_monitor import GpuSpec, plan, summarize
from ftlocust.jsonl import read_jsonl
from ftlocust.phases import FaultEvent
from ftlocust.records import OK, RequestRecord
from ftlocust.scenario import FaultSpec, Scenario, TargetSpec, TriggerSpec, scenario_from_dict
from tests.support import fake_nvml
from tests.support.fakes import CountingFault


@pytest.fixture
def fake_gpus(tmp_path, monkeypatch):
    """Two fake H200s; returns the state file's path."""
    state = tmp_path / "nvml.json"
    fake_nvml.write_state(str(state), [fake_nvml.gpu(0), fake_nvml.gpu(1)])
    monkeypatch.setenv("FTLOCUST_NVML_MODULE", "tests.support.fake_nvml")
    monkeypatch.setenv("FAKE_NVML_STATE", str(state))
    return state


@pytest.fixture
def no_nvml(monkeypatch):
    monkeypatch.setenv("FTLOCUST_NVML_MODULE", "tests.support.no_such_nvml_module")


def _monitor(interval_s=0.05, gpus=()):
    p = plan(GpuSpec(interval_s=interval_s, gpus=list(gpus)), None, "x.yaml: gpu")
    assert p.monitor is not None, p.reason
    return p.monitor


def _wait(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


# --- sampling -----------------------------------------------------------------------------------


def test_monitor_samples_every_gpu_into_flushed_json_lines(fake_gpus, tmp_path):
    m = _monitor(interval_s=0.05)
    path = tmp_path / "gpu.jsonl"
    m.start(str(path))
    try:
        # flushed per line: readable while the monitor still runs (a crashed run keeps them)
        assert _wait(lambda: len(read_jsonl(path)) >= 4), "no line reached the file while sampling"
        fake_nvml.set_busy(1, True)
        busy_from = time.time()
        assert _wait(lambda: any(s.index == 1 and s.util_pct == 100 for s in m.samples))
        assert m.running
    finally:
        assert m.stop() is True
    assert not m.running
    lines = read_jsonl(path)
    assert len(lines) == len(m.samples) >= 6 and not any("error" in line for line in lines)
    assert {line["index"] for line in lines} == {0, 1}
    assert {line["uuid"] for line in lines} == {"GPU-fake-0000", "GPU-fake-0001"}
    busy = [line for line in lines if line["index"] == 1 and line["t"] > busy_from]
    assert busy and all(b["util_pct"] == 100 and b["power_w"] == 690 and b["sm_clock_mhz"] == 1980 for b in busy)
    idle = [line for line in lines if line["index"] == 0]
    assert all(i["util_pct"] == 0 and i["throttle"] == ["gpu_idle"] and i["mem_used_mib"] == 512 for i in idle)
    ts = [line["t"] for line in lines if line["index"] == 0]
    gaps = [b - a for a, b in zip(ts, ts[1:])]
    assert gaps and min(gaps) > 0.03 and sum(gaps) / len(gaps) < 0.2  # every interval_s, not in bursts


def test_gpus_chosen_by_index_uuid_or_pci_bus_id(fake_gpus):
    assert _monitor(gpus=["GPU-fake-0001"]).indices == [1]
    assert _monitor(gpus=["0000:19:00.0"]).indices == [0]
    assert _monitor(gpus=[1, 0]).indices == [1, 0]
    assert _monitor().indices == [0, 1]  # default: every GPU


def test_stop_is_bounded_when_nvml_hangs(fake_gpus):
    m = _monitor(interval_s=0.05)
    release = threading.Event()
    real_sample = m.nvml.sample

    def hanging(index):
        release.wait(30)
        return real_sample(index)

    m.nvml.sample = hanging
    m.start(None)
    time.sleep(0.05)
    t0 = time.monotonic()
    assert m.stop(timeout_s=0.3) is False  # the thread is stuck in NVML: left behind, not waited for
    assert time.monotonic() - t0 < 1.5
    release.set()


def test_a_gpu_that_cannot_be_read_is_an_error_line_and_sampling_goes_on(fake_gpus, tmp_path):
    m = _monitor(interval_s=0.05)
    real_sample = m.nvml.sample

    def flaky(index):
        if index == 1:
            raise fake_nvml.NVMLError(15)
        return real_sample(index)

    m.nvml.sample = flaky
    m.start(str(tmp_path / "gpu.jsonl"))
    assert _wait(lambda: len(m.samples) >= 3)
    m.stop()
    lines = read_jsonl(tmp_path / "gpu.jsonl")
    assert {s.index for s in m.samples} == {0}
    errors = [line for line in lines if "error" in line]
    assert errors and all(e["index"] == 1 and "GPU 1" in e["error"] for e in errors)
    assert m.error_count == len(errors) and "NVML error 15" in m.first_error


def test_a_slow_nvml_read_does_not_block_the_gevent_hub(fake_gpus):
    m = _monitor(interval_s=0.05, gpus=[0])
    real_sample = m.nvml.sample

    def slow(index):
        time.sleep(1.5)  # blocking, as a C call is: only a thread of its own keeps the greenlets going
        return real_sample(index)

    m.nvml.sample = slow
    m.start(None)
    ticks = []
    try:
        for _ in range(30):
            t = time.monotonic()
            gevent.sleep(0.01)
            ticks.append(time.monotonic() - t)
    finally:
        m.stop()
    # In the hub's thread each read would stall a tick for 1.5 s; half that is far above any
    # scheduling delay of a busy machine.
    assert m.samples and max(ticks) < 0.75, max(ticks)


# --- windows and the summary --------------------------------------------------------------------


def _s(t, index=0, util=0.0, mem=500.0, clock=1980.0, power=100.0, temp=30.0, throttle=()):
    return GpuSample(t=t, index=index, uuid=f"GPU-{index}", util_pct=util, mem_used_mib=mem, mem_total_mib=1000.0,
                     temp_c=temp, sm_clock_mhz=clock, power_w=power, throttle=list(throttle))


def test_summary_splits_samples_by_phase_like_requests_and_by_fault_window():
    samples = [_s(10, util=0), _s(11, util=10), _s(12, util=100, mem=900, power=600, throttle=["sw_power_cap"]),
               _s(13, util=100, mem=950, clock=1200, power=650, throttle=["sw_power_cap"]), _s(14, util=50),
               _s(15, util=0)]
    fault = FaultEvent(name="hold-memory", kind="gpu-memory-pressure", target="gpu:0", injected_at=11.5,
                       recovered_at=13.5)
    (gpu,) = summarize(samples, [fault])
    p = gpu["phases"]
    assert {k: w["samples"] for k, w in p.items()} == {"before": 2, "spanning": 1, "after": 3, "run": 6}
    assert p["spanning"]["util_pct"] == {"min": 100.0, "mean": 100.0, "max": 100.0}  # the period 11 → 12 holds T_f
    assert p["after"]["util_pct"]["mean"] == pytest.approx(50.0) and p["after"]["util_pct"]["max"] == 100.0
    assert p["before"]["mem_used_mib"]["max"] == 500.0 and p["run"]["mem_used_mib"]["max"] == 950.0
    assert p["run"]["sm_clock_mhz"]["min"] == 1200.0
    assert p["run"]["power_w"]["mean"] == pytest.approx((100 * 4 + 600 + 650) / 6)
    assert p["run"]["throttle"] == {"sw_power_cap": 2} and p["before"]["throttle"] == {}
    (w,) = gpu["faults"]
    assert (w["name"], w["from"], w["to"], w["samples"]) == ("hold-memory", 11.5, 13.5, 2)  # samples at 12, 13
    assert w["mem_used_mib"]["min"] == 900.0 and w["temp_c"]["max"] == 30.0


def test_a_fault_window_ends_at_rollback_else_at_the_last_sample():
    samples = [_s(t) for t in range(10, 16)]
    rolled = FaultEvent(name="a", kind="k", target="t", injected_at=11, rolled_back_at=12.5)
    lasting = FaultEvent(name="b", kind="k", target="t", injected_at=13.5)
    never = FaultEvent(name="c", kind="k", target="t", injected_at=None, status=phases.NOT_FIRED)
    (gpu,) = summarize(samples, [rolled, lasting, never])
    assert [(f["name"], f["to"], f["samples"]) for f in gpu["faults"]] == [("a", 12.5, 2), ("b", 15, 2)]


def test_without_a_fault_one_run_phase_and_gpus_without_samples_are_listed():
    samples = [_s(1, util=20), _s(2, util=40), _s(1.5, index=1)]
    gpus = [{"index": 0, "uuid": "GPU-0", "name": "H200", "pci_bus_id": "00000000:19:00.0"},
            {"index": 1, "uuid": "GPU-1", "name": "H200", "pci_bus_id": None},
            {"index": 2, "uuid": "GPU-2", "name": "H200", "pci_bus_id": None}]
    out = summarize(samples, [], gpus)
    assert [g["index"] for g in out] == [0, 1, 2]
    assert list(out[0]["phases"]) == ["run"] and out[0]["phases"]["run"]["util_pct"]["mean"] == 30.0
    assert out[0]["name"] == "H200" and out[0]["mem_total_mib"] == 1000.0 and out[0]["faults"] == []
    assert out[2]["phases"]["run"]["samples"] == 0 and out[2]["phases"]["run"]["util_pct"]["max"] is None


# --- auto / on / off ------------------------------------------------------------------------------


def test_auto_without_nvml_monitors_nothing_and_says_why(no_nvml):
    p = plan(GpuSpec(), None, "x.yaml: gpu")
    assert p.monitor is None and p.mode == "auto"
    assert "FTLOCUST_NVML_MODULE=tests.support.no_such_nvml_module cannot be imported" in p.reason
    assert "\n" not in p.reason


@pytest.mark.parametrize("flag, spec", [("on", GpuSpec()), (None, GpuSpec(monitor="on"))])
def test_on_without_nvml_is_a_one_line_error(no_nvml, flag, spec):
    with pytest.raises(GpuUnavailable) as e:
        plan(spec, flag, "x.yaml: gpu")
    text = str(e.value)
    assert "\n" not in text and "cannot be imported" in text
    assert text.startswith("--ft-gpu-monitor on needs NVML" if flag else "x.yaml: gpu.monitor: true needs NVML")


def test_on_with_a_driver_that_is_not_loaded_names_it(fake_gpus):
    fake_nvml.write_state(str(fake_gpus), [fake_nvml.gpu(0)], fail={"nvmlInit": 9})
    assert "the NVIDIA driver is not loaded" in plan(GpuSpec(), None, "x.yaml: gpu").reason  # auto: why not
    with pytest.raises(GpuUnavailable, match=r"^--ft-gpu-monitor on needs NVML: NVML: cannot initialise: "
                                             r"the NVIDIA driver is not loaded$"):
        plan(GpuSpec(), "on", "x.yaml: gpu")


def test_on_with_no_gpu_or_no_such_gpu(fake_gpus):
    fake_nvml.write_state(str(fake_gpus), [])
    with pytest.raises(GpuUnavailable, match="^--ft-gpu-monitor on needs a GPU: NVML sees no GPU on this machine$"):
        plan(GpuSpec(), "on", "x.yaml: gpu")
    assert plan(GpuSpec(), "auto", "x.yaml: gpu").reason == "NVML sees no GPU on this machine"
    fake_nvml.write_state(str(fake_gpus), [fake_nvml.gpu(0)])
    with pytest.raises(GpuUnavailable, match=r"^x.yaml: gpu.gpus\[1\]: no GPU with UUID or PCI bus id 'GPU-nope'"):
        plan(GpuSpec(monitor="on", gpus=[0, "GPU-nope"]), None, "x.yaml: gpu")


def test_off_never_touches_nvml(no_nvml):
    assert plan(GpuSpec(monitor="on"), "off", "x.yaml: gpu").monitor is None  # the flag wins
    assert plan(GpuSpec(monitor="off"), None, "x.yaml: gpu").monitor is None


@pytest.mark.parametrize("gpu, message", [
    ({"interval_s": 0}, "x.yaml: gpu.interval_s: expected a number >= 0.05 (seconds), got 0"),
    ({"interval_s": "fast"}, "x.yaml: gpu.interval_s: expected a number >= 0.05 (seconds), got 'fast'"),
    ({"monitor": "maybe"}, "x.yaml: gpu.monitor: expected auto, true or false (on / off), got 'maybe'"),
    ({"gpus": [0, -1]}, "x.yaml: gpu.gpus[1]: expected a GPU index (>= 0), UUID or PCI bus id, got -1"),
    ({"gpus": [0, 0]}, "x.yaml: gpu.gpus: expected each GPU once, got [0, 0]"),
    ({"gpu": [0]}, "x.yaml: gpu.gpu: unknown field (expected one of gpus, interval_s, monitor); did you mean 'gpus'?"),
    ("on", "x.yaml: gpu: expected a mapping, got 'on'"),
])
def test_scenario_gpu_section_errors_are_one_line(gpu, message):
    with pytest.raises(ConfigError) as e:
        scenario_from_dict({"name": "s", "gpu": gpu}, source="x.yaml")
    assert str(e.value) == message


def test_scenario_gpu_section_values():
    s = scenario_from_dict({"name": "s", "gpu": {"monitor": True, "interval_s": 0.5, "gpus": [0, "GPU-a"]}}, "x.yaml")
    assert s.gpu == GpuSpec(monitor="on", interval_s=0.5, gpus=[0, "GPU-a"])
    assert scenario_from_dict({"name": "s", "gpu": {"monitor": False}}, "x.yaml").gpu.monitor == "off"
    assert scenario_from_dict({"name": "s"}, "x.yaml").gpu == GpuSpec()


def test_flag_is_parsed_and_a_bad_value_is_one_line_and_exit_2(capsys):
    convert = options.gpu_monitor_flag_type()
    assert convert("ON") == "on" and convert("auto") == "auto"
    with pytest.raises(SystemExit) as e:
        convert("yes")
    assert e.value.code == 2
    assert capsys.readouterr().err == "ftlocust: --ft-gpu-monitor: expected one of auto, on, off, got 'yes'\n"


# --- the drill ------------------------------------------------------------------------------------


@pytest.fixture
def counting_fault():
    REGISTRY[CountingFault.kind] = CountingFault
    CountingFault.injected = CountingFault.recovered = 0
    phases.TIMELINE.reset()
    yield
    REGISTRY.pop(CountingFault.kind, None)


def _record(i, start, end):
    return RequestRecord(kind="completion", endpoint="/v1/completions", stream=False, client_id="c", seq=i,
                         start_wall=start, end_wall=end, latency_s=end - start, outcome=OK, output_tokens=10,
                         expected_tokens=10, status=200)


def _gpu_drill(tmp_path, checks_=(), gpu_flag=None, gpu=None):
    scenario = Scenario(name="g", target=TargetSpec(kind="external"), checks=list(checks_),
                        faults=[FaultSpec(kind=CountingFault.kind, target="x", trigger=TriggerSpec(after_requests=3),
                                          name="rec")],
                        gpu=gpu or GpuSpec(interval_s=0.05))
    drill = Drill(scenario, DrillOptions(artifacts_dir=str(tmp_path / "run"), host="http://127.0.0.1:9",
                                         gpu_monitor=gpu_flag))
    drill.setup()
    return drill


def _png_height(path):
    with open(path, "rb") as f:
        head = f.read(24)
    return struct.unpack(">I", head[20:24])[0]


def test_drill_samples_from_load_start_to_the_end_of_the_run(fake_gpus, tmp_path, counting_fault):
    drill = _gpu_drill(tmp_path, checks_=[
        {"check": "gpu_metric", "field": "util_pct", "stat": "max", "window": "fault:rec", "gpu": 1, "min": 90},
        {"check": "gpu_metric", "field": "util_pct", "stat": "max", "window": "before", "max": 5},
    ])
    assert drill.gpu_monitor is not None and not drill.gpu_monitor.running  # set up, not started before load
    drill.load_started()
    t = time.time()
    for i in range(6):
        if i == 3:
            fake_nvml.set_busy(1, True)  # the GPU works while the fault is in effect
            gevent.sleep(0.3)
        drill.on_record(_record(i, t + i * 0.01, t + i * 0.01 + 0.005))
        gevent.sleep(0.1)
    gevent.sleep(0.3)
    code = drill.finish()
    fake_nvml.set_busy(1, False)
    assert code == 0, drill.verdict_text
    run = tmp_path / "run"
    lines = read_jsonl(run / "gpu.jsonl")
    monitor = drill.summary["gpu_monitor"]
    assert lines and monitor["samples"] == len(lines) and monitor["monitored"] and monitor["gpus"] == [0, 1]
    assert min(line["t"] for line in lines) >= drill.load_started_at
    fault = drill.summary["faults"][0]
    assert fault["rolled_back_at"] is not None and max(line["t"] for line in lines) >= fault["rolled_back_at"]
    gpus = drill.summary["gpus"]
    assert [g["uuid"] for g in gpus] == ["GPU-fake-0000", "GPU-fake-0001"]
    assert set(gpus[1]["phases"]) == {"before", "spanning", "after", "run"}
    assert gpus[1]["phases"]["before"]["util_pct"]["max"] == 0 and gpus[1]["faults"][0]["util_pct"]["max"] == 100
    saved = json.loads((run / "summary.json").read_text())
    assert saved["gpus"] == json.loads(json.dumps(gpus))
    html = (run / "report.html").read_text()
    assert "<h2>GPUs</h2>" in html and "GPU 1 GPU-fake-0001 Fake NVIDIA H200" in html and "fault:rec" in html
    assert _png_height(run / "timeline.png") == 1050  # two GPU rows below the requests
    assert "GPU" not in (run / "results.txt").read_text().split("\n\n")[0]  # the seed's table as it was


def test_drill_with_the_monitor_required_and_no_nvml_fails_before_anything_starts(no_nvml, tmp_path,
                                                                                    counting_fault):
    with pytest.raises(GpuUnavailable, match="^--ft-gpu-monitor on needs NVML"):
        _gpu_drill(tmp_path, gpu_flag="on")
    assert not (tmp_path / "run" / "requests.jsonl").exists()  # refused before the request log


def test_drill_in_auto_without_nvml_logs_one_info_line(no_nvml, tmp_path, counting_fault, caplog):
    caplog.set_level("INFO", logger="ftlocust.drill")
    drill = _gpu_drill(tmp_path)
    assert drill.gpu_monitor is None
    (line,) = [r.getMessage() for r in caplog.records if "GPU monitor" in r.getMessage()]
    assert line.startswith("GPU monitor off: NVML: FTLOCUST_NVML_MODULE=") and "\n" not in line
    drill.load_started()
    drill.finish()
    assert drill.summary["gpus"] == [] and drill.summary["gpu_monitor"]["monitored"] is False
    assert not (tmp_path / "run" / "gpu.jsonl").exists()
    assert "no GPU monitored: NVML: FTLOCUST_NVML_MODULE=" in (tmp_path / "run" / "report.html").read_text()


# --- the gpu_metric check -------------------------------------------------------------------------


def _result(samples, faults=()):
    return checks.RunResult(gpu_samples=list(samples), faults=list(faults))


def _judge(spec, result):
    (verdict,) = checks.evaluate([checks.build_check({"check": "gpu_metric", **spec})], result, builtin=False)
    return verdict


HOLD = FaultEvent(name="hold-memory", kind="gpu-memory-pressure", target="gpu:0", injected_at=11.5, recovered_at=13.5)
SAMPLES = [_s(10), _s(11), _s(12, mem=4000), _s(13, mem=4200), _s(14), _s(12, index=1, mem=100)]


def test_gpu_metric_passes_and_fails_on_the_window_figure():
    v = _judge({"field": "mem_used_mib", "window": "fault:hold-memory", "gpu": 0, "min": 1000}, _result(SAMPLES, [HOLD]))
    assert v.passed and "GPU 0 4200 (2 samples)" in v.detail, v.detail
    v = _judge({"field": "mem_used_mib", "window": "before", "gpu": "GPU-0", "min": 1000}, _result(SAMPLES, [HOLD]))
    assert not v.passed and "GPU 0 500" in v.detail
    v = _judge({"field": "mem_used_mib", "stat": "max", "window": "fault:hold-memory", "min": 1000},
               _result(SAMPLES, [HOLD]))  # every GPU: GPU 1 held nothing
    assert not v.passed and "GPU 1 100" in v.detail
    v = _judge({"field": "sm_clock_mhz", "stat": "min", "window": "run", "max": 1000}, _result(SAMPLES))
    assert not v.passed


def test_gpu_metric_without_samples_is_empty_and_fails_unless_allowed():
    spec = {"field": "util_pct", "window": "run", "max": 100}
    v = _judge(spec, _result([]))  # the monitor never ran
    assert not v.passed and v.detail.startswith("empty: no GPU sampled in window 'run'")
    assert _judge({**spec, "allow_empty": True}, _result([])).passed
    v = _judge({"field": "util_pct", "window": "fault:hold-memory", "max": 100}, _result(SAMPLES))  # never injected
    assert not v.passed and v.detail.startswith("empty:")
    v = _judge({"field": "util_pct", "window": "after", "max": 100}, _result(SAMPLES))  # no fault: no 'after'
    assert not v.passed and v.detail.startswith("empty:")
    v = _judge({"field": "util_pct", "gpu": 7, "max": 100}, _result(SAMPLES))
    assert not v.passed and "no GPU sampled matching 7" in v.detail


@pytest.mark.parametrize("spec, message", [
    ({"field": "util_pct"}, "c[0].min: missing (required: min or max, or both)"),
    ({"field": "util_pct", "max": 1, "window": "during"},
     "c[0].window: expected before, spanning, after, run or fault:<fault name>, got 'during'"),
    ({"field": "util", "max": 1}, "c[0].field: expected one of util_pct, mem_used_mib, temp_c, sm_clock_mhz, "
                                  "power_w, got 'util'; did you mean 'util_pct'?"),
    ({"field": "util_pct", "max": 1, "stat": "p99"}, "c[0].stat: expected one of min, mean, max, got 'p99'"),
    ({"field": "util_pct", "max": 1, "gpu": True}, "c[0].gpu: expected an index (>= 0) or a non-empty string, got True"),
])
def test_gpu_metric_spec_errors_are_one_line(spec, message):
    with pytest.raises(ConfigError) as e:
        checks.build_checks([{"check": "gpu_metric", **spec}], where="c")
    assert str(e.value) == message


# --- report pieces ----------------------------------------------------------------------------------


def test_series_and_report_section():
    s = gpu_monitor.series(SAMPLES, t0=10)
    assert s[0]["util_pct"][:2] == [(0, 0.0), (1, 0.0)] and s[0]["mem_used_mib"][2] == (2, 4000.0)
    assert set(s[0]) == {"util_pct", "mem_used_mib", "sm_clock_mhz", "power_w"}
    html = gpu_monitor.report_html({"gpus": summarize(SAMPLES, [HOLD]), "gpu_monitor": {"samples": 6, "interval_s": 1}})
    assert "<th>fault:hold-memory</th>" in html and "<th>mem_used_mib max</th>" in html and "4200.0" in html


# --- the web UI's GPUs tab --------------------------------------------------------------------------


def test_gpus_tab_route_and_stats_serve_the_latest_samples_while_the_monitor_runs(fake_gpus, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["locust"])  # the web UI reads its extra options from the command line
    from locust import User
    from locust.env import Environment

    from ftlocust import webui_tabs

    class Idle(User):
        pass

    env = Environment(user_classes=[Idle])
    env.create_local_runner()
    web_ui = env.create_web_ui("127.0.0.1", 0, delayed_start=True)
    current = {"monitor": None}
    webui_tabs.register_tab(web_ui, webui_tabs.gpu_tab(lambda: current["monitor"]))
    assert {"title": "GPUs", "key": "gpus"} in web_ui.template_args["extended_tabs"]
    client = web_ui.app.test_client()
    assert client.get("/ftlocust/tabs/gpus").status_code == 404  # no monitor: not served
    m = current["monitor"] = _monitor(interval_s=0.05)
    m.start(None)
    try:
        assert _wait(lambda: len(m.latest) == 2)
        answer = client.get("/ftlocust/tabs/gpus")
        assert answer.status_code == 200
        rows = answer.get_json()["rows"]
        assert [r["uuid"] for r in rows] == ["GPU-fake-0000", "GPU-fake-0001"]
        assert rows[0]["mem_total_mib"] == 143771 and rows[0]["throttle"] == "gpu_idle" and rows[0]["age_s"] < 5
        stats = client.get("/stats/requests").get_json()
        (extended,) = [e for e in stats["extended_stats"] if e["key"] == "gpus"]
        assert [r["uuid"] for r in extended["data"]] == ["GPU-fake-0000", "GPU-fake-0001"]
        assert "stats" in stats  # Locust's own answer is kept
    finally:
        m.stop()
    assert client.get("/ftlocust/tabs/gpus").get_json()["error"] == "no GPU monitor is sampling now"
    env.runner.quit()


# --- the real NVML --------------------------------------------------------------------------------


def _real_gpu_or_skip():
    try:
        nvml = gpu_monitor.open_nvml()
    except GpuUnavailable as e:
        pytest.skip(f"no GPU for NVML: {e}")
    try:
        if nvml.count() == 0:
            pytest.skip("NVML sees no GPU on this machine")
    finally:
        nvml.close()


@pytest.mark.gpu
def test_monitor_reads_the_real_gpus(monkeypatch, tmp_path):
    monkeypatch.delenv("FTLOCUST_NVML_MODULE", raising=False)
    _real_gpu_or_skip()
    m = _monitor(interval_s=0.2)
    m.start(str(tmp_path / "gpu.jsonl"))
    try:
        assert _wait(lambda: len(m.samples) >= 2 * len(m.indices), timeout_s=10)
    finally:
        assert m.stop()
    s = m.samples[0]
    assert s.uuid.startswith(("GPU-", "MIG-")) and s.mem_total_mib and s.mem_total_mib > 0
    assert s.mem_used_mib is not None and 0 <= s.mem_used_mib <= s.mem_total_mib
    assert s.util_pct is not None and 0 <= s.util_pct <= 100
    assert len(read_jsonl(tmp_path / "gpu.jsonl")) == len(m.samples)
