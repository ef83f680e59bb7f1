"""Errors a user can cause, each with its own exit code and a hint naming the fix.

Per-file trouble is not raised: it is a `Problem` record (see model.py) collected in reports.
"""
from __future__ import annotations


class ExitCode:
    OK = 0
    PROBLEMS = 1        # finished, but some files were skipped or failed (see the report)
    USAGE = 2           # bad option or argument (click's own code)
    BAD_INPUT = 3       # a missing/unreadable folder, overlapping trees, malformed YAML
    NO_SPACE = 4        # the target cannot hold what the plan copies
    LOCKED = 5          # another run holds the target's lock
    BAD_LOG = 6         # an audit log is tampered with, unknown or points outside its roots
    NOT_CONFIRMED = 7   # no TTY and no --yes, or the user said no
    VERIFY_FAILED = 8   # verify found missing, changed or shadowed models
    INTERRUPTED = 130   # 128 + SIGINT


class MigrateError(Exception):
    """An error that stops a command. `str()` is the one-line message; `hint` the next step."""

    exit_code = ExitCode.BAD_INPUT

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class BadInput(MigrateError):
    exit_code = ExitCode.BAD_INPUT


class NoSpace(MigrateError):
    exit_code = ExitCode.NO_SPACE


class Locked(MigrateError):
    exit_code = ExitCode.LOCKED


class BadLog(MigrateError):
    exit_code = ExitCode.BAD_LOG


class NotConfirmed(MigrateError):
    exit_code = ExitCode.NOT_CONFIRMED


class Interrupted(MigrateError):
    """Ctrl-C while a run or rollback was changing things: the message says how to continue or undo."""
    exit_code = ExitCode.INTERRUPTED
