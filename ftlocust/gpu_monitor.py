"""The GPUs on the run's timeline: NVML samples from the start of load to the end of the run.

    gpu:                         # scenario, top level (all optional)
      monitor: auto              # auto | true | false   (--ft-gpu-monitor auto|on|off wins)
      interval_s: 1.0            # one sample of every chosen GPU per interval
      gpus: [0, "GPU-…", "0000:3b:00.0"]   # by index, UUID or PCI bus id; default: every GPU

`auto`: monitor when NVML sees a GPU, otherwise one INFO line saying why not; `on`: required,
no NVML or GPU is a one-line preflight error (`GpuUnavailable`, exit 2, before load); `off`:
nothing. `plan` decides, at set-up; the drill starts the `Monitor` at load start and stops it at
the end of the run (after rollback), the request log's window.

`Monitor` samples in a native OS thread (also under gevent's monkey-patching: NVML calls block
in C and must not stall the load's greenlets), appends each `GpuSample` as one flushed JSON line
to `<artifacts>/gpu.jsonl` (a sample that could not be read is a line with `error`), and keeps
them for the summary; `stop()` waits for the thread, bounded.

`summarize` turns samples into `summary["gpus"]`: per GPU its `phases` and, per injected
fault, a `faults` window. A sample describes the period since the previous sample of its GPU
(NVML's utilisation is averaged over it), so phases split like requests (`ftlocust.phases`)
against T_f: `before` (the period ended <= T_f), `spanning` (T_f inside it), `after` (it began
>= T_f), `run` (every sample; the only phase when no fault was injected). A fault window holds
the samples taken from its injected_at to its recovered_at (else rolled_back_at, else the end).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ftlocust import validation as v
from ftlocust.gpu import GpuSample, GpuUnavailable, Nvml
from ftlocust.phases import FaultEvent, first_fault_time, injected_faults

log = logging.getLogger("ftlocust.gpu_monitor")

GPU_FIELDS = ("monitor", "interval_s", "gpus")
AUTO, ON, OFF = "auto", "on", "off"
MODES = (AUTO, ON, OFF)
DEFAULT_INTERVAL_S = 1.0
MIN_INTERVAL_S = 0.05
STOP_TIMEOUT_S = 5.0
JSONL_NAME = "gpu.jsonl"

# The figures of a window: min / mean / max of each of these (None when the GPU reports none).
METRICS = ("util_pct", "mem_used_mib", "temp_c", "sm_clock_mhz", "power_w")
STATS = ("min", "mean", "max")
RUN = "run"
PHASE_WINDOWS = ("before", "spanning", "after", RUN)
FAULT_PREFIX = "fault:"
# What the report and the timeline draw: (metric, label).
SERIES = (("util_pct", "util %"), ("mem_used_mib", "memory used (MiB)"), ("sm_clock_mhz", "SM clock (MHz)"),
          ("power_w", "power (W)"))


# --- configuration ------------------------------------------------------------------------------


@dataclass
class GpuSpec:
    """A scenario's `gpu:` section, validated."""

    monitor: str = AUTO  # auto | on | off
    interval_s: float = DEFAULT_INTERVAL_S
    gpus: list[Any] = field(default_factory=list)  # as written: index, UUID or PCI bus id; []: all


def parse_mode(value: Any, where: str) -> str:
    """auto | on | off, also true / false (YAML) and on / off / true / false as text."""
    if isinstance(value, bool):
        return ON if value else OFF
    text = value.strip().lower() if isinstance(value, str) else value
    words = {AUTO: AUTO, ON: ON, OFF: OFF, "true": ON, "false": OFF}
    if text not in words:
        raise v.error(where, "auto, true or false (on / off)", value, v.did_you_mean(text, words))
    return words[text]


def parse_flag(value: Any, where: str = "--ft-gpu-monitor") -> str:
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in MODES:
        raise v.error(where, "one of " + ", ".join(MODES), value, v.did_you_mean(text, MODES))
    return text


def gpu_spec_from_dict(data: Any, where: str) -> GpuSpec:
    """`gpu:` → GpuSpec; a bad field is one line naming it (`x.yaml: gpu.interval_s: …`)."""
    d = v.mapping(data, where, GPU_FIELDS)
    mode = parse_mode(d.get("monitor", AUTO), v.at(where, "monitor"))
    interval = float(v.number(d.get("interval_s", DEFAULT_INTERVAL_S), v.at(where, "interval_s"),
                              minimum=MIN_INTERVAL_S, unit="seconds"))
    gpus = v.listing(d.get("gpus"), v.at(where, "gpus"), "GPUs (index, UUID or PCI bus id)")
    for i, g in enumerate(gpus):
        if isinstance(g, bool) or not (isinstance(g, int) and g >= 0 or isinstance(g, str) and g.strip()):
            raise v.error(v.at(v.at(where, "gpus"), i), "a GPU index (>= 0), UUID or PCI bus id", g)
    if len(set(map(str, gpus))) != len(gpus):
        raise v.error(v.at(where, "gpus"), "each GPU once", gpus)
    return GpuSpec(monitor=mode, interval_s=interval, gpus=gpus)


@dataclass
class Plan:
    """What set-up decided: `monitor` (not started) or None with `reason`."""

    mode: str
    monitor: "Monitor | None"
    reason: str = ""

    def status(self) -> dict:
        m = self.monitor
        return {"mode": self.mode, "monitored": m is not None, "reason": self.reason or None,
                "interval_s": m.interval_s if m else None, "gpus": [g["index"] for g in m.gpus] if m else [],
                "samples": len(m.samples) if m else 0, "errors": m.error_count if m else 0,
                "first_error": m.first_error if m else None,
                "path": m.path if m else None, "started_at": m.started_at if m else None,
                "stopped_at": m.stopped_at if m else None}


def open_nvml() -> Nvml:
    with warnings.catch_warnings():  # the deprecated `pynvml` shim warns on import
        warnings.simplefilter("ignore", FutureWarning)
        return Nvml()


def plan(spec: GpuSpec, flag: str | None, where: str) -> Plan:
    """The monitor a run gets: `flag` (--ft-gpu-monitor) wins over `spec.monitor`. `where`: the
    scenario's `gpu` path, for errors in its `gpus`. Raises GpuUnavailable (one line) when the
    monitor is required (`on`) and NVML, a GPU or a chosen GPU is missing."""
    mode = flag or spec.monitor
    source = "--ft-gpu-monitor on" if flag == ON else f"{v.at(where, 'monitor')}: true"
    if mode == OFF:
        return Plan(OFF, None, "off")
    try:
        nvml = open_nvml()
    except GpuUnavailable as e:
        if mode == ON:
            raise GpuUnavailable(f"{source} needs NVML: {e}") from None
        return Plan(AUTO, None, str(e))
    try:
        if spec.gpus:
            indices = [nvml.resolve(g, v.at(v.at(where, "gpus"), i)) for i, g in enumerate(spec.gpus)]
        else:
            n = nvml.count()
            if n == 0:
                raise GpuUnavailable("NVML sees no GPU on this machine")
            indices = list(range(n))
        monitor = Monitor(nvml, indices, spec.interval_s)
    except GpuUnavailable as e:
        nvml.close()
        if mode == ON:
            raise GpuUnavailable(str(e) if spec.gpus else f"{source} needs a GPU: {e}") from None
        return Plan(AUTO, None, str(e))
    except Exception as e:
        nvml.close()
        if mode == ON:
            raise GpuUnavailable(f"{source}: NVML cannot read the GPUs: {type(e).__name__}: {e}") from None
        return Plan(AUTO, None, f"NVML cannot read the GPUs: {type(e).__name__}: {e}")
    return Plan(mode, monitor)


# --- sampling -----------------------------------------------------------------------------------


def _native_thread_tools():
    """start_new_thread and sleep as the OS provides them, also under gevent's patching."""
    try:
        from gevent import monkey

        return monkey.get_original("_thread", "start_new_thread"), monkey.get_original("time", "sleep")
    except ImportError:  # pragma: no cover - gevent comes with Locust
        import _thread

        return _thread.start_new_thread, time.sleep


