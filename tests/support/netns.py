"""The one skip reason for tests that make network namespaces: what NetworkLab.preflight says."""
import pytest

from ftlocust.errors import ConfigError
from ftlocust.netns import NetworkLab


def why_no_netns() -> str | None:
    try:
        NetworkLab.preflight()
    except ConfigError as e:
        return str(e)
    return None


_WHY = why_no_netns()
needs_netns = pytest.mark.skipif(_WHY is not None, reason=f"{_WHY} (CI runs as root with iproute2)")
