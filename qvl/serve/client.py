"""`--server URL` (or `$QVL_SERVER`): `qvl describe` and `qvl video` answered by a running `qvl
serve` instead of a model loaded here, with the same output and JSON. Standard library only.

How media travel: every local file is sent as a data URI of its bytes, so the client works with a
server on any machine and the server needs no `--allow-local-files`. It is checked here first as a
local run would (an image is opened, a video probed and planned), so a bad file gets the same one
error line and the same plan notes without a request. URLs and data URIs are passed on for the
server to fetch. The server finds an uploaded video's kept session by the SHA-256 of its bytes, so
a second question about it skips the frames and the prefill (the upload itself is paid each time).
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import mimetypes
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from qvl.errors import InputError, ModelError, OptionError, QvlError
from qvl.runner import Media, Runner

# --- HTTP --------------------------------------------------------------------------------------


class Client:
    """A `qvl serve` at `url` (http(s)://host:port, with or without /v1); api_key: sent as a bearer
    token (default $QVL_API_KEY)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float | None = None):
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OptionError(f"--server must be an http(s) URL like http://127.0.0.1:8000, not {url!r}")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.root = parts.path.rstrip("/").removesuffix("/v1")
        self.api_key = api_key if api_key is not None else os.environ.get("QVL_API_KEY") or None
        self.timeout = timeout
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port

    def get(self, path: str) -> dict[str, Any]:
        with self._open("GET", path) as response:
            return json.loads(response.read())

    def chat(self, body: dict[str, Any], on_text: Callable[[str], None] | None = None) -> dict[str, Any]:
        """POST /v1/chat/completions; with `on_text` the answer streams into it. Returns
        {"text", "finish_reason", "usage", "qvl"}."""
        body = {**body, "stream": on_text is not None}
        with self._open("POST", "/v1/chat/completions", json.dumps(body).encode()) as response:
            if on_text is None:
                reply = json.loads(response.read())
                choice = reply["choices"][0]
                return {
                    "text": choice["message"]["content"],
                    "finish_reason": choice["finish_reason"],
                    "usage": reply.get("usage"),
                    "qvl": reply.get("qvl", {}),
                }
            return self._read_stream(response, on_text)

    def _read_stream(self, response, on_text: Callable[[str], None]) -> dict[str, Any]:
        pieces: list[str] = []
        last: dict[str, Any] = {}
        for line in response:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            event = json.loads(data)
            if "error" in event:  # after the stream began: its code says whose fault it is
                raise self._error(None, event)
            choice = event["choices"][0]
            piece = choice["delta"].get("content")
            if piece:
                pieces.append(piece)
                on_text(piece)
            if choice.get("finish_reason") is not None:
                last = event
        if not last:
            raise QvlError(f"the server at {self.url} ended the answer early")
        return {
            "text": "".join(pieces),
            "finish_reason": last["choices"][0]["finish_reason"],
            "usage": last.get("usage"),
            "qvl": last.get("qvl", {}),
        }

    def _open(self, method: str, path: str, body: bytes | None = None):
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = kind(self._host, self._port, timeout=self.timeout)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            connection.request(method, self.root + path, body=body, headers=headers)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise ModelError(f"cannot reach the qvl server at {self.url} ({reason})") from None
        if response.status >= 400:
            try:
                error = json.loads(response.read())
            except ValueError:
                error = {}
            connection.close()
            raise self._error(response.status, error)
        return _Closing(response, connection)

    def _error(self, status: int | None, body: dict) -> QvlError:
        """A server's error object as the error a local run would raise."""
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        if not error.get("message"):  # not an OpenAI-shaped error: not a qvl server answering
            return ModelError(f"{self.url} answered HTTP {status} without an error qvl sends: is it a qvl server?")
        message, code = error["message"], error.get("code")
        if status == 401 and self.api_key:
            return ModelError(f"the qvl server at {self.url} refused the API key given (QVL_API_KEY): {message}")
        if status == 401:
            return ModelError(f"the qvl server at {self.url} wants an API key: set QVL_API_KEY ({message})")
        if code == "invalid_option":
            return OptionError(message)
        if code == "model_not_found" or code == "model_error":
            return ModelError(message)
        if code in ("invalid_input", "invalid_messages") or (status is not None and status < 500):
            return InputError(message)  # the request's, worded as a local run words it
        return QvlError(f"the qvl server at {self.url} failed: {message}")


