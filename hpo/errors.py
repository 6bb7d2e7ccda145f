"""The errors every user mistake derives from: the CLI prints them on one line and exits 1."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad file, flag, name, data or storage); no traceback."""


class DataError(UserError, ValueError):
    """A data problem the user can fix; the message is one line naming file, column and
    problem. A :class:`UserError`, so the CLI prints it without a traceback."""


class DiskFullError(UserError):
    """No space left (ENOSPC, or the disk quota, EDQUOT) where hpo writes: the tokenized cache,
    a trial's checkpoint, a retrain's output folder. One line naming what was written where."""


# Below this much free space, a write error that names no cause is taken for a full disk:
# torch.save on a full tmpfs raised `RuntimeError: [enforce fail at inline_container.cc:672] .
# unexpected pos 576 vs 534` (no errno), safetensors `SafetensorError: ... No space left on
# device (os error 28)` (not an OSError); measured here with torch 2.13, safetensors 0.7.
LOW_SPACE_BYTES = 4 * 2**20


def free_bytes(where: object) -> int | None:
    """Free bytes (for this user) on the file system of ``where`` or its nearest existing parent."""
    import os
    from pathlib import Path

    path = Path(str(where)).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def disk_full(e: BaseException, what: str, where: object) -> DiskFullError | None:
    """A :class:`DiskFullError` when ``e`` (raised writing ``what`` in ``where``) comes from a
    full disk: ENOSPC/EDQUOT, their text, or a write error with almost no space left; else None.

    Call it before cleaning up what the failed write left, which frees the space.
    """
    import errno

    if isinstance(e, DiskFullError):
        return e
    text = str(e)
    full = (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
        s in text for s in ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")
    )
    free = free_bytes(where)
    if not full and (isinstance(e, (OSError, RuntimeError)) or type(e).__name__ == "SafetensorError"):
        full = free is not None and free < LOW_SPACE_BYTES
    if not full:
        return None
    left = f"; {free / 2**20:.1f} MiB free" if free is not None else ""
    return DiskFullError(f"no space left on device writing {what} in {where}{left}")
