"""OpenAI's chat-completions protocol as `qvl serve` speaks it: a request body -> `ChatRequest`, an
answer -> a completion or its streamed chunks, a failure -> an error in OpenAI's shape.

No web framework here (the app calls these) and nothing heavy: parsing checks the shape and the
values of a body (with the same `Settings` and `VideoOptions` checks as the command line, so the
messages are the same), it reads no media.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from qvl.errors import InputError, ModelError, OptionError, QvlError

DEFAULT_MAX_TOKENS = 512
MAX_IMAGES = 16  # per request
# qvl's frame options, accepted as extra top-level body fields (--max-download-mb is the server's).
VIDEO_FIELDS = {
    "frames": int,
    "fps": float,
    "start": float,
    "end": float,
    "min_frames": int,
    "max_frames": int,
    "min_pixels": int,
    "max_pixels": int,
    "total_pixels": int,
    "seek": str,
}
# OpenAI fields that change nothing here, accepted and ignored.
IGNORED_FIELDS = {"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key"}
# OpenAI fields accepted at the value that means "off".
NEUTRAL_FIELDS = {"n": 1, "frequency_penalty": 0, "presence_penalty": 0, "logprobs": False}
SAMPLING_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed"}
STREAM_FIELDS = {"stream", "stream_options"}


class ApiError(Exception):
    """A request that gets an error response: its HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def api_error(exc: QvlError) -> ApiError:
    """A qvl error as the API reports it: bad options and inputs are the client's (400), the rest ours."""
    if isinstance(exc, OptionError):
        message, named = field_names(str(exc))
        return ApiError(400, message, code="invalid_option", param=named[0] if named else None)
    if isinstance(exc, InputError):
        return ApiError(400, str(exc), code="invalid_input")
    if isinstance(exc, ModelError):
        return ApiError(500, str(exc), code="model_error")
    return ApiError(500, str(exc), code="server_error")


def field_names(message: str) -> tuple[str, list[str]]:
    """The command line's check message with the request's field names (`--max-tokens` ->
    `max_tokens`) where the option is a field of a request, and those fields in order."""
    import re

    fields, named = SAMPLING_FIELDS | set(VIDEO_FIELDS), []

    def field(match):
        name = match.group(1).replace("-", "_")
        if name not in fields:
            return match.group(0)
        named.append(name)
        return name

    return re.sub(r"--([a-z][a-z-]*)", field, message), named


@dataclass(frozen=True)
class Part:
    """One image or video of a request: an http(s) URL, a data URI, or (allowed by the server) a path."""

    kind: str  # "image" or "video"
    url: str

    @property
    def is_data(self) -> bool:
        return self.url.startswith("data:")

    @property
    def is_remote(self) -> bool:
        return self.url.startswith(("http://", "https://"))

    @property
    def label(self) -> str:
        """What error messages call it (a data URI's payload is no name)."""
        return "data URI" if self.is_data else self.url


@dataclass
class ChatRequest:
    """One parsed `POST /v1/chat/completions` body: the question, the media (of the first user
    message), the earlier turns, and how to answer. video_options: a `VideoOptions` with a video."""

    prompt: str
    images: tuple[Part, ...] = ()
    video: Part | None = None
    video_options: Any = None
    history: tuple[tuple[str, str], ...] = ()  # earlier (question, answer) turns
    model: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    psa: bool | None = None  # None: as the server runs
    stream: bool = False
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def parts(self) -> tuple[Part, ...]:
        return self.images + ((self.video,) if self.video is not None else ())