class Monitor:
    """Samples `indices` every `interval_s` from `start(path)` to `stop()`; owns `nvml`."""

    def __init__(self, nvml: Nvml, indices: Sequence[int], interval_s: float = DEFAULT_INTERVAL_S):
        self.nvml = nvml
        self.indices = list(indices)
        self.interval_s = float(interval_s)
        self.gpus = [self._describe(i) for i in self.indices]  # read here, in the caller's thread
        self.samples: list[GpuSample] = []
        self.latest: dict[int, GpuSample] = {}
        self.error_count = 0
        self.first_error: str | None = None
        self.path: str | None = None
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self._file = None
        self._stopping = False
        self._done = False
        self._closed = False

    def _describe(self, index: int) -> dict:
        info = {"index": index, "uuid": self.nvml.uuid(index), "name": None, "pci_bus_id": None}
        for key, read in (("name", self.nvml.name), ("pci_bus_id", self.nvml.pci_bus_id)):
            try:
                info[key] = read(index)
            except Exception:  # a GPU may not report it: the monitor still samples it
                pass
        return info

    @property
    def running(self) -> bool:
        return self.started_at is not None and not self._done

    def start(self, path: str | None) -> None:
        """Begin sampling (the first sample at once); `path`: the JSON-lines file, None for none."""
        if self.started_at is not None:
            return
        if path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")
            self.path = path
        self.started_at = time.time()
        start_thread, self._sleep = _native_thread_tools()
        start_thread(self._loop, ())

    def _loop(self) -> None:
        try:
            due = time.monotonic()
            while not self._stopping:
                self._sample_all()
                due += self.interval_s
                now = time.monotonic()
                if due < now:  # a slow round: skip the missed ticks, keep the period
                    due = now + self.interval_s - (now - due) % self.interval_s
                while not self._stopping and time.monotonic() < due:
                    self._sleep(min(0.05, max(0.0, due - time.monotonic())))
            self._sample_all()  # the end of the run has its reading too
        except BaseException as e:  # never let the thread die silently
            self._error(f"the sampling thread stopped: {type(e).__name__}: {e}")
        finally:
            self._done = True

    def _sample_all(self) -> None:
        for index in self.indices:
            try:
                s = self.nvml.sample(index)
            except Exception as e:  # a GPU off the bus: a line says so, sampling goes on
                self._error(f"GPU {index}: {type(e).__name__}: {e}", index)
                continue
            self.samples.append(s)
            self.latest[index] = s
            self._write(s.to_dict())

    def _error(self, text: str, index: int | None = None) -> None:
        self.error_count += 1
        if self.first_error is None:
            self.first_error = text
        self._write({"t": time.time(), "index": index, "error": text})

    def _write(self, data: dict) -> None:
        f = self._file
        if f is None or self._closed:
            return
        try:
            f.write(json.dumps(data, separators=(",", ":")) + "\n")
            f.flush()  # per line: a crashed run keeps what was sampled
        except (OSError, ValueError):
            pass

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop sampling and wait for the thread up to `timeout_s` (cooperatively under gevent);
        NVML is shut down once the thread is done. Idempotent. False: the thread did not end."""
        if self.stopped_at is not None:
            return self._done
        self._stopping = True
        if self.started_at is not None:
            deadline = time.monotonic() + timeout_s
            while not self._done and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            self._done = True
        self.stopped_at = time.time()
        self._closed = True
        if self._file is not None:
            self._file.close()
        if self._done:
            self.nvml.close()
        else:
            log.warning("GPU monitor: the sampling thread did not end within %.1f s (NVML hangs?); left behind", timeout_s)
        if self.error_count:
            log.warning("GPU monitor: %d reading(s) failed; first: %s", self.error_count, self.first_error)
        if self.started_at is not None:
            log.info("GPU monitor: %d sample(s) of %d GPU(s)%s", len(self.samples), len(self.indices),
                     f" in {self.path}" if self.path else "")
        return self._done

    def latest_rows(self) -> list[dict]:
        """The latest sample of each GPU, for the web UI's GPUs tab."""
        rows = []
        for g in self.gpus:
            s = self.latest.get(g["index"])
            row = {"name": f"GPU {g['index']}", "index": g["index"], "uuid": g["uuid"], "model": g["name"]}
            if s is not None:
                row.update({"age_s": round(time.time() - s.t, 1), **{k: _round(getattr(s, k)) for k in METRICS},
                            "mem_total_mib": _round(s.mem_total_mib), "throttle": ", ".join(s.throttle) or "none"})
            rows.append(row)
        return rows


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 1)


# --- windows and the summary --------------------------------------------------------------------


def as_sample(s: GpuSample | Mapping) -> GpuSample:
    if isinstance(s, GpuSample):
        return s
    known = GpuSample.__dataclass_fields__
    return GpuSample(**{k: val for k, val in s.items() if k in known})


def figures(samples: Iterable[GpuSample]) -> dict:
    """One window's figures: `samples` (count), min / mean / max of each metric (None: no
    reading), `throttle` (reason → samples that had it)."""
    samples = list(samples)
    out: dict[str, Any] = {"samples": len(samples)}
    for metric in METRICS:
        values = [float(x) for s in samples if (x := getattr(s, metric)) is not None]
        out[metric] = {"min": min(values) if values else None, "max": max(values) if values else None,
                       "mean": sum(values) / len(values) if values else None}
    throttle: dict[str, int] = {}
    for s in samples:
        for reason in s.throttle:
            throttle[reason] = throttle.get(reason, 0) + 1
    out["throttle"] = dict(sorted(throttle.items()))
    return out


