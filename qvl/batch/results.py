"""A batch job's results file: one JSON line per row, appended whole, read back to resume.

    results = Results.open("results.jsonl")   # locks it; a torn last line is cut off
    results.errors                             # {id: its error, None if answered} of the rows there
    results.append({"id": "a", "input": ..., "error": None})
    results.close()

Each line is written with one `os.write` on a descriptor opened with O_APPEND: the kernel appends
the whole buffer at once, so a job killed at any moment (SIGKILL included) leaves whole lines,
plus at most one torn last line when the kill lands inside the write, which `open` cuts off
before anything else is appended. A write that fails or comes back short (a full disk) is undone
and raised as a `QvlError`: the job stops, and the rows not written run next time. `drop`
rewrites the file without some rows (a new file renamed over the old one, so it too is all or
nothing). One job at a time holds the file (an advisory lock), so two runs of one command cannot
both answer a row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from qvl.errors import OptionError, QvlError

try:
    import fcntl
except ImportError:  # not on Windows: the lock is then left out
    fcntl = None

_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


class Results:
    """The results file at `path`, open for appending; `errors`: each id's error in it (its last
    line's), None for an answered row; `asked`: each id's (model, prompt) as its record says."""

    def __init__(
        self,
        path: Path,
        fd: int,
        errors: dict[Any, str | None],
        created: bool = False,
        asked: dict[Any, tuple[Any, Any]] | None = None,
    ):
        self.path, self._fd, self.errors = path, fd, errors
        self.asked = asked if asked is not None else {}
        self._created = created  # this run made the file

    @classmethod
    def open(cls, path: str | os.PathLike) -> Results:
        """Open (or create) the file, lock it, cut a torn last line and read which rows it holds.

        Raises `OptionError` if the file cannot be written, another job holds it, or a line is not
        a batch record (a whole line that is not a JSON object with an "id": another file).
        """
        if str(path) in ("", "-"):
            given = str(path) or "''"
            raise OptionError(
                f"--out {given}: give the results file's path (results.jsonl); its records are appended "
                "as rows are answered and read again to resume (to watch them: tail -f FILE)"
            )
        if str(path).endswith(("/", os.sep)):
            raise OptionError(f"--out {path}: names a folder; give the results file's path (results.jsonl)")
        path = Path(path).expanduser()
        if path.exists() and not path.is_file():  # /dev/stdout, a FIFO, a device: never re-read to resume
            raise OptionError(
                f"--out {path}: not a regular file; results are appended to a file and read again to "
                "resume, so give a file's path (to see results as they come: tail -f FILE)"
            )
        created = not path.exists()
        try:
            if path.parent != Path("."):
                path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, _FLAGS, 0o644)
        except OSError as exc:
            raise OptionError(f"--out {path}: cannot write there ({exc.strerror or exc})") from None
        try:
            _lock(fd, path)
            errors, asked = {}, {}
            for record, _ in _lines(fd, path):
                errors[record["id"]] = record["error"]
                asked[record["id"]] = (record.get("model"), record.get("prompt"))
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, errors, created, asked)

    def append(self, record: dict) -> None:
        """Add one record as one line, written whole or not at all."""
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            size = os.fstat(self._fd).st_size
            written = os.write(self._fd, data)
            if written != len(data):  # regular files write short only when out of space or quota
                os.ftruncate(self._fd, size)
                raise OSError(f"wrote {written} of {len(data)} bytes")
        except OSError as exc:
            raise QvlError(f"--out {self.path}: cannot write a record ({exc.strerror or exc})") from None
        self.errors[record["id"]] = record["error"]
        self.asked[record["id"]] = (record.get("model"), record.get("prompt"))

    def drop(self, ids: Iterable[Any]) -> None:
        """Rewrite the file without the lines of `ids` (to run those rows again): the file a link
        names, with its permissions. Raises `OptionError` where its folder cannot be written."""
        ids = set(ids) & set(self.errors)
        if not ids:
            return
        target = Path(os.path.realpath(self.path))
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as fh:
                fh.writelines(line for record, line in _lines(self._fd, self.path) if record["id"] not in ids)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(temporary, os.fstat(self._fd).st_mode & 0o7777)
            os.replace(temporary, target)
        except OSError as exc:
            raise OptionError(
                f"--out {self.path}: cannot rewrite it without the failed rows ({exc.strerror or exc}); "
                "--retry-failed writes a new file beside it and renames it over the old one"
            ) from None
        finally:
            temporary.unlink(missing_ok=True)
        old, self._fd = self._fd, os.open(self.path, _FLAGS, 0o644)
        os.close(old)
        _lock(self._fd, self.path)
        for record_id in ids:
            del self.errors[record_id]
            self.asked.pop(record_id, None)

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Results:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # A job that failed before any row (the model did not load, Ray not found) leaves no file.
        unused = exc_type is not None and self._created and self._fd >= 0 and os.fstat(self._fd).st_size == 0
        self.close()
        if unused:
            self.path.unlink(missing_ok=True)


def _lock(fd: int, path: Path) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OptionError(
            f"--out {path}: another qvl batch is writing it; wait for it or choose another file"
        ) from None
    except OSError:
        pass  # a file system without locks: go on unlocked


def _lines(fd: int, path: Path) -> Iterator[tuple[dict, bytes]]:
    """(record, line) of each line of the file, after cutting off a torn last line."""
    _cut_torn_tail(fd)
    with open(os.dup(fd), "rb") as fh:
        fh.seek(0)
        for number, line in enumerate(fh, 1):
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = None
            if not isinstance(record, dict) or "id" not in record or "error" not in record:
                raise OptionError(
                    f"--out {path}: line {number} is not a qvl batch record; give a new file or the one this job wrote"
                )
            yield record, line


def _cut_torn_tail(fd: int, chunk: int = 1 << 16) -> None:
    """Truncate the file just after its last newline: a write cut short leaves a partial line."""
    size = end = os.fstat(fd).st_size
    while end > 0:
        start = max(0, end - chunk)
        at = os.pread(fd, end - start, start).rfind(b"\n")
        if at >= 0:
            end = start + at + 1
            break
        end = start
    if end < size:
        os.ftruncate(fd, end)
