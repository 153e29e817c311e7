"""The frame cache: decoded, resized frames on disk, keyed by the source file and the plan.

Layout under the root (--cache-dir, else frames/ under qvl's cache root: $QVL_CACHE_DIR or the user cache):

    <root>/entries/<key[:2]>/<key>/meta.json      timestamps, sampled fps, plan, source, checksums
    <root>/entries/<key[:2]>/<key>/000000.jpg ...  one JPEG per frame (quality 95, 4:4:4 chroma)
    <root>/probes/<identity>.json                  probe results, so a hit needs no decoding
    <root>/tmp/                                    entries being written (renamed into place)

The key hashes the file's identity (size, mtime and a SHA-256 of a bounded sample of its bytes:
the first, middle and last 256 KiB; or of every byte with strict_hash) with the parts of the plan
that decide the pixels. An entry is written into tmp/ and renamed into place in one step, so a
killed run leaves no half entry and two processes filling the same entry both end up reading one
complete copy. meta.json carries a SHA-256 of every frame file and of itself: an entry edited on
disk is detected on read, removed and rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qvl.errors import CacheError

CACHE_FORMAT = 1
JPEG_QUALITY = 95
SAMPLE_BYTES = 256 << 10  # per sampled region: first, middle and last 256 KiB
STALE_TMP_SECONDS = 6 * 3600


def _qvl_version() -> str:
    try:
        from importlib.metadata import version

        return version("qvl")
    except Exception:
        return "0+unknown"


def default_root() -> Path:
    """frames/ under qvl's cache root ($QVL_CACHE_DIR, else the user cache), beside models/."""
    from qvl.paths import cache_root

    return cache_root() / "frames"


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def file_identity(path: str | os.PathLike, *, strict: bool = False, with_mtime: bool = True) -> dict:
    """Size, mtime and a content hash (sampled, or of the whole file with strict=True)."""
    path = Path(path)
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if strict or st.st_size <= 3 * SAMPLE_BYTES:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        else:
            for offset in (0, st.st_size // 2 - SAMPLE_BYTES // 2, st.st_size - SAMPLE_BYTES):
                fh.seek(offset)
                h.update(fh.read(SAMPLE_BYTES))
    ident = {
        "size": st.st_size,
        "hash": ("sha256:" if strict or st.st_size <= 3 * SAMPLE_BYTES else "sha256-sample:") + h.hexdigest(),
    }
    if with_mtime:
        ident["mtime_ns"] = st.st_mtime_ns
    return ident


@dataclass
class CachedFrames:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    timestamps: tuple[float, ...]
    sampled_fps: float
    meta: dict


@dataclass
class CacheEntry:
    key: str
    path: Path
    size_bytes: int
    created: float  # unix time
    source: str
    frames: int
    width: int
    height: int


class FrameCache:
    """Frames on disk. `root` defaults to frames/ under $QVL_CACHE_DIR, else under the user cache dir qvl/."""

    def __init__(self, root: str | os.PathLike | None = None, strict_hash: bool = False):
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.strict_hash = strict_hash
        self.last_status = ""  # "hit", "miss" or "rebuilt" after get(); read by load_video

    # -- paths ---------------------------------------------------------------------------------
    @property
    def entries_dir(self) -> Path:
        return self.root / "entries"

    def entry_dir(self, key: str) -> Path:
        return self.entries_dir / key[:2] / key

    def _tmp_dir(self) -> Path:
        return self.root / "tmp"

    # -- keys ----------------------------------------------------------------------------------
    def identity(self, path: str | os.PathLike, *, with_mtime: bool = True) -> dict:
        return file_identity(path, strict=self.strict_hash, with_mtime=with_mtime)

    @staticmethod
    def key(identity: dict, plan_key: dict) -> str:
        blob = _canonical({"format": CACHE_FORMAT, "source": identity, "plan": plan_key})
        return hashlib.sha256(blob).hexdigest()[:40]

    # -- probe results -------------------------------------------------------------------------
    def _probe_path(self, identity: dict) -> Path:
        return self.root / "probes" / (hashlib.sha256(_canonical(identity)).hexdigest()[:40] + ".json")

    def load_probe(self, identity: dict) -> dict | None:
        try:
            data = json.loads(self._probe_path(identity).read_text())
        except (OSError, ValueError):
            return None
        return data if data.get("identity") == identity else None

    def save_probe(self, identity: dict, info: dict) -> None:
        target = self._probe_path(identity)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
            tmp.write_text(json.dumps({"identity": identity, "info": info}))
            os.replace(tmp, target)
        except OSError:
            pass  # a probe record is an optimisation; the entry write reports real problems

    # -- checks --------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Raise CacheError unless entries can be created under the root."""
        tmp = self._tmp_dir()
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            probe = tmp / f".write-test-{uuid.uuid4().hex}"
            probe.mkdir()
            probe.rmdir()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise CacheError(
                f"frame cache {self.root} is not writable ({reason}): "
                "pass --cache-dir DIR, set QVL_CACHE_DIR, or use --no-cache"
            ) from None

    # -- read ----------------------------------------------------------------------------------
    def get(self, key: str, *, width: int | None = None, height: int | None = None) -> CachedFrames | None:
        """The entry's frames, or None. A damaged or edited entry is removed (status "rebuilt")."""
        d = self.entry_dir(key)
        meta_path = d / "meta.json"
        if not meta_path.exists():
            self.last_status = "miss"
            return None
        try:
            meta = self._read_meta(meta_path)
            shape = (int(meta["frames"]), int(meta["height"]), int(meta["width"]))
            if len(meta["files"]) != shape[0] or (width and shape[2] != width) or (height and shape[1] != height):
                raise ValueError("frame count or size does not match the plan")
            frames = _read_frames(d, meta["files"], shape)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._discard(d)
            self.last_status = "rebuilt"
            self.last_problem = str(exc)
            return None
        self.last_status = "hit"
        return CachedFrames(
            frames=frames,
            timestamps=tuple(meta["timestamps"]),
            sampled_fps=float(meta["sampled_fps"]),
            meta=meta,
        )

    def has(self, key: str) -> bool:
        return (self.entry_dir(key) / "meta.json").exists()

    @staticmethod
    def _read_meta(meta_path: Path) -> dict:
        meta = json.loads(meta_path.read_text())
        checksum = meta.pop("checksum", None)
        if checksum != hashlib.sha256(_canonical(meta)).hexdigest():
            raise ValueError("meta.json does not match its checksum")
        return meta

    # -- write ---------------------------------------------------------------------------------
    def put(self, key: str, frames: np.ndarray, meta: dict) -> Path:
        """Write an entry atomically: build it in tmp/, then rename it into place."""
        final = self.entry_dir(key)
        tmp_root = self._tmp_dir()
        try:
            tmp_root.mkdir(parents=True, exist_ok=True)
            work = tmp_root / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            work.mkdir()
        except OSError as exc:
            raise CacheError(
                f"frame cache {self.root} is not writable ({exc.strerror or exc}): "
                "pass --cache-dir DIR, set QVL_CACHE_DIR, or use --no-cache"
            ) from None
        try:
            blobs = _encode_jpegs(frames)
            files = []
            for i, data in enumerate(blobs):
                name = f"{i:06d}.jpg"
                (work / name).write_bytes(data)
                files.append([name, hashlib.sha256(data).hexdigest()])
            meta = dict(meta)
            meta.update(
                format=CACHE_FORMAT,
                key=key,
                frames=int(frames.shape[0]),
                height=int(frames.shape[1]),
                width=int(frames.shape[2]),
                encoding=f"jpeg q{JPEG_QUALITY} 4:4:4",
                files=files,
                created=time.time(),
                qvl_version=_qvl_version(),
            )
            meta["checksum"] = hashlib.sha256(_canonical(meta)).hexdigest()
            (work / "meta.json").write_text(json.dumps(meta, indent=1))
            _fsync_dir(work)
            final.parent.mkdir(parents=True, exist_ok=True)
            if (final / "meta.json").exists():
                # Another process filled this entry meanwhile (get() removes damaged ones).
                shutil.rmtree(work, ignore_errors=True)
                return final
            if final.exists():
                self._discard(final)  # a folder without metadata: edited by hand, not ours
            try:
                os.rename(work, final)
            except OSError:
                if (final / "meta.json").exists():  # another process won the race: keep theirs
                    shutil.rmtree(work, ignore_errors=True)
                else:
                    raise
        except OSError as exc:
            shutil.rmtree(work, ignore_errors=True)
            raise CacheError(f"could not write frame cache entry in {self.root}: {exc.strerror or exc}") from None
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return final

    def _discard(self, d: Path) -> None:
        """Remove an entry: rename it away first so readers never see it half deleted."""
        trash = self._tmp_dir() / f"trash-{d.name}-{uuid.uuid4().hex[:8]}"
        try:
            self._tmp_dir().mkdir(parents=True, exist_ok=True)
            os.rename(d, trash)
        except OSError:
            trash = d
        shutil.rmtree(trash, ignore_errors=True)

    # -- management ----------------------------------------------------------------------------
    def entries(self) -> list[CacheEntry]:
        out: list[CacheEntry] = []
        if not self.entries_dir.is_dir():
            return out
        for shard in sorted(self.entries_dir.iterdir()):
            if not shard.is_dir():
                continue
            for d in sorted(shard.iterdir()):
                meta_path = d / "meta.json"
                try:
                    meta = json.loads(meta_path.read_text())
                    size = sum(f.stat().st_size for f in d.iterdir())
                except (OSError, ValueError):
                    continue
                out.append(
                    CacheEntry(
                        key=d.name,
                        path=d,
                        size_bytes=size,
                        created=float(meta.get("created", meta_path.stat().st_mtime)),
                        source=str(meta.get("source", {}).get("path", "")),
                        frames=int(meta.get("frames", 0)),
                        width=int(meta.get("width", 0)),
                        height=int(meta.get("height", 0)),
                    )
                )
        return out

    def total_size(self) -> int:
        """Bytes used by the cache root (entries, probe records and leftovers in tmp/)."""
        total = 0
        if not self.root.is_dir():
            return 0
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except OSError:
                    pass
        return total

    def clear(self, older_than_days: float | None = None) -> tuple[int, int]:
        """Remove entries (all, or those created more than `older_than_days` ago).

        Returns (entries removed, bytes freed). Leftovers of killed runs in tmp/ older than six
        hours go too; with no age limit, probe records go as well.
        """
        now = time.time()
        removed = freed = 0
        for e in self.entries():
            if older_than_days is None or now - e.created > older_than_days * 86400:
                self._discard(e.path)
                removed += 1
                freed += e.size_bytes
        tmp = self._tmp_dir()
        if tmp.is_dir():
            for d in tmp.iterdir():
                try:
                    if (
                        older_than_days is None
                        and now - d.stat().st_mtime > 60
                        or now - d.stat().st_mtime > STALE_TMP_SECONDS
                    ):
                        shutil.rmtree(d, ignore_errors=True)
                except OSError:
                    pass
        if older_than_days is None:
            shutil.rmtree(self.root / "probes", ignore_errors=True)
        return removed, freed


def _fsync_dir(d: Path) -> None:
    try:
        for f in d.iterdir():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError:
        pass


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


def _encode_jpegs(frames: np.ndarray) -> list[bytes]:
    with ThreadPoolExecutor(_workers()) as pool:  # Pillow releases the GIL while coding
        return list(pool.map(_encode_one, frames))


def _read_frames(d: Path, files: list, shape: tuple[int, int, int]) -> np.ndarray:
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