class _Closing:
    """A response that closes its connection when done with."""

    def __init__(self, response, connection):
        self.response, self.connection = response, connection

    def __enter__(self):
        return self.response

    def __exit__(self, *exc) -> None:
        self.connection.close()


# --- a Runner whose engine is the server ----------------------------------------------------------


@dataclass(frozen=True)
class RemoteImage:
    url: str  # an http(s) URL or a data URI


@dataclass(frozen=True)
class RemoteVideo:
    url: str  # an http(s) URL or a data URI
    options: dict[str, Any]  # the frame options, as the request's extra fields
    record: dict[str, Any] = field(default_factory=dict, compare=False)  # filled in from the answer


class RemoteModel:
    """What a `Runner` needs of an engine, answered by the server: its name, where it runs, and
    `generate`. Every question is a request of its own; the server keeps the media prefilled."""

    fast_path_problem = "answers come from a qvl server"

    def __init__(self, client: Client, card: dict[str, Any], psa: bool):
        about = card.get("qvl", {})
        self.client, self.psa, self.server = client, psa, client.url
        self.name, self.device = card["id"], about.get("device", "?")
        self.load_s = float(about.get("load_s", 0.0))
        self.is_tiny = bool(about.get("tiny", False))
        self.random_weights = bool(about.get("random_weights", False))

    def generate(self, request, on_text: Callable[[str], None] | None = None, inputs=None):
        """`Engine.generate` through the server. inputs: always None here (`Runner.prepare`, which
        makes them ahead, runs only with a local engine): the server runs the processor."""
        from qvl.engine import Result, Timings

        if inputs is not None:
            raise ValueError("a server runs the processor itself: prepared inputs cannot be sent")

        reply = self.client.chat(self.body(request), on_text)
        extra = reply["qvl"]
        if isinstance(request.video, RemoteVideo):  # a file planned here has its notes as a local run words them
            kept = request.video.record
            kept.update({k: v for k, v in (extra.get("media") or {}).items() if k != "notes" or k not in kept})
        timings = Timings(
            **{k: v for k, v in (extra.get("timings") or {}).items() if k in Timings.__dataclass_fields__}
        )
        usage = reply["usage"] or {}
        return Result(
            text=reply["text"],
            prompt_tokens=usage.get("prompt_tokens", 0),
            generated_tokens=usage.get("completion_tokens", 0),
            timings=timings,
            psa=extra.get("psa"),
        )

    def body(self, request) -> dict[str, Any]:
        """The chat-completions body of a `Request` whose media are `RemoteImage`s and a `RemoteVideo`."""
        content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": i.url}} for i in request.images]
        if request.video is not None:
            content.append({"type": "video_url", "video_url": {"url": request.video.url}})
        messages: list[dict[str, Any]] = []
        for question, answer in request.history:
            messages.append({"role": "user", "content": [*(content if not messages else []), _text(question)]})
            messages.append({"role": "assistant", "content": answer})
        messages.append({"role": "user", "content": [*(content if not messages else []), _text(request.prompt)]})
        body: dict[str, Any] = {
            "model": self.name,
            "messages": messages,
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "psa": self.psa,
        }
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.seed is not None:
            body["seed"] = request.seed
        if request.video is not None:
            body.update(request.video.options)
        return body


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


