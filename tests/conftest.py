# Locust monkey-patches on import, which breaks pytest-xdist workers: import it unpatched first,
# for every test module (see tests/support/unpatched_locust.py).
import tests.support.unpatched_locust  # noqa: F401
