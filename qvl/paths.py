"""Where qvl keeps its files (one cache root, with frames/ and models/ beneath it), and how it
writes one that another run may read."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
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


def write_json_atomically(path: Path, data, *, indent: int | None = 2) -> None:
    """`data` as JSON in `path`, through a temporary file beside it and a rename: `path` holds the
    old content or the new, never a part of it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=indent)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_file_bytes(path: Path, source: str, error: type[Exception]) -> bytes:
    """A local file's bytes, or `error` with one line that names `source` and says why not."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{source}: no such file") from None
    except IsADirectoryError:
        raise error(f"{source}: is a directory, not a file") from None
    except PermissionError:
        raise error(f"{source}: permission denied") from None
    except OSError as exc:
        raise error(f"{source}: cannot be read ({exc.strerror or exc})") from None
