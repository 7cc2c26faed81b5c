"""The end of a run on paper: the seed's results table (plus extended columns), `summary.json`,
`results.txt`, and check verdicts for the console. Plain Python, no dependency."""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping, Sequence

from ftlocust.checks import Verdict
from ftlocust.phases import CLIENT_RECOVERY_KEYS, INJECTED, NOT_FIRED, STAT_GROUPS, empty_stats

SEED_COLUMNS = (
    "Failure",
    "Startup",
    "Success Before",
    "Failed Before",
    "Success After",
    "Failed After",
    "Latency Before",
    "Latency After",
    "Recovery",
)
EXTENDED_COLUMNS = (
    "Spanning OK",
    "Spanning Failed",
    "TTFT p50 Before",
    "TTFT p50 After",
    "Cut Streams",
    "Cancelled",
    "First OK",
    "Disruption",
    "Sustained",
    "Latency Back",
    "Steady",
)
# The client-view figures behind the last five extended columns, in that order.
CLIENT_COLUMNS = dict(zip(EXTENDED_COLUMNS[-len(CLIENT_RECOVERY_KEYS):], CLIENT_RECOVERY_KEYS))
RECOVERY_KEYS = (*CLIENT_RECOVERY_KEYS, "server_recovery_s")
MISSING = "N/A"
# What a fault's row says in place of numbers when the fault did not happen.
STATUS_TEXT = {"failed": "not injected", NOT_FIRED: "not fired"}


# --- table --------------------------------------------------------------------------------------


