"""Import this before anything that imports locust in a pytest process.

`import locust` runs gevent's `monkey.patch_all()`. In a pytest-xdist worker that breaks xdist
itself (its worker loop waits on a threading.Event set by an OS thread started before the
patch: gevent raises LoopExit). In-process tests do not need the patch — geventhttpclient uses
gevent sockets directly — so locust is imported here with LOCUST_SKIP_MONKEY_PATCH set, and the
variable is removed again so that Locust subprocesses started by tests are patched as usual.
"""

import os

_was_set = "LOCUST_SKIP_MONKEY_PATCH" in os.environ
os.environ["LOCUST_SKIP_MONKEY_PATCH"] = "1"
try:
    import locust  # noqa: F401
finally:
    if not _was_set:
        del os.environ["LOCUST_SKIP_MONKEY_PATCH"]
