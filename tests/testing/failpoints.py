"""Failpoints for crash tests, hooked into the exporter's named checkpoints.

- ``INSIGHTS_LINK_KILL_AT=<name>`` SIGKILLs the process at that checkpoint;
- ``INSIGHTS_LINK_PAUSE_AT=<name>`` creates the file ``INSIGHTS_LINK_PAUSE_FILE`` and waits (at
  most 120 s) until the test deletes it, e.g. after stopping the storage emulator or freezing
  the process;
- ``INSIGHTS_LINK_PAUSE_STORAGE=<method>:<key part>:<n>`` pauses the same way right before the
  n-th call of that local-storage method on a key containing the part: the moment a process
  that just passed its lock check gets descheduled.

Loaded into every process the tests start by ``sitecustomize`` (on ``PYTHONPATH``), never by
the exporter itself.
"""

from __future__ import annotations

import os
import signal
import time

from insights_link.checkpoints import on_checkpoint


def failpoint(name: str, **_facts: object) -> None:
    if os.environ.get("INSIGHTS_LINK_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    marker = os.environ.get("INSIGHTS_LINK_PAUSE_FILE")
    if marker and os.environ.get("INSIGHTS_LINK_PAUSE_AT") == name:
        _pause(marker, name)


def _pause(marker: str, what: str) -> None:
    with open(marker, "w") as f:
        f.write(what)
    deadline = time.monotonic() + 120
    while os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.05)


def _hook_storage(spec: str, marker: str) -> None:
    from insights_link.storage.local import LocalStorage

    method, part, nth = spec.split(":")
    original = getattr(LocalStorage, method)
    seen = [0]

    def paused(self, *args, **kwargs):
        if any(part in str(a) for a in args[:2]):
            seen[0] += 1
            if seen[0] == int(nth):
                _pause(marker, f"{method} {args[0]}")
        return original(self, *args, **kwargs)

    setattr(LocalStorage, method, paused)


def install() -> None:
    on_checkpoint(failpoint)
    spec = os.environ.get("INSIGHTS_LINK_PAUSE_STORAGE")
    if spec and os.environ.get("INSIGHTS_LINK_PAUSE_FILE"):
        _hook_storage(spec, os.environ["INSIGHTS_LINK_PAUSE_FILE"])