def format_cell(value: Any) -> str:
    """None → N/A, floats with 2 decimals (as the seed's tabulate floatfmt=".2f")."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain text table: header, dashes, rows; first column left-aligned, the rest right."""
    cells = [[format_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, table has {len(headers)} columns")
        widths = [max(w, len(c)) for w, c in zip(widths, row)]

    def line(values: Sequence[str]) -> str:
        parts = [v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return "  ".join(parts).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out) + "\n"


def table_row(row: Mapping, extended: bool = True) -> list[Any]:
    """One results-table row from a row dict (`fault_rows`, `row_from`), seed semantics:
    Before/After split by completion time (spanning requests count as After), latency = mean of
    successful requests, After columns N/A without a fault, Recovery = the server view
    (`server_recovery_s`: T_f → the faulted component or its replacement serves), N/A when not
    measured. Extended: spanning ok/failed, TTFT p50 of the strict before/after phases, cut
    streams and cancelled requests of the row's requests, then the client-view recovery
    figures (`phases.recovery`): First OK, Disruption, Sustained, Latency Back, Steady.
    Failure: `failure`, else "none". A fault happened when `fault_time` is set. A row whose
    `status` is failed / not_fired (the fault did not happen) says `not injected` / `not fired`
    in every cell after Startup."""
    phases = row.get("phases") or {}
    rec = row.get("recovery") or {}
    had_fault = row.get("fault_time") is not None
    width = len(SEED_COLUMNS) + (len(EXTENDED_COLUMNS) if extended else 0)
    head = [row.get("failure") or "none", row.get("startup_s")]
    status = row.get("status") or INJECTED
    if status != INJECTED:
        return head + [STATUS_TEXT.get(status, status)] * (width - 2)

    def stat(group: str, key: str, needs_fault: bool = True) -> Any:
        if needs_fault and not had_fault:
            return None
        return (phases.get(group) or {}).get(key)

    cells = head + [
        stat("seed_before", "success", needs_fault=False),
        stat("seed_before", "failed", needs_fault=False),
        stat("seed_after", "success"),
        stat("seed_after", "failed"),
        stat("seed_before", "latency_mean_s", needs_fault=False),
        stat("seed_after", "latency_mean_s"),
        rec.get("server_recovery_s") if had_fault else None,
    ]
    if extended:
        cells += [
            stat("spanning", "success"),
            stat("spanning", "failed"),
            stat("before", "ttft_p50_s", needs_fault=False),
            stat("after", "ttft_p50_s"),
            stat("all", "cut_streams", needs_fault=False),
            stat("all", "cancelled", needs_fault=False),
        ]
        cells += [rec.get(key) if had_fault else None for key in CLIENT_COLUMNS.values()]
    return cells


def row_from(
    failure: str,
    startup_s: float | None,
    phases: Mapping,
    recovery: Mapping,
    records: Any = None,
    fault_time: float | None = None,
    status: str = INJECTED,
) -> dict:
    """A table row without a full summary. `fault_time` defaults to `recovery["fault_time"]`
    (set by `phases.recovery`); `records` is accepted and unused (the table needs only stats)."""
    if fault_time is None:
        fault_time = recovery.get("fault_time")
    return {"failure": failure, "status": status, "fault_time": fault_time, "startup_s": startup_s,
            "phases": phases, "recovery": recovery}


def fault_rows(summary: Mapping) -> list[dict]:
    """The table's rows of one run: one per planned fault (`summary["per_fault"]`, scenario
    order: its own phases and recovery, or its status when it did not happen), or — no fault
    in the scenario, or a row dict given — one row for the whole run."""
    entries = summary.get("per_fault")
    if not entries:
        if "per_fault" not in summary:  # already a row (row_from)
            return [summary]
        return [row_from(summary.get("failure") or "none", summary.get("startup_s"), summary.get("phases") or {},
                         summary.get("recovery") or {}, fault_time=summary.get("fault_time"))]
    rows = []
    for entry in entries:
        fault = entry.get("fault") or {}
        rows.append(
            {
                "failure": entry.get("name") or fault.get("name"),
                "status": entry.get("status") or INJECTED,
                "fault_time": fault.get("injected_at"),
                "startup_s": summary.get("startup_s"),
                "phases": entry.get("phases") or {},
                "recovery": entry.get("recovery") or {},
            }
        )
    return rows


WINDOW_COLUMNS = ("Fault", "In Effect", "During OK", "During Failed", "During Stalled", "During Cut",
                  "After OK", "After Failed", "After Stalled")


def window_table(runs: Iterable[Mapping]) -> str:
    """For each fault whose effect ended (a lifted partition, a SIGCONT, a restart): requests
    while it was in effect and after its end (`phases.window_stats`); "" when there is none."""
    rows = []
    for run in runs:
        for entry in run.get("per_fault") or []:
            w = entry.get("window")
            if not w:
                continue
            d, a = w["during"], w["after_end"]
            rows.append([entry.get("name"), float(w["in_effect_s"]), d["success"], d["failed"], d["stalled"],
                         d["cut_streams"], a["success"], a["failed"], a["stalled"]])
    return format_table(WINDOW_COLUMNS, rows) if rows else ""


def results_table(runs: Iterable[Mapping], extended: bool = True) -> str:
    """The seed's results table: for each run (`build_summary` dict) one row per planned fault
    (`fault_rows`); a `row_from` dict is one row. Faults with an end get the `window_table`
    below it."""
    runs = list(runs)
    headers = SEED_COLUMNS + (EXTENDED_COLUMNS if extended else ())
    table = format_table(headers, [table_row(row, extended) for run in runs for row in fault_rows(run)])
    windows = window_table(runs)
    return table + ("\n" + windows if windows else "")


# --- summary and artifacts ----------------------------------------------------------------------


def _as_dict(item: Any) -> dict:
    return item.to_dict() if hasattr(item, "to_dict") else dict(item)


def _full_recovery(rec: Mapping | None) -> dict:
    out = dict(rec or {})
    for key in RECOVERY_KEYS:
        out.setdefault(key, None)
    return out


def build_summary(
    scenario_name: str,
    analysis: Mapping,
    startup_s: float | None,
    verdicts: Iterable[Verdict | Mapping],
    extra: Mapping | None = None,
) -> dict:
    """The machine-readable record of one run (`summary.json`), from `phases.analyse(...)`.

    Keys:
    - scenario;
    - fault_time: the first injected fault's injected_at, None when none was injected;
    - faults: every planned fault in the scenario's order (`FaultEvent.to_dict`: name, kind,
      target, injected_at, recovered_at, rolled_back_at, status, error, detail);
    - phases: before / spanning / after / all / seed_before / seed_after against fault_time,
      each `phases.stats` (missing ones empty);
    - recovery: `phases.recovery` against fault_time (time_to_first_success_s,
      disruption_window_s, time_to_sustained_success_s, time_to_latency_back_s,
      time_to_steady_state_s, server_recovery_s always present, None when unknown; plus the
      baselines and parameters used);
    - per_fault: one entry per planned fault, scenario order (`phases.analyse`): name, status,
      error, fault, server_recovery_s, and phases / recovery / window of that fault (None when
      it did not happen; window also None when its effect did not end);
    - startup_s; checks (name, passed, detail: built-in verdicts first); passed (every verdict
      passed; True with none); extra (`extra`, as given).
    """
    entries = []
    for entry in analysis.get("per_fault") or []:
        entry = dict(entry)
        if entry.get("recovery") is not None:
            entry["recovery"] = _full_recovery(entry["recovery"])
        entries.append(entry)
    phases = analysis.get("phases") or {}
    checks = [_as_dict(v) for v in verdicts]
    return {
        "scenario": scenario_name,
        "fault_time": analysis.get("fault_time"),
        "faults": [dict(e["fault"]) for e in entries],
        "phases": {group: dict(phases.get(group) or empty_stats()) for group in STAT_GROUPS},
        "recovery": _full_recovery(analysis.get("recovery")),
        "per_fault": entries,
        "startup_s": startup_s,
        "checks": checks,
        "passed": all(bool(c["passed"]) for c in checks),
        "extra": dict(extra or {}),
    }


def format_verdicts(verdicts: Iterable[Verdict | Mapping]) -> str:
    """One line per check: `PASS name — detail` / `FAIL name — detail`."""
    lines = []
    for v in map(_as_dict, verdicts):
        lines.append(f"{'PASS' if v['passed'] else 'FAIL'} {v['name']} — {v['detail']}")
    return "\n".join(lines) if lines else "(no checks)"


def write_artifacts(
    dir: str, summary: Mapping, table_text: str, verdicts: Iterable[Verdict | Mapping]
) -> dict[str, str]:
    """Write `summary.json` and `results.txt` (the table, a blank line, the verdicts) into `dir`.
    Returns their paths."""
    os.makedirs(dir, exist_ok=True)
    summary_path = os.path.join(dir, "summary.json")
    results_path = os.path.join(dir, "results.txt")
    with open(summary_path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, default=str)
        f.write("\n")
    with open(results_path, "w", encoding="utf-8") as f:
        f.write(table_text.rstrip("\n") + "\n\n" + format_verdicts(verdicts) + "\n")
    return {"summary": summary_path, "results": results_path}


# --- report.html --------------------------------------------------------------------------------

_PHASE_ROWS = (
    ("count", "requests"), ("success", "ok"), ("failed", "failed"), ("cancelled", "cancelled"),
    ("latency_mean_s", "latency mean (s)"), ("latency_p50_s", "latency p50 (s)"), ("latency_p99_s", "latency p99 (s)"),
    ("ttft_p50_s", "TTFT p50 (s)"), ("ttft_p99_s", "TTFT p99 (s)"), ("itl_p50_s", "ITL p50 (s)"),
    ("tokens_per_s", "tokens / s"), ("cut_streams", "cut streams"),
)


def _when(ts: float | None) -> str:
    if ts is None:
        return MISSING
    import datetime

    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3] + "Z"


def write_html(dir: str, summary: Mapping, table_text: str, timeline_png: str | None = None) -> str:
    """A self-contained `report.html`: verdicts, the results table (a row per fault), phases,
    recovery (whole run and per injected fault), every planned fault with its status / error
    and times, and the timeline picture (embedded, so the file can be mailed or attached to a CI run)."""
    import base64
    import html

    esc = html.escape
    checks = summary.get("checks") or []
    verdict_rows = "".join(
        f'<tr class="{"pass" if c["passed"] else "fail"}"><td>{"PASS" if c["passed"] else "FAIL"}</td>'
        f"<td>{esc(str(c['name']))}</td><td>{esc(str(c.get('detail') or ''))}</td></tr>"
        for c in checks
    )
    phases = summary.get("phases") or {}
    groups = [g for g in ("before", "spanning", "after", "all") if g in phases]
    phase_rows = "".join(
        f"<tr><th>{label}</th>" + "".join(f"<td>{format_cell((phases[g] or {}).get(key))}</td>" for g in groups) + "</tr>"
        for key, label in _PHASE_ROWS
    )
    recovery = summary.get("recovery") or {}
    entries = [e for e in summary.get("per_fault") or [] if e.get("recovery") is not None]
    # One column for the whole run (against the first fault), one per injected fault.
    rec_cols = [("whole run", recovery)] + [(str(e.get("name")), e["recovery"]) for e in entries]
    rec_head = "".join(f"<th>{esc(name)}</th>" for name, _ in rec_cols)
    recovery_rows = "".join(
        f"<tr><th>{esc(k)}</th>" + "".join(f"<td>{format_cell(r.get(k))}</td>" for _, r in rec_cols) + "</tr>"
        for k in RECOVERY_KEYS
    )
    fault_rows_html = "".join(
        f'<tr class="{"pass" if f.get("status", INJECTED) == INJECTED else "fail"}">'
        f"<td>{esc(str(f.get('status', INJECTED)))}</td><td>{esc(str(f.get('name')))}</td>"
        f"<td>{esc(str(f.get('kind')))}</td><td>{esc(str(f.get('target')))}</td>"
        f"<td>{_when(f.get('injected_at'))}</td><td>{_when(f.get('recovered_at'))}</td>"
        f"<td>{_when(f.get('rolled_back_at'))}</td><td>{esc(str(f.get('error') or ''))}</td>"
        f"<td>{esc(json.dumps(f.get('detail') or {}, default=str))}</td></tr>"
        for f in summary.get("faults") or []
    )
    image = ""
    if timeline_png and os.path.isfile(timeline_png):
        with open(timeline_png, "rb") as f:
            image = f'<img alt="timeline" src="data:image/png;base64,{base64.b64encode(f.read()).decode()}">'
    from ftlocust.gpu_monitor import report_html

    gpu_section = report_html(summary)  # the GPU monitor's figures per window (its series: the timeline)
    exit_rows = "".join(
        f"<tr><td>{esc(str(e.get('role')))}</td><td>{esc(_exit_who(e))}</td>"
        f"<td>{esc(str(e['exit_code']) if e.get('exit_code') is not None else '')}</td>"
        f"<td>{esc(str(e.get('signal') or ''))}</td></tr>"
        for e in summary.get("exits") or []
    )
    passed = summary.get("passed")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ftlocust — {esc(str(summary.get('scenario')))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 0.9em; }}
