"""`qvl serve`: the command that loads one model and serves it until Ctrl-C or SIGTERM (registered in
qvl.cli).

Nothing heavy at import: Starlette, uvicorn and the engine are imported when the command runs.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Annotated, Optional

import typer

from qvl import output
from qvl.errors import OptionError, QvlError, counted
from qvl.options import (
    CacheDirOpt,
    DeviceOpt,
    DtypeOpt,
    MaxDownloadOpt,
    ModelOpt,
    NoCacheOpt,
    PsaConfigOpt,
    PsaMinTokensOpt,
    PsaOpt,
    PsaPresetOpt,
    QuietOpt,
    StrictHashOpt,
    fail,
    psa_config,
    run_settings,
)

HostOpt = Annotated[
    str, typer.Option("--host", help="Address to listen on; anything but loopback is warned about without --api-key.")
]
PortOpt = Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free port).")]
ApiKeyOpt = Annotated[
    Optional[str],
    typer.Option("--api-key", envvar="QVL_API_KEY", help="Every request must carry `Authorization: Bearer KEY`."),
]
AllowLocalFilesOpt = Annotated[
    bool,
    typer.Option("--allow-local-files", help="Let requests name videos and images by a path on this machine."),
]
QueueOpt = Annotated[int, typer.Option("--queue", min=1, help="Requests that may wait for the model; more get 503.")]
SessionsOpt = Annotated[
    int, typer.Option("--sessions", min=0, help="Media prefixes kept prefilled between requests (0: none).")
]
SessionMemoryOpt = Annotated[
    int, typer.Option("--session-memory-mb", min=0, help="Most memory the kept media prefixes may hold, in MB.")
]
MaxBodyOpt = Annotated[
    int, typer.Option("--max-body-mb", min=1, help="Largest request body (uploaded images and videos included), MB.")
]

SERVE_EXTRA_HINT = "qvl serve needs Starlette and uvicorn: pip install 'qvl[serve]'"


def serve(
    model: ModelOpt = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    api_key: ApiKeyOpt = None,
    allow_local_files: AllowLocalFilesOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    psa: PsaOpt = False,
    psa_preset: PsaPresetOpt = None,
    psa_config_file: PsaConfigOpt = None,
    min_tokens: PsaMinTokensOpt = None,
    queue: QueueOpt = 64,
    sessions: SessionsOpt = 4,
    session_memory_mb: SessionMemoryOpt = 8192,
    max_body_mb: MaxBodyOpt = 256,
    max_download_mb: MaxDownloadOpt = 2048,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    strict_hash: StrictHashOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Serve one model, loaded once, behind an OpenAI-compatible API until Ctrl-C.

    POST /v1/chat/completions (text, image_url and video_url parts; stream, max_tokens, temperature,
    top_p, seed; qvl's frames, fps, start, end, psa as extra fields), GET /v1/models, GET /health.
    Requests wait in a queue and run one at a time; a video's prefill is kept for the next question
    about it. See docs/serve.md.
    """
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        fail(OptionError(SERVE_EXTRA_HINT))
    from qvl.runner import Runner, frame_cache

    attention = psa_config(psa, psa_preset, psa_config_file, min_tokens=min_tokens)
    settings = run_settings(model, device, dtype, attention)
    if not max_download_mb > 0:
        fail(OptionError(f"--max-download-mb must be positive (got {max_download_mb})"))
    # An empty variable (a secret that did not resolve) reaches here as no key: it must not open
    # the server to anyone.
    empty_variable = api_key is None and os.environ.get("QVL_API_KEY") is not None
    if empty_variable or (api_key is not None and not api_key.strip()):
        fail(OptionError("--api-key (or QVL_API_KEY) is empty: give a key, or unset QVL_API_KEY to serve without one"))
    cache = frame_cache(cache_dir, strict_hash=strict_hash, enabled=not no_cache)
    if cache is not None:
        try:  # as `qvl video` and `qvl batch` refuse it: before the model loads, not at the first video
            cache.check_writable()
        except QvlError as exc:
            fail(exc)
    sock = _listen(host, port)  # a taken port is one line before the model loads
    runner = Runner(settings, output.RunView(json_output=False, quiet=quiet))
    try:
        engine = runner.engine()
    except QvlError as exc:
        sock.close()
        fail(exc)
    from qvl.serve.app import ServeConfig, build

    config = ServeConfig(api_key, allow_local_files, max_body_mb, max_download_mb, queue, sessions, session_memory_mb)
    worker, server = build(engine, config, cache, quiet=quiet)
    address = url_of(sock)
    if not _is_loopback(sock) and api_key is None:
        output.warn(f"listening on {address} without --api-key: anyone who can reach it can use the model")
    # Said even when quiet: with --port 0 it is the only place the port is told.
    output.note(f"serving {engine.name} on {address}/v1 (Ctrl-C stops after the requests in flight)")
    worker.start()
    with _signals_stop(server, lambda: worker.waiting + int(worker.busy)):
        try:
            server.run(sockets=[sock])
        finally:
            worker.stop()
            failed = f", {worker.failed} failed" if worker.failed else ""
            output.note(f"stopped: {counted(worker.answered, 'request')} answered{failed}", quiet=quiet)


@contextmanager
def _signals_stop(server, in_flight):
    """SIGINT and SIGTERM stop the server as it means to be stopped, and the exit is 0 (as uvicorn's
    own command's): uvicorn drains the requests in flight (`in_flight()` of them) on either. A
    second Ctrl-C stops at once, exit 130, with one line saying what was dropped: uvicorn's own
    forced exit would cancel the requests mid-answer and log each one's traceback."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread has signals
        yield
        return

    def stop(signum, frame) -> None:  # uvicorn runs this while it serves (`capture_signals`), as before and after
        if server.should_exit and signum == signal.SIGINT:
            dropped = in_flight()
            what = f", dropping {counted(dropped, 'request')}" if dropped else ""
            output.warn(f"stopped at once by a second Ctrl-C{what}")
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(130)
        server.should_exit = True

    server.handle_exit = stop
    found = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in found.items():
            signal.signal(sig, handler)


def _listen(host: str, port: int):
    """A socket bound to host:port and listening; an address that cannot be had is one error line."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        fail(OptionError(f"cannot listen on {host}:{port} ({exc.strerror or exc})"))
    return sock


def url_of(sock) -> str:
    """The http:// address a listening socket answers on."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _is_loopback(sock) -> bool:
    import ipaddress

    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback
