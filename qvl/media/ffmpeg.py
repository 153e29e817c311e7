"""Find the ffmpeg tools qvl shells out to.

qvl decodes in-process with PyAV (the libav libraries bundled with the `av` wheel); the ffmpeg
command line is used only where a separate process is the better tool: making sample, test and
benchmark videos. The binary is the system `ffmpeg` when there is one, else the static build
shipped by `imageio-ffmpeg`. There is no `ffprobe` fallback (imageio-ffmpeg does not ship one),
which is why probing goes through PyAV.
"""

from __future__ import annotations

import functools
import os
import shutil

from qvl.errors import InputError


@functools.lru_cache(maxsize=None)
def ffmpeg_exe() -> str:
    """Path of an ffmpeg binary: `$QVL_FFMPEG`, the system one, else imageio-ffmpeg's."""
    explicit = os.environ.get("QVL_FFMPEG")
    if explicit:
        return explicit
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # imageio-ffmpeg raises RuntimeError when its binary is missing
        raise InputError("no ffmpeg binary found: install ffmpeg or the imageio-ffmpeg package") from exc


def run_ffmpeg(*args: str, timeout: float | None = None) -> None:
    """Run `ffmpeg -y ARGS...` quietly (errors only, no stdin); CalledProcessError if it fails."""
    import subprocess

    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args]
    subprocess.run(command, check=True, timeout=timeout)