tr.pass td:first-child {{ color: #2e7d32; font-weight: bold; }} tr.fail td:first-child {{ color: #c62828; font-weight: bold; }}
pre {{ background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }}
tr.pass td:first-child, tr.fail td:first-child {{ white-space: nowrap; }}
.verdict {{ font-size: 1.4em; font-weight: bold; color: {'#2e7d32' if passed else '#c62828'}; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{esc(str(summary.get('scenario')))}</h1>
<p class="verdict">{'PASSED' if passed else 'FAILED'}: {sum(1 for c in checks if c['passed'])} of {len(checks)} checks</p>
<table>{verdict_rows}</table>
<h2>Results</h2><pre>{esc(table_text)}</pre>
<h2>Timeline</h2>{image or '<p>no timeline</p>'}
{gpu_section}
<h2>Phases</h2><table><tr><th></th>{''.join(f'<th>{g}</th>' for g in groups)}</tr>{phase_rows}</table>
<h2>Recovery</h2><p>seconds from each fault; whole run: against the first injected fault</p>
<table><tr><th></th>{rec_head}</tr>{recovery_rows}<tr><th>startup_s</th><td>{format_cell(summary.get('startup_s'))}</td></tr></table>
<h2>Exits</h2><p>processes of the deployment that ended during the run (not those ftlocust stopped)</p>
<table><tr><th>role</th><th>pid (or pod/container)</th><th>exit code</th><th>signal</th></tr>{exit_rows or ('<tr><td colspan="4">not known for this target</td></tr>' if summary.get("exits") is None else '<tr><td colspan="4">none</td></tr>')}</table>
<h2>Faults</h2><table><tr><th>status</th><th>name</th><th>kind</th><th>target</th><th>injected at</th><th>recovered at</th><th>rolled back at</th><th>error</th><th>detail</th></tr>{fault_rows_html or '<tr><td colspan="9">no fault in the scenario</td></tr>'}</table>
</body></html>
"""
    path = os.path.join(dir, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


def _exit_who(e: dict) -> str:
    """The process of an `exits` entry: its pid, or a k8s container as pod/container."""
    return str(e["pid"]) if e.get("pid") is not None else f"{e.get('pod')}/{e.get('container')}"
