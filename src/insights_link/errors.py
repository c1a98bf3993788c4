"""One exception hierarchy for the whole tool, each class carrying its exit code.

The CLI maps an exception to its exit code and prints its message as one line; nothing else
in the tool re-wraps errors into other errors.

    0 committed
    1 RunFailed: the run failed and committed nothing (also CommitStateUnknown, which says so)
    1 CommittedWithErrors: the run committed, but a step after the commit point failed
    2 UsageError: a bad command line or configuration, before anything was written
    3 TooManyRejected: more records rejected than --max-rejected-ratio allows
    4 DataSourceBusy: another run held the lock for longer than --lock-wait
    130 / 143 Interrupted: SIGINT / SIGTERM
"""

from __future__ import annotations

import signal


class InsightsLinkError(Exception):
    """Base of every error the tool explains in one line; ``exit_code`` is what schedulers see."""

    exit_code = 1
    status = "failed"


class UsageError(InsightsLinkError, ValueError):
    """A bad command line or configuration; the message names the bad value."""

    exit_code = 2
    status = "usage_error"


class RunFailed(InsightsLinkError, RuntimeError):
    """The run could not complete; nothing was committed."""


class CommitStateUnknown(RunFailed):
    """The storage failed at the commit point and could not tell whether the commit became
    visible; the next run settles it."""


class TooManyRejected(RunFailed):
    """More than ``--max-rejected-ratio`` of the records were rejected."""

    exit_code = 3


class DataSourceBusy(RunFailed):
    """Another run held the data source's lock for longer than ``--lock-wait``."""

    exit_code = 4
    status = "busy"


class CommittedWithErrors(InsightsLinkError, RuntimeError):
    """The run committed, but a later step failed (``--grant-read``, the run report); re-running
    completes it."""

    status = "committed_with_errors"


class GrantFailed(CommittedWithErrors):
    """The run committed, but ``--grant-read`` could not set the ACLs."""

    status = "grant_failed"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; the run stops, settles what it wrote, and exits 128 + signal."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
