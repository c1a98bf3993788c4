"""Started with every Python process the tests launch (``tests/testing`` is on their
``PYTHONPATH``): installs the failpoints when a test asked for one."""

import os

if any(os.environ.get(f"INSIGHTS_LINK_{name}") for name in ("KILL_AT", "PAUSE_AT", "PAUSE_STORAGE")):
    import failpoints

    failpoints.install()
