"""User plugins: modules imported before validation that register fault kinds and checks.

    locust -f locustfiles/load.py --ft-plugin my_faults --ft-plugin ./drills/extra.py ...
    # or in the scenario:   plugins: [my_faults, ./extra.py]

A plugin is a plain module: `ftlocust.faults.register` on a `Fault` subclass adds a fault kind,
`ftlocust.checks.register_check` adds a check (README "Plugins" has a complete example). A name
ending in `.py` (or holding a `/`) is a file, relative to the current directory or, for a
scenario's `plugins:`, to the scenario's folder; anything else is a module on `sys.path`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from types import ModuleType

from ftlocust.errors import ConfigError

log = logging.getLogger("ftlocust.plugins")

_loaded: dict[str, ModuleType] = {}


def split_names(values: list[str] | str | None) -> list[str]:
    """`--ft-plugin` values (repeatable; FTLOCUST_PLUGIN may hold several, comma-separated)."""
    if not values:
        return []
    if isinstance(values, str):
        values = [values]
    return [name.strip() for value in values for name in str(value).split(",") if name.strip()]


def load(names: list[str], where: str = "--ft-plugin", base_dir: str | None = None) -> list[ModuleType]:
    """Import each plugin once; ConfigError (one line) when one cannot be imported."""
    return [_load_one(name, where, base_dir) for name in names]


def _load_one(name: str, where: str, base_dir: str | None) -> ModuleType:
    is_file = name.endswith(".py") or os.sep in name
    key = os.path.abspath(_file_path(name, base_dir)) if is_file else name
    if key in _loaded:
        return _loaded[key]
    if is_file and not os.path.isfile(key):
        raise ConfigError(f"{where}: no such plugin file {name!r} (looked for {key})")
    module_name = name
    try:
        if is_file:
            module_name = "ftlocust_plugin_" + os.path.splitext(os.path.basename(key))[0]
            if module_name in sys.modules:  # another file of the same name: keep both
                module_name += f"_{len(_loaded)}"
            spec = importlib.util.spec_from_file_location(module_name, key)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(name)
    except (Exception, SystemExit) as e:  # the plugin's own error: one line, naming the plugin
        if is_file:
            sys.modules.pop(module_name, None)  # no half-imported module left behind
        why = " ".join(f"{type(e).__name__}: {e}".split())
        raise ConfigError(f"{where}: plugin {name!r} failed to import: {why}") from None
    log.info("plugin %s loaded (%s)", name, getattr(module, "__file__", "?"))
    _loaded[key] = module
    return module


def _file_path(name: str, base_dir: str | None) -> str:
    if os.path.isabs(name) or base_dir is None:  # --ft-plugin: the current directory
        return name
    return os.path.join(base_dir, name)
