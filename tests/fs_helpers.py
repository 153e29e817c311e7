"""Folders qvl cannot write to, on any machine the tests run on."""

from __future__ import annotations

import os
from pathlib import Path


def unwritable_dir(tmp_path: Path) -> Path:
    """A cache folder qvl cannot create anything in.

    For a normal user: an existing folder with mode 0555. Root ignores permission bits, so there
    it is a path beneath a regular file, where every mkdir fails (ENOTDIR) just as surely.
    """
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return folder
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    return blocker / "cache"


def uncreatable_dir() -> Path:
    """A folder no one can make, root included, whatever the permission bits say: /proc takes no
    new entries. Skips the test where there is no /proc."""
    import pytest

    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc")
    return Path("/proc/qvl-no-such-folder")
