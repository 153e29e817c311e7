"""Open images from paths, globs, directories, http(s) URLs and data URIs, and validate them.

Every failure is an `InputError` whose message names the input, so the CLI can print it as one
line and go on with the next input.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import glob
import io
import os
import shlex
import warnings
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from qvl.errors import InputError, counted
from qvl.media.fetch import fetch_bytes, is_url
from qvl.paths import read_file_bytes

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# Qwen2.5-VL's resize rule refuses aspect ratios above 200; say so before the processor does.
MAX_ASPECT_RATIO = 200
MAX_URL_MB = 64


def is_data_uri(source: str) -> bool:
    return source.startswith("data:")


def is_image_source(source: str) -> bool:
    """Whether a path, URL or data URI names an image (by its suffix) rather than a video."""
    if is_data_uri(source):
        return True
    path = urlparse(source).path if "://" in source else source
    return PurePosixPath(path).suffix.lower() in IMAGE_SUFFIXES


def expand_image_inputs(inputs: list[str]) -> list[tuple[str, str | InputError]]:
    """Turn the command line's inputs into `(label, source)` pairs, in order.

    Directories expand to the images directly inside them (sorted), globs to their matches.
    An input that yields nothing gets an `InputError` as its source, so one bad input does
    not stop the others. A data URI is labelled "data URI", numbered where there are several
    ("data URI 2"), so their records can be told apart.
    """
    expanded: list[tuple[str, str | InputError]] = []
    several, numbered = sum(is_data_uri(raw) for raw in inputs) > 1, 0
    for raw in inputs:
        if is_url(raw) or is_data_uri(raw):
            label = _label(raw)
            if several and is_data_uri(raw):
                numbered += 1
                label += f" {numbered}"
            expanded.append((label, raw))
            continue
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            _note_videos_left_out(raw, path)
            if not found:
                found = [InputError(f"{raw}: directory has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")]
        elif path.exists():
            found = [str(path)]
        elif glob.has_magic(raw):
            found = sorted(p for p in glob.glob(os.path.expanduser(raw)) if Path(p).is_file())
            found = found or [InputError(f"{raw}: no files match")]
        else:  # a link to nothing (or to itself) says so, as a video's path does
            found = [InputError(f"{raw}: {'broken symbolic link' if path.is_symlink() else 'no such file'}")]
        expanded.extend((raw if isinstance(f, InputError) else f, f) for f in found)
    return expanded


def _note_videos_left_out(raw: str, folder: Path) -> None:
    """A folder's videos are not images: say so, rather than pass over them in silence."""
    from qvl.media.preprocess import VIDEO_EXTENSIONS

    videos = sum(p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file() for p in folder.iterdir())
    if videos:
        from qvl.output import warn

        warn(f"{raw}: {counted(videos, 'video')} left out (qvl video or qvl batch answers them)")


def _looks_like_a_video(data: bytes) -> bool:
    """The container signatures of MP4/MOV (an `ftyp` box), Matroska/WebM and AVI."""
    return data[4:8] == b"ftyp" or data[:4] == b"\x1a\x45\xdf\xa3" or (data[:4] == b"RIFF" and data[8:12] == b"AVI ")


def _not_an_image(label: str, data: bytes, video_hint: str | None) -> str:
    from qvl.media.preprocess import VIDEO_EXTENSIONS

    if PurePosixPath(label).suffix.lower() in VIDEO_EXTENSIONS or _looks_like_a_video(data):
        hint = f"use qvl video {shlex.quote(label)}" if video_hint is None else video_hint
        return f"{label}: is a video, not an image: {hint}"
    return f"{label}: not an image (unrecognised format)"


def open_image(source: str, *, video_hint: str | None = None):
    """Open and fully decode one image as RGB `PIL.Image`; raise `InputError` if it can't be used
    (video_hint: what to do with a video given as an image, as `decode_image` takes it).

    The model sees what a person sees in an image viewer: EXIF orientation applied, 16-bit and
    float pixels scaled into 8 bits (not clipped), transparency composited on white, CMYK and
    palette images converted. An animated image (GIF, APNG, WebP) gives its first frame, with a
    one-line note on stderr: `qvl video` takes clips.
    """
    return decode_image(read_source_bytes(source), _label(source), video_hint=video_hint)