def _periods(samples: list[GpuSample]) -> list[tuple[float, GpuSample]]:
    """(start of the period it describes, sample) of one GPU's samples in time order: the first
    one describes its own instant."""
    ordered = sorted(samples, key=lambda s: s.t)
    return [(ordered[i - 1].t if i else s.t, s) for i, s in enumerate(ordered)]


def phase_windows(samples: list[GpuSample], fault_time: float | None) -> dict[str, list[GpuSample]]:
    """One GPU's samples by phase against T_f (see the module docstring)."""
    if fault_time is None:
        return {RUN: sorted(samples, key=lambda s: s.t)}
    out: dict[str, list[GpuSample]] = {"before": [], "spanning": [], "after": []}
    for start, s in _periods(samples):
        out["before" if s.t <= fault_time else "after" if start >= fault_time else "spanning"].append(s)
    out[RUN] = sorted(samples, key=lambda s: s.t)
    return out


def fault_span(fault: FaultEvent, end: float | None) -> tuple[float, float | None]:
    """[from, to] of a fault's window: injected_at to recovered_at, else rolled_back_at, else `end`."""
    to = fault.recovered_at if fault.recovered_at is not None else fault.rolled_back_at
    return fault.injected_at, end if to is None else to


def summarize(samples: Iterable[GpuSample | Mapping], faults: Iterable[FaultEvent],
              gpus: Sequence[Mapping] | None = None) -> list[dict]:
    """`summary["gpus"]`: one entry per GPU (index, uuid, name, pci_bus_id), with `phases`
    (`PHASE_WINDOWS` as they apply) and `faults` (one per injected fault: name, from, to and the
    figures of the samples taken in between), each window's figures from `figures`. `gpus`: the
    monitored GPUs (a GPU without a sample is listed too); default: those in the samples."""
    samples = [as_sample(s) for s in samples]
    faults = list(faults)
    fault_time = first_fault_time(faults)
    end = max((s.t for s in samples), default=None)
    by_gpu: dict[int, list[GpuSample]] = {}
    for s in samples:
        by_gpu.setdefault(s.index, []).append(s)
    described = {g["index"]: dict(g) for g in gpus or []}
    for index, mine in by_gpu.items():
        described.setdefault(index, {"index": index, "uuid": mine[0].uuid, "name": None, "pci_bus_id": None})
    out = []
    for index in sorted(described):
        mine = by_gpu.get(index, [])
        entry = {k: described[index].get(k) for k in ("index", "uuid", "name", "pci_bus_id")}
        totals = [s.mem_total_mib for s in mine if s.mem_total_mib is not None]
        entry["mem_total_mib"] = totals[-1] if totals else None
        entry["phases"] = {name: figures(group) for name, group in phase_windows(mine, fault_time).items()}
        entry["faults"] = []
        for fault in injected_faults(faults):
            start, to = fault_span(fault, end)
            inside = [s for s in mine if start <= s.t and (to is None or s.t <= to)]
            entry["faults"].append({"name": fault.name, "kind": fault.kind, "from": start, "to": to, **figures(inside)})
        out.append(entry)
    return out


def window_of(entry: Mapping, window: str) -> dict | None:
    """The figures of `window` (a phase, or `fault:<name>`) of one GPU's summary entry; None
    when this run has no such window (no fault: no before/spanning/after; a fault not injected)."""
    if window.startswith(FAULT_PREFIX):
        name = window[len(FAULT_PREFIX):]
        return next((f for f in entry.get("faults") or [] if f["name"] == name), None)
    return (entry.get("phases") or {}).get(window)


def matches(entry: Mapping, gpu: Any) -> bool:
    """GPU `gpu` (index, UUID or PCI bus id as written) is this summary entry."""
    if isinstance(gpu, int) and not isinstance(gpu, bool):
        return entry.get("index") == gpu
    text = str(gpu).strip().lower()
    if text.isdigit():
        return entry.get("index") == int(text)
    from ftlocust.gpu import pci_key

    key = pci_key(text)
    return text == str(entry.get("uuid") or "").lower() or (
        key is not None and entry.get("pci_bus_id") is not None and key == pci_key(entry["pci_bus_id"]))