def parse_chat(body: bytes, *, allow_local_files: bool, max_download_mb: float) -> ChatRequest:
    """A request body as a `ChatRequest`; anything malformed or unsupported is an `ApiError` (400)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    _check_fields(data)
    prompt, images, video, history = _turns(data.get("messages"), allow_local_files)
    fields = {name: _typed(data, name, kind) for name, kind in VIDEO_FIELDS.items() if name in data}
    if fields and video is None:
        raise ApiError(
            400, f"{', '.join(sorted(fields))}: frame options need a video in the message", code="invalid_option"
        )
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "model must be a string", code="invalid_option", param="model")
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    settings = dict(
        max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else _typed(data, _max_tokens_name(data), int),
        temperature=_typed(data, "temperature", float, 0.0),
        top_p=_typed(data, "top_p", float),
        seed=_typed(data, "seed", int),
    )
    try:
        from qvl.runner import Settings

        Settings(**settings)  # the command line's checks and messages
        video_options = None
        if video is not None:
            from qvl.options import video_options as build_video_options

            for name in ("frames", "max_frames"):
                if fields.get(name, 0) > _most_frames():
                    raise OptionError(f"--{name.replace('_', '-')} takes at most {_most_frames()} frames here")
            video_options = build_video_options(**fields, max_download_mb=max_download_mb)
    except QvlError as exc:
        raise api_error(exc) from None
    stream = _typed(data, "stream", bool, False)
    return ChatRequest(
        prompt=prompt,
        images=images,
        video=video,
        video_options=video_options,
        history=history,
        model=model,
        psa=_typed(data, "psa", bool),
        stream=stream,
        **settings,
    )


def _most_frames() -> int:
    from qvl.media.video import MAX_FRAMES

    return MAX_FRAMES


def _max_tokens_name(data: dict) -> str:
    return "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"


def _check_fields(data: dict) -> None:
    known = SAMPLING_FIELDS | STREAM_FIELDS | IGNORED_FIELDS | set(VIDEO_FIELDS) | {"psa"}
    for name, value in data.items():
        if name in NEUTRAL_FIELDS:
            if value is not None and value != NEUTRAL_FIELDS[name]:
                message = f"{name}={json.dumps(value)} is not supported by qvl serve"
                raise ApiError(400, message, code="invalid_option", param=name)
        elif name not in known:
            raise ApiError(400, f"unknown or unsupported field {name!r}", code="invalid_option", param=name)
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", code="invalid_option", param="stream_options")


def _typed(data: dict, name: str, kind: type, default: Any = None) -> Any:
    """data[name] checked to be a `kind` (an int is a float too; a bool is neither), or `default`."""
    value = data.get(name)
    if value is None:
        return default
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
        raise ApiError(400, f"{name} must be {names[kind]}, not {json.dumps(value)}", code="invalid_option", param=name)
    return value


def _turns(messages: Any, allow_local_files: bool) -> tuple[str, tuple[Part, ...], Part | None, tuple]:
    """The question, images, video and earlier (question, answer) turns of a conversation: user and
    assistant messages in turn, ending with the user's; the media in the first user message."""
    if not isinstance(messages, list) or not messages:
        raise _bad_messages("messages must be a non-empty list")
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    if "system" in roles or "developer" in roles:
        raise _bad_messages("system messages are not supported: the model's own system turn is used")
    if any(role != ("user", "assistant")[i % 2] for i, role in enumerate(roles)) or roles[-1] != "user":
        raise _bad_messages("messages must be user and assistant messages in turn, starting and ending with the user's")
    turns = [_content(m.get("content"), allow_local_files) for m in messages]
    if any(parts for _, parts in turns[1:]):
        raise _bad_messages("images and videos go in the first user message only")
    texts = [text for text, _ in turns]
    if not all(texts[::2]):
        raise _bad_messages("a user message has no text: ask a question")
    parts = turns[0][1]
    images = tuple(p for p in parts if p.kind == "image")
    videos = [p for p in parts if p.kind == "video"]
    if len(videos) > 1:
        raise _bad_messages("one video per request")
    if len(images) > MAX_IMAGES:
        raise _bad_messages(f"at most {MAX_IMAGES} images per request")
    history = tuple(zip(texts[:-1:2], texts[1::2]))
    return texts[-1], images, videos[0] if videos else None, history


def _bad_messages(message: str) -> ApiError:
    """messages that qvl cannot answer as they are (their shape, roles, parts or media count)."""
    return ApiError(400, message, code="invalid_messages", param="messages")


def _content(content: Any, allow_local_files: bool) -> tuple[str, list[Part]]:
    """A message's text (its text parts joined) and its media parts."""
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _bad_messages("a message's content must be a string or a list of parts")
    texts: list[str] = []
    media: list[Part] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "video_url"):
            media.append(_checked(Part(kind.removesuffix("_url"), _part_url(part, kind)), allow_local_files))
        else:
            raise _bad_messages(
                f"unsupported content part {json.dumps(part)[:80]}: use text, image_url or video_url parts"
            )
    return "\n".join(texts).strip(), media


def _part_url(part: dict, kind: str) -> str:
    value = part.get(kind)
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise _bad_messages(f'a {kind} part needs {{"{kind}": {{"url": "..."}}}}')
    return url


def _checked(part: Part, allow_local_files: bool) -> Part:
    """An http(s) URL or data URI as it is; a path (or file:// URL) only where the server allows it."""
    if part.is_data or part.is_remote:
        return part
    if "://" in part.url and not part.url.startswith("file://"):
        raise _bad_messages(f"{part.url}: only http(s) URLs, data URIs and (if allowed) local paths")
    if not allow_local_files:
        raise ApiError(
            400,
            f"{part.url}: local files are refused; send the bytes as a data URI, a URL, or start the server "
            "with --allow-local-files",
            code="local_files_refused",
            param="messages",
        )
    path = unquote(urlsplit(part.url).path) if part.url.startswith("file://") else part.url
    return Part(part.kind, path)


# --- answers -----------------------------------------------------------------------------------


@dataclass
class Answer:
    """What the worker hands back for one request: the text, token counts, and qvl's extension
    object (timings, the media record, the session, psa statistics)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"
    cached_tokens: int = 0  # prompt tokens a kept session had already prefilled
    qvl: dict[str, Any] = field(default_factory=dict)

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


def completion(request: ChatRequest, model: str, answer: Answer) -> dict[str, Any]:
    """The `chat.completion` object of a non-streamed answer."""
    return {
        "id": request.id,
        "object": "chat.completion",
        "created": request.created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": answer.usage(),
        "qvl": answer.qvl,
    }


def chunk(request: ChatRequest, model: str, delta: dict, finish_reason: str | None = None, **extra) -> dict:
    """One `chat.completion.chunk` of a streamed answer."""
    return {
        "id": request.id,
        "object": "chat.completion.chunk",
        "created": request.created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        **extra,
    }


def event(obj: dict | str) -> bytes:
    """One server-sent event carrying a JSON object (or the closing `[DONE]`)."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()
