"""Errors a user can cause. Each carries a one-line message naming the field or flag."""


class ConfigError(Exception):
    """Bad input (flag, scenario field, unreachable host, missing target): shown as one line."""
