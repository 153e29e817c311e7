"""A batch job's rows: files, folders, globs, URLs and JSONL manifests -> one `Row` per input.

    rows = expand(["clips/", "photos/*.jpg", "todo.jsonl"], video_options, prompts=DEFAULT_PROMPTS, out=path)

A folder gives every image and video file under it (recursively, sorted; hidden files and
folders left out); a glob gives the files it matches; a `.jsonl` file is a manifest of one JSON
object per line:

    {"id": "c1", "input": "clips/a.mp4", "prompt": "Who speaks?", "frames": 16, "max_tokens": 64}

`input` is required (a path relative to the manifest's folder, or a URL); `id` defaults to the
input: a URL as it is, a file's real path from the results file's folder (`out`; the current
folder without one), so that a job run again from another folder, or reaching a file by another
path, gives each file the id it had; `type` (image or video) defaults to the file's suffix;
`prompt`, `max_tokens` and the frame options of `qvl video` (`frames`, `fps`, `start`, `end`,
...) override the command's for that row.
Everything wrong with the inputs themselves (a path that matches nothing, a manifest line that is
not JSON, an unknown key, an impossible frame option, a prompt the model may not be asked, two
rows with one id) is an `OptionError` naming the argument or file and line, raised before any
model loads; what is wrong with a row's media (a missing or corrupt file) is found when the row
runs, and is that row's error.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from qvl.errors import OptionError, QvlError
from qvl.media.fetch import is_url
from qvl.media.images import IMAGE_SUFFIXES, is_data_uri
from qvl.media.preprocess import VIDEO_EXTENSIONS
from qvl.questions import check_given_question, check_question

KINDS = ("image", "video")
MANIFEST_SUFFIX = ".jsonl"
# Manifest keys that are options of the row, beside id, input and type.
VIDEO_KEYS = (
    "frames",
    "fps",
    "start",
    "end",
    "min_frames",
    "max_frames",
    "min_pixels",
    "max_pixels",
    "total_pixels",
    "seek",
    "max_download_mb",
)
_WHOLE_KEYS = frozenset({"frames", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels"})
ROW_KEYS = ("id", "input", "type", "prompt", "max_tokens", *VIDEO_KEYS)


@dataclass(frozen=True)
class Row:
    """One input of a batch job and how to ask about it.

    id: the key of its line in the results file (a string, or a manifest's integer); kind: image
    or video; max_tokens: the row's own limit, or None for the command's; video: the row's
    `VideoOptions` (the command's with the row's overrides), None for images; keys: the frame
    options a manifest row set itself, which its errors and notes name by their keys.
    """

    id: str | int
    input: str
    kind: str
    prompt: str
    max_tokens: int | None = None
    video: Any = None
    keys: tuple[str, ...] = ()


def by_keys(message: str, keys: Iterable[str]) -> str:
    """A message about the command's frame options with those of `keys` named as a manifest row
    spells them (`"frames" 3 rounded up`, not `--frames 3`)."""
    for key in keys:
        message = message.replace(f"--{key.replace('_', '-')} ", f'"{key}" ')
    return message


def kind_of(source: str) -> str:
    """image or video, from the name: images by suffix (and data URIs), everything else is a video."""
    if is_data_uri(source):
        return "image"
    path = source.split("?", 1)[0] if is_url(source) else source
    return "image" if Path(path).suffix.lower() in IMAGE_SUFFIXES else "video"


def expand(
    inputs: Iterable[str],
    video_options,
    *,
    prompts: Mapping[str, str],
    prompt: str | None = None,
    out: str | os.PathLike | None = None,
) -> list[Row]:
    """Every row of `inputs`, in order, files found twice kept once.

    video_options: the command's `VideoOptions`; prompts: the default question per kind; prompt:
    the command's --prompt, which replaces the defaults; out: the results file, whose folder
    files' default ids start from and which is never a row itself (a glob may match it). Raises
    `OptionError` (see the module).
    """
    if prompt is not None:
        check_given_question(prompt, "--prompt")
    out = os.path.expanduser(out) if out is not None else None
    results = os.path.realpath(out) if out is not None else None
    anchor = os.path.realpath(os.path.dirname(os.path.abspath(out)) if out is not None else os.curdir)
    defaults = {"prompts": prompts, "prompt": prompt, "video": video_options, "anchor": anchor, "results": results}
    rows: list[Row] = []
    seen: dict[Any, str | None] = {}  # id -> the manifest line it came from (None: a file argument)
    for raw in inputs:
        for row, origin in _rows_of(raw, defaults):
            if row.id in seen:
                if origin is None and seen[row.id] is None:
                    continue  # the same file reached twice (a folder and a glob): one row
                first = seen[row.id] or "a file argument"
                raise OptionError(f"{origin or row.input}: id {row.id!r} is also that of {first}; ids must be unique")
            seen[row.id] = origin
            rows.append(row)
    if not rows:
        raise OptionError("no inputs: the manifests hold no rows")
    return rows


def _rows_of(raw: str, defaults: dict) -> Iterable[tuple[Row, str | None]]:
    if is_url(raw) or is_data_uri(raw):
        yield _row(raw, raw, defaults), None
        return
    path = Path(raw).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and _listed(p.relative_to(path)))
        if not found:
            raise OptionError(f"{raw}: no image or video files in this folder")
    elif path.is_file():
        found = [path]
    elif glob.has_magic(raw):
        found = sorted(Path(p) for p in glob.glob(os.path.expanduser(raw), recursive=True) if os.path.isfile(p))
        if not found:
            raise OptionError(f"{raw}: no files match")
    else:
        raise OptionError(f"{raw}: no such file or folder")
    for file in found:
        if os.path.realpath(file) == defaults["results"]:
            continue
        if file.suffix.lower() == MANIFEST_SUFFIX:
            yield from _read_manifest(file, defaults)
        else:
            yield _row(file_id(str(file), defaults["anchor"]), str(file), defaults), None


def file_id(path: str, anchor: str) -> str:
    """A file's default id: its real path from the folder `anchor` (the results file's)."""
    real = os.path.realpath(path)
    try:
        return os.path.relpath(real, anchor)
    except ValueError:  # another drive (Windows): no path from the anchor
        return real


_MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_EXTENSIONS


def _listed(relative: Path) -> bool:
    """Whether a folder's file is a row: an image or video, not hidden nor in a hidden folder
    (macOS's `._name.jpg` beside every copied file, a `.git` folder)."""
    return relative.suffix.lower() in _MEDIA_SUFFIXES and not any(part.startswith(".") for part in relative.parts)


def _read_manifest(path: Path, defaults: dict) -> Iterable[tuple[Row, str]]:
    """The rows of a JSONL manifest, each with "FILE:LINE" saying where it was read."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets' exports may start with a byte-order mark
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"{path}: cannot read the manifest ({getattr(exc, 'strerror', None) or exc})") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OptionError(f"{where}: not a JSON object ({exc.msg})") from None
        try:
            yield _manifest_row(entry, path.parent, defaults), where
        except QvlError as exc:
            raise OptionError(f"{where}: {exc}") from None


def _manifest_row(entry: Any, folder: Path, defaults: dict) -> Row:
    if not isinstance(entry, dict):
        raise OptionError("not a JSON object")
    unknown = sorted(set(entry) - set(ROW_KEYS))
    if unknown:
        raise OptionError(f"unknown key {unknown[0]!r} (a row takes {', '.join(ROW_KEYS)})")
    source = entry.get("input")
    if not isinstance(source, str) or not source:
        raise OptionError('no "input" (a path or URL)')
    remote = is_url(source) or is_data_uri(source)
    if not (remote or os.path.isabs(source) or folder == Path(".")):
        source = str(folder / source)
    row_id = entry.get("id", source if remote else file_id(source, defaults["anchor"]))
    if isinstance(row_id, bool) or not isinstance(row_id, (str, int)) or row_id == "":
        raise OptionError(f'"id" must be a non-empty string or an integer, not {_json(row_id)}')
    kind = entry.get("type", kind_of(source))
    if kind not in KINDS:
        raise OptionError(f'"type" must be image or video, not {_json(kind)}')
    prompt = entry.get("prompt")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise OptionError('"prompt" must be a non-empty string')
    if prompt is not None:
        check_question(prompt, '"prompt"', OptionError)
    max_tokens = entry.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise OptionError(f'"max_tokens" must be a whole number of at least 1, not {_json(max_tokens)}')
    overrides = {key: entry[key] for key in VIDEO_KEYS if key in entry}
    if overrides and kind == "image":
        raise OptionError(f"{', '.join(overrides)} applies to videos, and this row is an image")
    return _row(row_id, source, defaults, kind=kind, prompt=prompt, max_tokens=max_tokens, video=overrides)


def _row(row_id, source: str, defaults: dict, *, kind=None, prompt=None, max_tokens=None, video=None) -> Row:
    kind = kind or kind_of(source)
    options, keys = None, tuple(video or ())
    if kind == "video":
        options = defaults["video"]
        if video:
            options = _with_overrides(options, video)
    prompt = prompt or defaults["prompt"] or defaults["prompts"][kind]
    return Row(id=row_id, input=source, kind=kind, prompt=prompt, max_tokens=max_tokens, video=options, keys=keys)


def _with_overrides(options, overrides: dict):
    """The command's `VideoOptions` with a row's values (frames and fps replace each other)."""
    for key, value in overrides.items():
        kinds = str if key == "seek" else int if key in _WHOLE_KEYS else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            wanted = "a string" if key == "seek" else "a whole number" if key in _WHOLE_KEYS else "a number"
            raise OptionError(f'"{key}" must be {wanted}, not {_json(value)}')
    changes = dict(overrides)
    if "frames" in changes and "fps" not in changes:
        changes["fps"] = None
    if "fps" in changes and "frames" not in changes:
        changes["frames"] = None
    try:
        return dataclasses.replace(options, **changes)  # VideoOptions checks the values
    except OptionError as exc:  # it names the command's flags: a row's own values go by its keys
        raise OptionError(by_keys(str(exc), overrides)) from None


def _json(value) -> str:
    """A manifest's value as JSON spells it (true, null, "text"), for error messages about it."""
    return json.dumps(value, ensure_ascii=False)
