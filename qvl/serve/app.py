"""The HTTP side of `qvl serve`: a Starlette app over one `Worker`.

    POST /v1/chat/completions   one user turn (text, image_url and video_url parts), streamed or not
    GET  /v1/models             the one model served
    GET  /health                the queue, the kept sessions and the counters

Every error is OpenAI's error object with a 4xx or 5xx status, and the server goes on. The event
loop never blocks: bodies are read as they come (and refused past the limit), parsed and staged in
the thread pool, and answered by the worker's thread.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from qvl.errors import QvlError, counted
from qvl.serve import protocol
from qvl.serve.media import stage
from qvl.serve.protocol import ApiError
from qvl.serve.worker import Job, QueueFull, Worker

DRAIN_BYTES = 64_000_000  # read and dropped past the body limit so the client hears the 413


@dataclass(frozen=True)
class ServeConfig:
    """What a server enforces and keeps. api_key: None serves everyone who can connect; queue:
    requests that may wait; sessions, session_memory_mb: the media prefixes kept prefilled."""

    api_key: str | None = None
    allow_local_files: bool = False
    max_body_mb: float = 256.0
    max_download_mb: float = 2048.0
    queue: int = 64
    sessions: int = 4
    session_memory_mb: float = 8192.0


def build(engine, config: ServeConfig, frame_cache=None, *, quiet: bool = False):
    """(worker, server) for `engine`: start the worker, then `server.run(sockets=[sock])` serves
    until Ctrl-C (or SIGTERM; `server.should_exit = True` from another thread), after which it
    stops taking connections, waits for the requests in flight and returns; then stop the worker."""
    from qvl.serve.sessions import SessionCache

    sessions = SessionCache(config.sessions, int(config.session_memory_mb * 1_000_000))
    worker = Worker(engine, queue_size=config.queue, sessions=sessions, frame_cache=frame_cache)
    return worker, make_server(create_app(worker, config), quiet=quiet)


def create_app(worker: Worker, config: ServeConfig) -> Starlette:
    """The app over `worker`, which the caller starts and stops (see `build`)."""
    engine = worker.engine
    names = _model_names(engine)
    started = int(time.time())

    def guarded(handler):
        async def checked(request: Request):
            if config.api_key is not None and not _key_matches(request, config.api_key):
                return _error(
                    ApiError(401, "a valid API key is needed: Authorization: Bearer KEY", code="invalid_api_key")
                )
            try:
                return await handler(request)
            except ApiError as exc:
                return _error(exc)

        return checked

    async def chat(request: Request):
        body = await _read_body(request, int(config.max_body_mb * 1_000_000))
        chat_request, staged = await run_in_threadpool(_parse_and_stage, body, config, engine.psa is not None)
        if chat_request.model is not None and chat_request.model not in names:
            staged.close()
            raise ApiError(
                404,
                f"this server serves {engine.name}, not {chat_request.model}",
                code="model_not_found",
                param="model",
            )
        job = Job(chat_request, staged)
        try:
            worker.submit(job)
        except QueueFull:
            staged.close()
            raise ApiError(
                503,
                f"the queue is full ({counted(worker.queue_size, 'request')} waiting); try again",
                code="overloaded",
            ) from None
        streaming = False
        try:
            while True:
                kind, value = await _next_event(job, request)
                if kind == "gone":
                    return Response(status_code=499)  # nobody is listening: the request is dropped
                if kind == "error":  # before any text: the status says it, streamed or not
                    return _error(value)
                if chat_request.stream:  # the first text (or the answer): the stream starts with it
                    streaming = True
                    return StreamingResponse(_stream(job, engine.name, (kind, value)), media_type="text/event-stream")
                if kind == "done":
                    return JSONResponse(protocol.completion(chat_request, engine.name, value))
        finally:
            if not streaming:
                job.cancel()  # a no-op once answered; drops the request if the client went away

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [_model_card(engine, started)]})

    async def health(request: Request):
        return JSONResponse(_health(worker, config))

    async def http_error(request: Request, exc: HTTPException):
        return _error(ApiError(exc.status_code, exc.detail or "error", code="http_error"))

    async def internal_error(request: Request, exc: Exception):
        return _error(ApiError(500, f"internal error: {type(exc).__name__}", code="internal_error"))

    return Starlette(
        routes=[
            Route("/v1/chat/completions", guarded(chat), methods=["POST"]),
            Route("/v1/models", guarded(models), methods=["GET"]),
            Route("/health", guarded(health), methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )


def _model_names(engine) -> set[str]:
    """What a request's `model` may say: the engine's name, its repo id and preset name."""
    resolved = engine.resolved
    names = {engine.name, resolved.repo_id, resolved.name}
    if resolved.repo_id:
        from qvl.models import preset_for

        names.add(preset_for(resolved.repo_id))
    names.discard(None)
    return names


def _health(worker: Worker, config: ServeConfig) -> dict:
    engine = worker.engine
    return {
        "status": "ok",
        "model": engine.name,
        "device": engine.device,
        "busy": worker.busy,
        "queue": {"waiting": worker.waiting, "size": worker.queue_size},
        "sessions": worker.sessions.to_dict(),
        "answered": worker.answered,
        "failed": worker.failed,
        "allow_local_files": config.allow_local_files,
        "max_body_mb": config.max_body_mb,
    }


def _parse_and_stage(body: bytes, config: ServeConfig, psa: bool):
    chat_request = protocol.parse_chat(
        body, allow_local_files=config.allow_local_files, max_download_mb=config.max_download_mb
    )
    try:
        return chat_request, stage(chat_request, psa=psa and chat_request.psa is not False)
    except QvlError as exc:
        raise protocol.api_error(exc) from None


async def _stream(job: Job, model: str, first: tuple):
    """The answer as server-sent events from its `first` event on: a role chunk, text chunks, a
    last chunk with the finish reason, usage and qvl's object (or an error object, for an error
    met after the first text), then [DONE]."""
    request = job.request
    try:
        yield protocol.event(protocol.chunk(request, model, {"role": "assistant", "content": ""}))
        kind, value = first
        while True:
            if kind == "text":
                yield protocol.event(protocol.chunk(request, model, {"content": value}))
            elif kind == "done":
                last = protocol.chunk(request, model, {}, value.finish_reason, usage=value.usage(), qvl=value.qvl)
                yield protocol.event(last)
                break
            else:
                yield protocol.event(value.body())
                break
            kind, value = await job.events.get()
        yield protocol.event("[DONE]")
    finally:
        job.cancel()


async def _next_event(job: Job, request: Request, every_s: float = 1.0):
    """The job's next event, or ("gone", None) once the client has gone away."""
    getting = asyncio.ensure_future(job.events.get())
    try:
        while not (await asyncio.wait({getting}, timeout=every_s))[0]:
            if await request.is_disconnected():
                return "gone", None
        return getting.result()
    finally:
        getting.cancel()  # only when it has not finished: no event is lost


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 once it is over `limit` bytes. What is sent past the limit is read and
    dropped (up to DRAIN_BYTES more) before answering: a client still sending when the server
    closes would see a broken connection instead of the 413."""
    chunks, size = [], 0
    length = request.headers.get("content-length", "")
    over = length.isdigit() and int(length) > limit
    async for piece in request.stream():
        size += len(piece)
        over = over or size > limit
        if over and size > limit + DRAIN_BYTES:
            break
        if not over:
            chunks.append(piece)
    if over:
        raise ApiError(413, f"the request body is over the limit of {limit / 1e6:g} MB", code="body_too_large")
    return b"".join(chunks)


def _key_matches(request: Request, key: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _model_card(engine, created: int) -> dict[str, Any]:
    return {
        "id": engine.name,
        "object": "model",
        "created": created,
        "owned_by": "qvl",
        "qvl": {
            "device": engine.device,
            "dtype": str(engine.dtype).removeprefix("torch."),
            "load_s": round(engine.load_s, 3),
            "tiny": engine.is_tiny,
            "random_weights": engine.random_weights,
            "psa": engine.psa.preset_name if engine.psa is not None else None,
        },
    }


def make_server(app: Starlette, *, quiet: bool):
    """A uvicorn server for `app`, its logs on stderr."""
    import uvicorn

    config = uvicorn.Config(app, log_config=log_config(quiet), access_log=not quiet, timeout_keep_alive=5)
    return uvicorn.Server(config)


def log_config(quiet: bool) -> dict[str, Any]:
    """uvicorn's logging, all of it on stderr (stdout carries data only)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for handler in config["handlers"].values():
        handler["stream"] = "ext://sys.stderr"
    for logger in config["loggers"].values():
        logger["level"] = "WARNING" if quiet else "INFO"
    return config
