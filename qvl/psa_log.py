"""PSA logs: one JSON line per language-model layer per PSA prefill, appended to a folder's day file.

    log = PSALog("logs/")            # checks the folder; an unwritable one is an OptionError now
    log.write(request="3f2a...", label="clip.mp4", model="7b", config="fast", tokens=9000, layers=rows)

Lines go to `DIR/psa-YYYY-MM-DD.jsonl` (the UTC date of the write). Each request's lines are
written with one `os.write` on a file opened with O_APPEND: on a local file system the kernel
appends the whole buffer at once, so runs writing into the same folder at the same time never
interleave half-lines. The format is documented in docs/psa.md ("Logs").
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Iterable

from qvl.errors import OptionError

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


def request_id() -> str:
    """A new request's id: unique across processes and machines writing to one folder."""
    return uuid.uuid4().hex


def psa_log_for(folder: str | os.PathLike | None, psa_config) -> PSALog | None:
    """The `PSALog` --psa-log-dir asks for, or None; its folder is checked now, before any model
    loads (an `OptionError` without PSA, or where it could not be made or written)."""
    if folder is None:
        return None
    if psa_config is None:
        raise OptionError(
            "--psa-log-dir needs --psa (or --psa-preset, --psa-config): without PSA there is nothing to log"
        )
    return PSALog(folder)


class PSALog:
    """Appends PSA statistics to `folder`/psa-<UTC date>.jsonl; folder and file are created with
    the first line, so a run in which PSA never ran leaves nothing behind.

    Raises `OptionError` (one line naming the folder) if the folder could not be created or
    written, so a bad `--psa-log-dir` stops a run before any model loads.
    """

    def __init__(self, folder: str | os.PathLike):
        from qvl.paths import check_folder_writable

        self.folder = Path(folder).expanduser()
        try:
            check_folder_writable(self.folder)
        except OSError as exc:
            raise OptionError(f"--psa-log-dir {folder}: cannot write there ({exc.strerror or exc})") from None

    def path(self, when: float | None = None) -> Path:
        """The file a line written at `when` (default now) goes to."""
        return self.folder / time.strftime("psa-%Y-%m-%d.jsonl", time.gmtime(when))

    def write(
        self, *, request: str, label: str, model: str, config: str, tokens: int, layers: Iterable[dict]
    ) -> Path | None:
        """Append one line per row of `layers` (`PSAStats.per_layer()`); returns the file, or None
        when there was nothing to write (PSA did not run). An `OSError` (disk full) propagates."""
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        rows = list(layers)
        head = {"time": stamp, "request": request, "input": label, "model": model, "config": config}
        lines = "".join(
            json.dumps(
                {**head, "layer": row["layer"], "layers": len(rows), "tokens": tokens, **row}, ensure_ascii=False
            )
            + "\n"
            for row in rows
        )
        if not lines:
            return None
        data = lines.encode("utf-8")
        path = self.path(now)
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, _FLAGS, 0o644)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):  # regular files write short only when out of space or quota
            raise OSError(f"wrote {written} of {len(data)} bytes to {path}")
        return path
