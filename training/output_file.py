"""How the `tierwise` command writes an output file the user named (`--out`, `--json-out`).

A regular file (or a new one) is written beside it under a temporary name and renamed onto it once whole, with the
old file's mode (and owner, where allowed): a run that fails (a full disk, a bad row, SIGTERM) leaves what was
there as it was. A name that a rename would change the meaning of is written in place, as asked: a symlink (kept a
link: its target may be standard output, a device, or lie in a folder where only the file is writable), a file with
other hard links (they would keep the old content), anything that is no regular file (a pipe, a device).
"""

from __future__ import annotations

import os
import stat
from contextlib import suppress
from pathlib import Path


def written_in_place(path: Path) -> bool:
    """Whether `path` is written in place rather than replaced by a rename (module docstring). An OSError (a folder
    this process may not search) is the caller's to report, as a failure of the output."""
    if path.is_symlink():
        return True
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return not stat.S_ISREG(st.st_mode) or st.st_nlink > 1


def temporary_beside(path: Path, tag: str) -> Path:
    """The hidden name beside `path` a replacing write goes to (`.NAME.PID.TAG`): same folder, so the rename is
    atomic, and this process's own."""
    return path.with_name(f".{path.name}.{os.getpid()}.{tag}")


def replace_with(target: Path, written: Path) -> None:
    """Rename the whole `written` file onto `target`, which keeps its permission bits (and owner, where allowed)."""
    keep_mode_and_owner(target, written)
    os.replace(written, target)


def keep_mode_and_owner(old: Path, new: Path) -> None:
    """Give `new` (about to replace `old`) the old file's permission bits, and its owner where this process may."""
    try:
        st = old.stat()
    except FileNotFoundError:
        return
    os.chmod(new, stat.S_IMODE(st.st_mode))
    with suppress(OSError):
        os.chown(new, st.st_uid, st.st_gid)
