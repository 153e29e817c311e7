"""What a frame cache's folder holds besides its entries: whether a work folder's writer is gone
(a process of this host that no longer runs), and how many bytes a tree of files takes."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

# This host, as work folders name it (`<key>.<host>-<pid>.<random>`): only its own processes can
# be looked up.
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def is_abandoned(name: str) -> bool:
    """True for a tmp/ name whose writer is certainly gone: a half-removed entry, or a work folder
    of a process of this host that no longer runs."""
    if name.startswith("trash-"):
        return True
    parts = name.split(".")
    if len(parts) != 3 or "-" not in parts[1]:
        return False  # not a work folder of this format: only age decides
    host, _, pid = parts[1].partition("-")
    if host != HOST or not pid.isdigit():
        return False
    return not _process_alive(int(pid))


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def tree_size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        try:
            return path.lstat().st_size
        except OSError:
            return 0
    return walk_size(path)


def walk_size(path: Path) -> int:
    """Bytes of the files below the folder `path` (links not followed; vanished files skipped)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total
