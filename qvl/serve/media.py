"""A request's media on the server: staged (read into bytes or a file, and identified) off the
engine's thread, decoded on it only when no kept session already holds it.

The identity is what a kept session is found by: the SHA-256 of an image's bytes or of an uploaded
video's, a local video's size, mtime and sampled hash (as the frame cache keys it), a video URL's
address (downloaded only when no session holds it: the server takes a URL to name the same video
while its session is kept), plus the frame options and whether PSA runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qvl.errors import InputError
from qvl.serve.protocol import ChatRequest, Part, field_names

MAX_IMAGE_PIXELS = 50_000_000  # per decoded image; the processor shrinks larger ones anyway


@dataclass
class Staged:
    """A request's media, read and identified. key: the session key (None without media)."""

    key: str | None = None
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (label, bytes)
    video: tuple[str, str, bool] | None = None  # (label, path or URL, uploaded)
    video_options: Any = None
    seconds: float = 0.0  # spent staging
    folder: str | None = None  # a temporary folder holding an uploaded video

    def load(self, frame_cache):
        """The decoded media as a `runner.Media` (frames through `frame_cache` for paths and URLs;
        an upload is decoded each time it misses the kept sessions, without filling the cache)."""
        from qvl.media.images import decode_image
        from qvl.runner import Media, load_clip

        images = [
            decode_image(data, label, max_pixels=MAX_IMAGE_PIXELS, video_hint="send it as a video_url part")
            for label, data in self.images
        ]
        if self.video is None:
            return Media(images=images)
        label, source, uploaded = self.video
        try:
            clip = load_clip(source, self.video_options, None if uploaded else frame_cache)
        except InputError as exc:
            if uploaded:  # name the upload as the client sent it, not by its temporary file
                raise InputError(str(exc).replace(source, label)) from None
            raise
        # The plan's notes (`frames 7` rounded up to 8, an `end` past the video) go back in the
        # media record: an API client has no terminal that a note would reach.
        record = {**clip.record, "notes": [field_names(note)[0] for note in clip.notes]}
        return Media(images=images, video=clip.video, record=record, notes=clip.notes)

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def stage(request: ChatRequest, *, psa: bool) -> Staged:
    """Read `request`'s media (images into memory, an uploaded video into a temporary file) and
    compute its session key; an unreadable input is an `InputError` naming it."""
    from qvl.media.images import read_source_bytes

    started = time.perf_counter()
    staged = Staged(video_options=request.video_options)
    identities: list[Any] = []
    try:
        for part in request.images:
            data = read_source_bytes(part.url)
            staged.images.append((part.label, data))
            identities.append({"image": hashlib.sha256(data).hexdigest()})
        if request.video is not None:
            staged.video, identity = _stage_video(request.video, staged)
            identities.append(identity)
    except BaseException:
        staged.close()
        raise
    if identities:
        options = request.video_options.to_dict() if request.video_options is not None else {}
        options.pop("max_download_mb", None)
        blob = json.dumps({"media": identities, "options": options, "psa": psa}, sort_keys=True).encode()
        staged.key = hashlib.sha256(blob).hexdigest()
    staged.seconds = time.perf_counter() - started
    return staged


def _stage_video(part: Part, staged: Staged) -> tuple[tuple[str, str, bool], dict]:
    if part.is_remote:
        return (part.label, part.url, False), {"video_url": part.url}
    if part.is_data:
        from qvl.media.images import read_source_bytes

        data = read_source_bytes(part.url)
        if not data:
            raise InputError("data URI: is empty (0 bytes)")
        staged.folder = tempfile.mkdtemp(prefix="qvl-serve-")
        path = Path(staged.folder) / "upload"
        path.write_bytes(data)
        return (part.label, str(path), True), {"video": hashlib.sha256(data).hexdigest()}
    from qvl.media.cache import file_identity
    from qvl.media.video.probe import check_readable

    path = Path(part.url).expanduser()
    check_readable(path)
    return (part.label, str(path), False), {"video_file": str(path.resolve()), **file_identity(path)}
