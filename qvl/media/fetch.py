"""Download http(s) URLs: the one downloader behind image and video inputs.

Every failure is an `InputError` with one line naming the URL. An unreachable host fails at once
(urllib does not retry); `QVL_DOWNLOAD_TIMEOUT` (seconds, default 20) bounds each network wait.
Size limits are in MB of 10^6 bytes: the `Content-Length` is checked before reading and the byte
count while reading, so an oversized or lying server is cut off early.
"""

from __future__ import annotations

import contextlib
import io
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Callable

from qvl.errors import InputError

DOWNLOAD_TIMEOUT = float(os.environ.get("QVL_DOWNLOAD_TIMEOUT", "20"))
CHUNK_BYTES = 1 << 20


def is_url(source: str | os.PathLike) -> bool:
    """True for an http:// or https:// address (the only URLs qvl downloads)."""
    return str(source).startswith(("http://", "https://"))


def fetch_bytes(url: str, *, max_mb: float, option: str | None = None) -> bytes:
    """The body of `url` in memory, refusing anything over `max_mb` MB.

    option: the command-line option that raises the limit, named in the error when there is one.
    """
    buf = io.BytesIO()
    _copy(url, lambda: contextlib.nullcontext(buf), max_mb=max_mb, option=option)
    return buf.getvalue()


def download(url: str, dest_dir: str | os.PathLike, *, max_mb: float, option: str | None = None) -> Path:
    """Fetch `url` into a file in dest_dir named after the URL's last path segment; its path.

    Refuses anything over `max_mb` MB; option as for fetch_bytes.
    """
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "download"
    dest = Path(dest_dir) / name
    _copy(url, lambda: open(dest, "wb"), max_mb=max_mb, option=option)
    return dest


def _copy(
    url: str,
    open_sink: Callable[[], contextlib.AbstractContextManager[IO[bytes]]],
    *,
    max_mb: float,
    option: str | None,
) -> None:
    """Stream `url` into the sink opened by open_sink (once the headers are in); errors as one line."""
    limit = int(max_mb * 1_000_000)
    raise_it = f" (raise it with {option})" if option else ""
    request = urllib.request.Request(url, headers={"User-Agent": "qvl"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            if expected is not None and expected > limit:
                raise InputError(
                    f"{url}: {expected / 1e6:.1f} MB is over the download limit of {max_mb:g} MB{raise_it}"
                )
            got = 0
            with open_sink() as sink:
                while chunk := response.read(CHUNK_BYTES):
                    got += len(chunk)
                    if got > limit:
                        raise InputError(f"{url}: more than the download limit of {max_mb:g} MB{raise_it}")
                    sink.write(chunk)
            if expected is not None and got < expected:
                raise InputError(f"{url}: download cut short ({got:,} of {expected:,} bytes)")
    except urllib.error.HTTPError as exc:
        raise InputError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = getattr(exc.reason, "strerror", None) or str(exc.reason)
        raise InputError(f"{url}: cannot reach the host ({reason})") from None
    except InputError:
        raise
    except OSError as exc:  # TimeoutError included
        raise InputError(f"{url}: download failed ({getattr(exc, 'strerror', None) or exc})") from None
