"""Where qvl keeps its files (one cache root, with frames/, models/ and bytecode/ beneath it), and
how it writes one that another run may read."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
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


def keep_bytecode(probe: str = "torch") -> None:
    """Keep compiled bytecode in qvl's cache where Python may not write it beside the sources.

    With PYTHONDONTWRITEBYTECODE set (many container images set it) and no bytecode installed, every
    fresh process compiles torch's and transformers' modules again: seconds on each command. There,
    and only where the module `probe` has no bytecode beside it, the bytecode goes to
    ``<cache>/bytecode`` (`sys.pycache_prefix`; child processes read it through PYTHONPYCACHEPREFIX).
    A prefix the user set is left as it is, and so is everything where the cache cannot be written
    (with a prefix, Python looks for no bytecode beside the sources, the standard library's
    included, so an unwritable one would compile more, not less)."""
    if not sys.dont_write_bytecode or sys.pycache_prefix is not None:
        return
    spec = importlib.util.find_spec(probe)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return
    if os.path.exists(importlib.util.cache_from_source(spec.origin)):
        return
    folder = str(cache_root() / "bytecode")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return
    if not os.access(folder, os.W_OK):
        return
    sys.pycache_prefix = os.environ["PYTHONPYCACHEPREFIX"] = folder
    sys.dont_write_bytecode = False


def write_json_atomically(path: Path, data, *, indent: int | None = 2) -> None:
    """`data` as JSON in `path`, through a temporary file beside it and a rename: `path` holds the
    old content or the new, never a part of it."""

    def write(tmp: Path) -> None:
        with open(tmp, "x", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=indent)
            fh.write("\n")

    write_atomically(path, write)


def write_atomically(path: Path, write) -> None:
    """`write(tmp)` into a new file beside `path` (its name ending as `path`'s does, for writers that
    choose a format by it), then renamed to `path`: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def check_folder_writable(folder: Path) -> None:
    """Raise `OSError` where `folder` (parents too) could not be made or written into, leaving
    nothing behind: a run that fails later must not leave an empty folder. An existing folder is
    tried with a temporary file; a missing one with a temporary folder made and removed in the
    nearest path above it that exists. Permission bits alone would not do: root passes them, and
    some file systems (/proc, /sys) refuse new entries whatever they say."""
    import errno
    import tempfile

    if folder.is_dir():
        tempfile.TemporaryFile(dir=folder).close()
        return
    above = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists() or p.is_symlink())
    if not above.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(above))
    os.rmdir(tempfile.mkdtemp(prefix=".qvl-write-test-", dir=above))


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