class RemoteRunner(Runner):
    """A `Runner` whose engine is a `qvl serve`: the same records, views and exit codes.

    `open_image` and `video_loader` give the media as the server takes it (see the module's notes).
    """

    def __init__(self, settings, view, client: Client, *, quiet: bool = False):
        super().__init__(settings, view)
        self.client, self.quiet = client, quiet
        self._limit_mb: float | None = None

    @staticmethod
    def _session(engine, media: Media, **options):
        """None: the server keeps the media prefilled, each question or turn is a request."""
        return None

    def engine(self):
        """The server's model (checked against --model once); a `ModelError` if it cannot be used."""
        if self._engine is None:
            cards = self.client.get("/v1/models").get("data") or []
            wanted = self.settings.model
            card = next((c for c in cards if wanted is None or c.get("id") == wanted), None)
            if card is None:
                served = ", ".join(c.get("id", "?") for c in cards) or "no model"
                raise ModelError(f"the qvl server at {self.client.url} serves {served}, not {wanted}")
            self._engine = RemoteModel(self.client, card, psa=self.settings.psa is not None)
            self.view.loaded(self._engine)
        return self._engine

    def open_image(self, source: str) -> RemoteImage:
        """An image for the server: a URL or data URI as it is, a local file checked as a local run
        checks it and sent as a data URI."""
        if source.startswith(("http://", "https://", "data:")):
            return RemoteImage(source)
        from qvl.media.images import open_image

        open_image(source)  # the same error line as a local run, before any request
        return RemoteImage(self._data_uri(source, "image/png"))

    def video_loader(self, options) -> Callable[[str], Media]:
        """source -> `Media` of a `RemoteVideo`: a local file probed and planned here (its errors
        and plan notes as a local run's), then sent as a data URI."""
        fields = {k: v for k, v in options.to_dict().items() if v is not None and k != "max_download_mb"}

        def load(source: str) -> Media:
            if source.startswith(("http://", "https://", "data:")):
                video = RemoteVideo(source, fields)
                return Media(video=video, record=video.record)
            from qvl import output
            from qvl.media.video import plan_source

            plan = plan_source(source, options)
            output.plan_notes(source, plan.notes, quiet=self.quiet)
            video = RemoteVideo(self._data_uri(source, "video/mp4"), fields)
            video.record["notes"] = list(plan.notes)
            return Media(video=video, record=video.record, notes=plan.notes)

        return load

    def media_loader(self, images: list[str], video: str | None, options) -> Callable[[], Media]:
        """() -> `Media` of `images` and `video` (or None) as the server takes them (`qvl chat`)."""
        load_video = self.video_loader(options)

        def load() -> Media:
            opened = [self.open_image(source) for source in images]
            if video is None:
                return Media(images=opened)
            return dataclasses.replace(load_video(video), images=opened)

        return load

    def _data_uri(self, path: str, fallback_type: str) -> str:
        size = Path(path).stat().st_size
        limit = self._body_limit_mb()
        if limit is not None and size * 4 / 3 > limit * 1_000_000:
            raise InputError(
                f"{path}: {size / 1e6:.1f} MB is over the server's body limit of {limit:g} MB once encoded "
                "(raise its --max-body-mb)"
            )
        kind = mimetypes.guess_type(path)[0] or fallback_type
        return f"data:{kind};base64,{base64.b64encode(Path(path).read_bytes()).decode()}"

    def _body_limit_mb(self) -> float | None:
        if self._limit_mb is None:
            self._limit_mb = float(self.client.get("/health").get("max_body_mb") or 0) or None
        return self._limit_mb


def remote_runner(server: str, settings, view, *, quiet: bool, local_only: dict[str, Any]) -> RemoteRunner:
    """The runner for `--server`. local_only: {flag: its value} of options only a local run can
    honour; any given (neither None nor False) is one error line and exit 2, as are --device and
    --dtype."""
    from qvl.options import fail

    try:
        given = [flag for flag, value in local_only.items() if value not in (None, False)]
        given += [
            flag for flag, value in (("--device", settings.device), ("--dtype", settings.dtype)) if value != "auto"
        ]
        if given:
            raise OptionError(f"{', '.join(given)}: the server decides these; leave them out with --server")
        return RemoteRunner(settings, view, Client(server), quiet=quiet)
    except QvlError as exc:
        fail(exc)
