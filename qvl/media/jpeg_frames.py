"""Frames as JPEG files for the frame cache (quality 95, 4:4:4 chroma): encoded, and read back with
their checksums verified, on every core (Pillow and hashlib release the GIL)."""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

JPEG_QUALITY = 95


def _workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 8))


def _encode_one(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def _decode_one(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.format != "JPEG":
            raise ValueError("not a JPEG frame")
        im.load()
        # convert() would copy even an RGB image; asarray on the loaded image does not decode twice.
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def encode_jpegs(frames: np.ndarray) -> list[bytes]:
    with ThreadPoolExecutor(_workers()) as pool:  # Pillow releases the GIL while coding
        return list(pool.map(_encode_one, frames))


def read_frames(d: Path, files: list, shape: tuple[int, int, int]) -> np.ndarray:
    """Read, verify (SHA-256) and decode every frame file into one array, on all cores.

    Each worker takes a contiguous run of files; hashing and JPEG decoding release the GIL.
    """
    n, h, w = shape
    out = np.empty((n, h, w, 3), dtype=np.uint8)

    def run(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            name, digest = files[i]
            data = (d / name).read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                raise ValueError(f"{name} does not match its checksum")
            arr = _decode_one(data)
            if arr.shape != (h, w, 3):
                raise ValueError(f"{name} is not {w}x{h}")
            out[i] = arr

    workers = max(1, min(_workers(), n))
    bounds = [round(k * n / workers) for k in range(workers + 1)]
    if workers == 1:
        run(0, n)
        return out
    with ThreadPoolExecutor(workers - 1) as pool:
        futures = [pool.submit(run, bounds[k], bounds[k + 1]) for k in range(1, workers)]
        run(bounds[0], bounds[1])  # the calling thread takes the first run
        for f in futures:
            f.result()
    return out
