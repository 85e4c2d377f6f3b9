"""File modes that honour the umask.

``tempfile.mkstemp`` and ``mkdtemp`` create 0600 files and 0700 folders whatever the umask; a
checkpoint or a frames folder renamed into place from one would keep that mode, and a team
sharing a run or an extraction (umask 002, group-readable) could not read it.
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """This process's umask, read without changing it (os.umask can only be read by setting it,
    which races other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc (not Linux): the set-and-restore fallback
    os.umask(mask)
    return mask


def apply_umask(path: str | Path) -> None:
    """Give ``path`` the mode a plain open()/mkdir() would have given it (0666 / 0777 less the umask)."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~current_umask())
