"""The error every user mistake derives from: the CLI prints it on one line and exits 1."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad file, flag, name, data or storage); no traceback."""
