"""Errors a user can cause and fix: the CLI prints them as one line, without a traceback.

A ``VdError`` exits with code 2 (the input was wrong); a ``TrainingFailed`` with 1 (vd or the machine
failed: a bug, an out-of-memory, a CUDA error), its line saying where the full traceback was written.
A write that fails for lack of room or permission is the user's to fix, so it becomes a ``VdError``
naming the path and the size of what was being written (``write_failure``).
"""

from __future__ import annotations

import errno
import os
import re


class VdError(Exception):
    """A problem with the user's input (a path, a recipe, a checkpoint, an option).

    The message is the whole interface: say what is wrong, where, and what to do.
    """

    exit_code = 2


class TrainingFailed(VdError):
    """An unexpected exception ended a training command; the message says what was saved and where
    the traceback is."""

    exit_code = 1


# What a full disk, a quota, a read-only mount or a missing permission look like, and what to do.
NO_ROOM = {
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere (--out)",
    getattr(errno, "EDQUOT", 122): "the disk quota is exceeded; free some space or write elsewhere (--out)",
    errno.EACCES: "permission denied; write elsewhere (--out) or fix the folder's permissions",
    errno.EPERM: "permission denied; write elsewhere (--out) or fix the folder's permissions",
    errno.EROFS: "the file system is read-only; write elsewhere (--out)",
}


def error_number(e: BaseException) -> int | None:
    """The errno of an OSError, or of a safetensors error, which carries it only in its text
    ("... No space left on device (os error 28)")."""
    if isinstance(e, OSError) and e.errno is not None:
        return e.errno
    found = re.search(r"os error (\d+)", str(e))
    return int(found.group(1)) if found else None


def size_text(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def write_failure(e: BaseException, path: os.PathLike | str | None = None, nbytes: int | None = None) -> VdError | None:
    """The one-line error for a write that failed for lack of room or permission, or None for any
    other failure. ``path`` defaults to the exception's own file name."""
    number = error_number(e)
    if number not in NO_ROOM:
        return None
    path = path or getattr(e, "filename", None) or "a file"
    needs = f" ({size_text(nbytes)})" if nbytes else ""
    return VdError(f"cannot write {path}{needs}: {NO_ROOM[number]}")