def decode_image(data: bytes, label: str, *, max_pixels: int | None = None, video_hint: str | None = None):
    """`open_image` for bytes already read (`label` names them in errors). max_pixels: refuse an
    image of more pixels before decoding it (Pillow's own bomb check is about 180 megapixels).
    video_hint: what to do with a video given as an image (default: the `qvl video` command)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InputError(f"{label}: is empty (0 bytes)")
    try:
        with _quiet_bomb_warning(Image), Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise InputError(
                    f"{label}: {width}x{height} is over the limit of {max_pixels / 1e6:g} megapixels per image"
                )
            img.load()  # decode now: truncated files fail here, not inside the processor
            frames = getattr(img, "n_frames", 1) if getattr(img, "is_animated", False) else 1
            image = to_rgb(img)
    except UnidentifiedImageError:
        raise InputError(_not_an_image(label, data, video_hint)) from None
    except Image.DecompressionBombError:
        raise InputError(
            f"{label}: over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, which Pillow will not decode "
            "(its guard against decompression bombs); scale it down first: the model sees far fewer pixels"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"{label}: corrupt or truncated image ({exc})") from None
    from qvl.output import warn

    if frames > 1:
        warn(f"{label}: animated image with {frames} frames; the model sees the first one")
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        warn(f"{label}: {width}x{height} is {width * height / 1e6:.0f} megapixels; decoding it takes much memory")
    width, height = image.size
    if min(width, height) < 1:
        raise InputError(f"{label}: empty image ({width}x{height})")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise InputError(
            f"{label}: aspect ratio {width}x{height} is over {MAX_ASPECT_RATIO}:1, which Qwen2.5-VL cannot take; crop it first"
        )
    return image


@contextlib.contextmanager
def _quiet_bomb_warning(Image):
    """Without Pillow's warning for an image of some 90 megapixels, printed as Python prints
    warnings: `decode_image` says it in a line of its own."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def to_rgb(img):
    """An RGB copy of a decoded `PIL.Image` (of any mode) as a viewer would show it.

    - EXIF orientation is applied (a phone photo taken upright reaches the model upright).
    - 16-bit integer pixels (modes I;16*, and I holding 16-bit data) are scaled by 255/65535;
      `convert("RGB")` would clip every value over 255 to white. Mode I with larger values and
      mode F are stretched linearly: F from [0, 1] when it lies there, else from its min..max.
    - Alpha (LA, RGBA, PA, a palette or tRNS transparency) is composited on white, the backdrop
      a document or web page gives a transparent image; dropping it would show whatever colour
      the hidden pixels happen to hold (often black).
    - CMYK, YCbCr, LAB, HSV, 1, L and P go through Pillow's own conversion.
    """
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(img), mode="L").convert("RGB")
    has_alpha = mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(backdrop, rgba).convert("RGB")
    return img.convert("RGB")


def _to_uint8(img):
    """A 2-D uint8 array from a single-channel image of 16-bit, 32-bit integer or float pixels."""
    import numpy as np

    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        return np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    arr = arr.astype(np.float64)
    finite = arr[np.isfinite(arr)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if img.mode == "F":
        if lo < 0.0 or hi > 1.0:
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    elif lo >= 0 and hi <= 255:
        arr = arr / 255.0  # 8-bit data held in 32 bits
    elif lo >= 0 and hi <= 65535:
        arr = arr / 65535.0  # 16-bit data (older Pillow opens 16-bit PNGs as I)
    else:
        arr = (arr - lo) / (hi - lo)
    arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


def _label(source: str) -> str:
    return "data URI" if is_data_uri(source) else source


def read_source_bytes(source: str) -> bytes:
    """The bytes of a local file, an http(s) URL (at most MAX_URL_MB) or a data URI; `InputError` if unreadable."""
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
    return read_file_bytes(Path(source), source, InputError)
