"""Where qvl keeps its files: one cache root, with frames/ and models/ beneath it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """qvl's cache folder: ``$QVL_CACHE_DIR``, else the platform's user cache (``~/.cache/qvl`` on Linux)."""
    env = os.environ.get("QVL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs
    except ImportError:  # not installed on every host (the GPU machines): the XDG default
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "qvl"
    return Path(platformdirs.user_cache_dir("qvl", appauthor=False))
