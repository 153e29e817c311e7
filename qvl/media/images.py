"""Open images from paths, globs, directories, http(s) URLs and data URIs, and validate them.

Every failure is an `InputError` whose message names the input, so the CLI can print it as one
line and go on with the next input.
"""

from __future__ import annotations

import base64
import binascii
import glob
import io
import os
from pathlib import Path

from qvl.errors import InputError
from qvl.media.fetch import fetch_bytes, is_url

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# Qwen2.5-VL's resize rule refuses aspect ratios above 200; say so before the processor does.
MAX_ASPECT_RATIO = 200
MAX_URL_MB = 64


def is_data_uri(source: str) -> bool:
    return source.startswith("data:")


def expand_image_inputs(inputs: list[str]) -> list[tuple[str, str | InputError]]:
    """Turn the command line's inputs into `(label, source)` pairs, in order.

    Directories expand to the images directly inside them (sorted), globs to their matches.
    An input that yields nothing gets an `InputError` as its source, so one bad input does
    not stop the others.
    """
    expanded: list[tuple[str, str | InputError]] = []
    for raw in inputs:
        if is_url(raw) or is_data_uri(raw):
            expanded.append((_label(raw), raw))
            continue
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                found = [InputError(f"{raw}: directory has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")]
        elif path.exists():
            found = [str(path)]
        elif glob.has_magic(raw):
            found = sorted(p for p in glob.glob(os.path.expanduser(raw)) if Path(p).is_file())
            found = found or [InputError(f"{raw}: no files match")]
        else:
            found = [InputError(f"{raw}: no such file")]
        expanded.extend((raw if isinstance(f, InputError) else f, f) for f in found)
    return expanded


def open_image(source: str):
    """Open and fully decode one image as RGB `PIL.Image`; raise `InputError` if it can't be used."""
    from PIL import Image, UnidentifiedImageError

    label = _label(source)
    data = _read_bytes(source)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode now: truncated files fail here, not inside the processor
            image = img.convert("RGB")
    except UnidentifiedImageError:
        raise InputError(f"{label}: not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{label}: corrupt or truncated image ({exc})") from None
    width, height = image.size
    if min(width, height) < 1:
        raise InputError(f"{label}: empty image ({width}x{height})")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise InputError(
            f"{label}: aspect ratio {width}x{height} is over {MAX_ASPECT_RATIO}:1, which Qwen2.5-VL cannot take; crop it first"
        )
    return image


def _label(source: str) -> str:
    return "data URI" if is_data_uri(source) else source


def _read_bytes(source: str) -> bytes:
    if is_data_uri(source):
        header, _, payload = source.partition(",")
        if not payload:
            raise InputError("data URI: no data after the comma")
        try:
            return base64.b64decode(payload, validate=True) if header.endswith(";base64") else payload.encode()
        except (binascii.Error, ValueError):
            raise InputError("data URI: invalid base64 data") from None
    if is_url(source):
        return fetch_bytes(source, max_mb=MAX_URL_MB)
    path = Path(source)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{source}: is a directory") from None
    except PermissionError:
        raise InputError(f"{source}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{source}: cannot read ({exc.strerror or exc})") from None
