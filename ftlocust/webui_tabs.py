"""Extra tabs in Locust's web UI (the GPUs tab; a Faults tab can be added the same way).

A `Tab` is a table: its columns and a `rows()` function; `register_tab(web_ui, tab)` puts it in
the UI through Locust's own extension points (examples/extend_web_ui.py in Locust):

- `web_ui.template_args["extended_tabs"]` / `["extended_tables"]`: the tab and its columns;
- `extended_stats` added to every `/stats/requests` answer (what the UI polls): the rows;
- a JSON route, `<base>/ftlocust/tabs/<key>`: {"key", "title", "rows"}, for scripts and tests.

`rows()` returning None means nothing is served now (e.g. no GPU monitor runs): the route
answers 404 with one line saying so, and the tab stays empty.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

log = logging.getLogger("ftlocust.webui")
ROUTE = "/ftlocust/tabs/<key>"


@dataclass(frozen=True)
class Tab:
    key: str
    title: str
    columns: Sequence[tuple[str, str]]  # (row key, column title); keys in snake_case
    rows: Callable[[], list[dict] | None]
    not_served: str = "nothing to show now"  # the 404's line when rows() is None


_tabs: dict[int, dict[str, Tab]] = {}  # id(web_ui) -> its tabs


def register_tab(web_ui, tab: Tab) -> None:
    """Add (or replace) `tab` in this web UI. Idempotent per key."""
    tabs = _tabs.get(id(web_ui))
    if tabs is None:
        tabs = _tabs[id(web_ui)] = {}
        _install(web_ui, tabs)
    tabs[tab.key] = tab
    args = web_ui.template_args
    args["extended_tabs"] = [t for t in args.get("extended_tabs") or [] if t["key"] != tab.key] + [
        {"title": tab.title, "key": tab.key}]
    args["extended_tables"] = [t for t in args.get("extended_tables") or [] if t["key"] != tab.key] + [
        {"key": tab.key, "structure": [{"key": k, "title": title} for k, title in tab.columns]}]


def _rows(tab: Tab) -> list[dict] | None:
    try:
        return tab.rows()
    except Exception as e:  # a tab must never break the stats the UI polls
        log.error("web UI tab %s: %s", tab.key, e)
        return None


def _install(web_ui, tabs: dict[str, Tab]) -> None:
    from flask import Blueprint, jsonify, make_response, request

    blueprint = Blueprint("ftlocust_tabs", __name__)

    @blueprint.route(ROUTE)
    @web_ui.auth_required_if_enabled
    def tab_rows(key: str):
        tab = tabs.get(key)
        if tab is None:
            return make_response(jsonify({"error": f"no tab {key!r} (tabs: {', '.join(sorted(tabs)) or 'none'})"}), 404)
        rows = _rows(tab)
        if rows is None:
            return make_response(jsonify({"key": key, "error": tab.not_served}), 404)
        return jsonify({"key": key, "title": tab.title, "rows": rows})

    @web_ui.app.after_request
    def add_rows(response):
        if not request.path.endswith("/stats/requests") or response.status_code != 200 or not response.is_json:
            return response
        data = response.get_json(silent=True)
        if not isinstance(data, dict):
            return response
        extended = [e for e in data.get("extended_stats") or [] if e.get("key") not in tabs]
        for tab in tabs.values():
            rows = _rows(tab)
            extended.append({"key": tab.key, "data": rows or []})
        data["extended_stats"] = extended
        response.set_data(json.dumps(data))
        return response

    base = getattr(getattr(web_ui.environment, "parsed_options", None), "web_base_path", None)
    web_ui.app.register_blueprint(blueprint, url_prefix=base or None)


GPU_COLUMNS = (("name", "GPU"), ("uuid", "UUID"), ("model", "Model"), ("util_pct", "Util %"),
               ("mem_used_mib", "Mem used (MiB)"), ("mem_total_mib", "Mem total (MiB)"), ("temp_c", "Temp (°C)"),
               ("sm_clock_mhz", "SM clock (MHz)"), ("power_w", "Power (W)"), ("throttle", "Throttle"),
               ("age_s", "Age (s)"))


def gpu_tab(current_monitor: Callable[[], object]) -> Tab:
    """The GPUs tab: the latest sample of each GPU of `current_monitor()` (the current run's
    `gpu_monitor.Monitor`, read at each poll), served while it samples."""

    def rows() -> list[dict] | None:
        monitor = current_monitor()
        return monitor.latest_rows() if monitor is not None and monitor.running else None

    return Tab("gpus", "GPUs", GPU_COLUMNS, rows, not_served="no GPU monitor is sampling now")
