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

import errno
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qvl.errors import CacheDirError, CacheError, counted, first_line
from qvl.media.cache_files import HOST as _HOST
from qvl.media.cache_files import is_abandoned, tree_size, walk_size
from qvl.media.jpeg_frames import JPEG_QUALITY, encode_jpegs, read_frames
from qvl.paths import write_json_atomically

CACHE_FORMAT = 1
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
        self.given = root is not None  # a folder the person named (--cache-dir), not the default
        self.strict_hash = strict_hash
        self.last_status = ""  # "hit", "miss" or "rebuilt" after get(); read by load_video
        self.last_stale = (0, 0)  # (folders, bytes) of leftovers removed by the last clear()

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
            write_json_atomically(target, {"identity": identity, "info": info}, indent=None)
        except OSError:
            pass  # a probe record is an optimisation; the entry write reports real problems

    # -- checks --------------------------------------------------------------------------------
    def check_writable(self, *, can_skip: bool = True) -> None:
        """Raise CacheError unless entries can be created under the root.

        can_skip: the caller can run without the cache (`qvl video --no-cache`), so the message
        may offer that; `qvl preprocess` exists to fill the cache and has no such option.
        """
        tmp = self._tmp_dir()
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            probe = tmp / f".write-test-{uuid.uuid4().hex}"
            probe.mkdir()
            probe.rmdir()
        except OSError as exc:
            raise self._not_writable(exc, can_skip=can_skip) from None

    def _not_writable(self, exc: OSError, *, can_skip: bool) -> CacheDirError:
        reason = exc.strerror or type(exc).__name__
        chosen = os.environ.get("QVL_CACHE_DIR")
        if self.given:
            fixes = "give --cache-dir a writable folder" + (", or use --no-cache" if can_skip else "")
        elif chosen and Path(chosen).expanduser() in self.root.parents:  # qvl's models are there too
            fixes = f"set QVL_CACHE_DIR (now {chosen}) to a writable folder"
        elif can_skip:
            fixes = "pass --cache-dir DIR, set QVL_CACHE_DIR, or use --no-cache"
        else:
            fixes = "pass --cache-dir DIR or set QVL_CACHE_DIR to a writable folder"
        return CacheDirError(f"frame cache {self.root} is not writable ({reason}): {fixes}")

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
            frames = read_frames(d, meta["files"], shape)
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
    def put(self, key: str, frames: np.ndarray, meta: dict, *, can_skip: bool = True) -> Path:
        """Write an entry atomically: build it in tmp/, then rename it into place.

        The work folder's name records this host and process, so a later run can tell the
        leftover of a killed writer (see `stale()`) from a write still under way.
        """
        final = self.entry_dir(key)
        tmp_root = self._tmp_dir()
        try:
            tmp_root.mkdir(parents=True, exist_ok=True)
            work = tmp_root / f"{key}.{_HOST}-{os.getpid()}.{uuid.uuid4().hex[:8]}"
            work.mkdir()
        except OSError as exc:
            raise self._not_writable(exc, can_skip=can_skip) from None
        try:
            blobs = encode_jpegs(frames)
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

    def _discard(self, d: Path) -> OSError | None:
        """Remove an entry: rename it away first so readers never see it half deleted. None once
        it is gone from the cache (remains that resist removal wait in tmp/ for a later clear),
        else why it is still there."""
        trash = self._tmp_dir() / f"trash-{d.name}-{uuid.uuid4().hex[:8]}"
        problem = None
        try:
            self._tmp_dir().mkdir(parents=True, exist_ok=True)
            os.rename(d, trash)
        except OSError as exc:
            problem, trash = exc, d
        shutil.rmtree(trash, ignore_errors=True)
        if not os.path.lexists(d):
            return None
        return problem or PermissionError(errno.EACCES, os.strerror(errno.EACCES))

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

    def damaged(self, entries: list[CacheEntry] | None = None) -> list[tuple[Path, int]]:
        """Entry folders not among `entries` (default: `entries()`): their meta.json is unreadable."""
        known = {e.path for e in (self.entries() if entries is None else entries)}
        shards = [s for s in self.entries_dir.iterdir() if s.is_dir()] if self.entries_dir.is_dir() else []
        return [(d, tree_size(d)) for s in shards for d in s.iterdir() if d.is_dir() and d not in known]

    def stale(self, *, max_age: float = STALE_TMP_SECONDS) -> list[tuple[Path, int]]:
        """Leftovers of interrupted runs, with their sizes in bytes: nothing reads them.

        A folder in tmp/ is stale when the process that was writing it (on this host) is gone,
        or when it is older than `max_age` seconds (a writer on another host sharing the cache,
        or a name without a process id). Half-removed entries (`trash-*`), write probes and
        probe records never renamed into place are always stale.
        """
        now = time.time()
        out: list[tuple[Path, int]] = []
        candidates = []
        tmp = self._tmp_dir()
        if tmp.is_dir():
            candidates += list(tmp.iterdir())
        probes = self.root / "probes"
        if probes.is_dir():
            candidates += [p for p in probes.iterdir() if p.name.startswith(".")]
        for path in candidates:
            try:
                age = now - path.lstat().st_mtime
            except OSError:
                continue
            # A write probe or a probe record lives for microseconds: a minute old, it is left over.
            if (path.name.startswith(".") and age > 60) or is_abandoned(path.name) or age > max_age:
                out.append((path, tree_size(path)))
        return out

    def stale_bytes(self) -> int:
        """Bytes held by leftovers of interrupted runs (part of `total_size()`, in no entry)."""
        return sum(size for _, size in self.stale())

    def total_size(self) -> int:
        """Bytes used by the cache root (entries, probe records and leftovers in tmp/)."""
        return walk_size(self.root) if self.root.is_dir() else 0

    def clear(self, older_than_days: float | None = None) -> tuple[int, int]:
        """Remove entries (all, or those created more than `older_than_days` ago).

        Returns (entries removed, bytes freed), counting only what went; the bytes include the
        leftovers of interrupted runs (see `stale()`), which always go, and which are also left
        in `last_stale` as (folders, bytes) so a caller can report them apart. With no age limit,
        a leftover a minute old counts as stale, and probe records go as well. Raises CacheError
        after removing what it could when some entries could not be removed (a read-only folder).
        """
        now = time.time()
        removed = freed = 0
        kept: list[OSError] = []
        entries = self.entries()
        doomed = [
            (e.path, e.size_bytes)
            for e in entries
            if older_than_days is None or now - e.created > older_than_days * 86400
        ]
        for path, size in doomed + self.damaged(entries):  # damaged entries are of no use at any age
            problem = self._discard(path)
            if problem is None:
                removed += 1
                freed += size
            else:
                kept.append(problem)
        stale_dirs = stale_bytes = 0
        for path, size in self.stale(max_age=60 if older_than_days is None else STALE_TMP_SECONDS):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            if not os.path.lexists(path):
                stale_dirs += 1
                stale_bytes += size
        self.last_stale = (stale_dirs, stale_bytes)
        if older_than_days is None:
            shutil.rmtree(self.root / "probes", ignore_errors=True)
        if kept:
            raise CacheError(
                f"{counted(len(kept), 'entry', 'entries')} of {self.root} could not be removed "
                f"({kept[0].strerror or first_line(kept[0])}); removed {removed}"
            )
        return removed, freed + stale_bytes


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