def validate_window(window: str, where: str) -> str:
    if window in PHASE_WINDOWS or (window.startswith(FAULT_PREFIX) and window[len(FAULT_PREFIX):].strip()):
        return window
    raise v.error(where, "before, spanning, after, run or fault:<fault name>", window,
                  v.did_you_mean(window, PHASE_WINDOWS))


# --- the report and the timeline ----------------------------------------------------------------


def series(samples: Iterable[GpuSample | Mapping], t0: float) -> dict[int, dict[str, list[tuple[float, float]]]]:
    """Per GPU, per drawn metric (`SERIES`): (seconds since t0, value) in time order."""
    out: dict[int, dict[str, list[tuple[float, float]]]] = {}
    for s in sorted(map(as_sample, samples), key=lambda s: s.t):
        lines = out.setdefault(s.index, {metric: [] for metric, _ in SERIES})
        for metric, _ in SERIES:
            value = getattr(s, metric)
            if value is not None:
                lines[metric].append((s.t - t0, float(value)))
    return out


GPU_COLOURS = ("#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#c62828", "#00838f", "#5d4037", "#ad1457")


def draw(load_axis, power_axis, samples: Sequence, t0: float) -> None:
    """Draw the GPU series on two matplotlib axes sharing the requests' time axis: util % and
    memory used (right axis) on `load_axis`, SM clock and power (right axis) on `power_axis`."""
    lines = series(samples, t0)
    mem_axis, watt_axis = load_axis.twinx(), power_axis.twinx()
    for n, (index, by_metric) in enumerate(sorted(lines.items())):
        colour = GPU_COLOURS[n % len(GPU_COLOURS)]
        for axis, metric, style in ((load_axis, "util_pct", "-"), (mem_axis, "mem_used_mib", ":"),
                                    (power_axis, "sm_clock_mhz", "-"), (watt_axis, "power_w", ":")):
            points = by_metric[metric]
            if points:
                axis.plot([x for x, _ in points], [y for _, y in points], color=colour, linestyle=style,
                          linewidth=1.0, label=f"GPU {index} {dict(SERIES)[metric]}")
    load_axis.set_ylim(0, 105)
    load_axis.set_ylabel("util % (—)")
    mem_axis.set_ylabel("mem used MiB (···)")
    power_axis.set_ylabel("SM clock MHz (—)")
    watt_axis.set_ylabel("power W (···)")
    if lines:
        load_axis.legend(loc="upper left", fontsize=7)


def report_html(summary: Mapping) -> str:
    """The report's GPUs section: per GPU, its figures per window."""
    import html

    esc = html.escape
    if "gpus" not in summary and "gpu_monitor" not in summary:  # a summary from before the monitor
        return ""
    status = summary.get("gpu_monitor") or {}
    gpus = summary.get("gpus") or []
    if not gpus:
        why = status.get("reason") or "no sample"
        return f"<h2>GPUs</h2><p>no GPU monitored: {esc(str(why))}</p>"
    parts = [f"<h2>GPUs</h2><p>{status.get('samples', 0)} sample(s) every {status.get('interval_s')} s "
             f"({esc(str(status.get('path') or JSONL_NAME))}); series on the timeline: "
             f"{', '.join(label for _, label in SERIES)}</p>"]
    for g in gpus:
        windows = [(name, w) for name, w in (g.get("phases") or {}).items()]
        windows += [(FAULT_PREFIX + f["name"], f) for f in g.get("faults") or []]
        head = "".join(f"<th>{esc(name)}</th>" for name, _ in windows)
        counts = "".join(f"<td>{w['samples']}</td>" for _, w in windows)
        rows = [f"<tr><th>samples</th>{counts}</tr>"]
        for metric in METRICS:
            for stat in STATS:
                cells = "".join(f"<td>{_cell((w.get(metric) or {}).get(stat))}</td>" for _, w in windows)
                rows.append(f"<tr><th>{metric} {stat}</th>{cells}</tr>")
        throttled = "".join(f"<td>{esc(_reasons(w.get('throttle')))}</td>" for _, w in windows)
        rows.append(f"<tr><th>throttle</th>{throttled}</tr>")
        title = f"GPU {g['index']} {g.get('uuid') or ''} {g.get('name') or ''}".strip()
        parts.append(f"<h3>{esc(title)}</h3><table><tr><th></th>{head}</tr>{''.join(rows)}</table>")
    return "".join(parts)


def _reasons(throttle: Mapping | None) -> str:
    return ", ".join(f"{reason} ({n})" for reason, n in (throttle or {}).items()) or "none"


def _cell(x: float | None) -> str:
    return "N/A" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"

