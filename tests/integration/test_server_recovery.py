"""The server view of recovery (`deployment.recovered(role)`) on the reference deployment:
a SIGKILLed worker counts as recovered only once the frontend stops listing it; a SIGSTOPped one
only once it answers again."""
import signal
import time

import pytest

from ftlocust.targets.reference import ReferenceDeployment

pytestmark = pytest.mark.integration


def _wait(predicate, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_recovered_follows_the_frontend_and_the_process(tmp_path):
    with ReferenceDeployment(str(tmp_path / "dep"), workers=2, lease_ttl_s=1.5, token_delay_s=0.005) as dep:
        assert dep.recovered("worker-1") and dep.recovered("worker-2")

        dep.signal("worker-1", signal.SIGSTOP)
        assert not _wait(lambda: dep.recovered("worker-1"), 0.5)  # listed, but it does not answer
        dep.signal("worker-1", signal.SIGCONT)
        assert _wait(lambda: dep.recovered("worker-1"), 5)

        killed_at = time.monotonic()
        dep.signal("worker-2", signal.SIGKILL)
        assert not dep.recovered("worker-2")  # still listed: its lease has not expired
        assert _wait(lambda: dep.recovered("worker-2"), 10)
        assert time.monotonic() - killed_at >= 1.0  # about the lease TTL, not at once
