"""The errors every user mistake derives from: the CLI prints them on one line and exits 1."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad file, flag, name, data or storage); no traceback."""


class DataError(UserError, ValueError):
    """A data problem the user can fix; the message is one line naming file, column and
    problem. A :class:`UserError`, so the CLI prints it without a traceback."""
