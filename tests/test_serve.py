"""`qvl serve` on the tiny model: a real uvicorn server on a free port (in a thread, the model loaded
once), talked to with the official `openai` client, with plain HTTP and through `--server`; and
`qvl serve` itself as a subprocess, stopped with Ctrl-C while it answers."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from cli_helpers import assert_one_error, error_lines, invoke, json_lines, make_video_or_skip
from fs_helpers import unwritable_dir
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

KEY = "test-key"
TOKENS = 12


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """The base URL of a server on the tiny model, with an API key and a 1 MB body limit."""
    from qvl.engine import Engine
    from qvl.serve.app import ServeConfig, build

    engine = Engine("tiny", device="cpu")
    worker, uvicorn_server = build(engine, ServeConfig(api_key=KEY, max_body_mb=1, queue=16), quiet=True)
    sock = socket.create_server(("127.0.0.1", 0))
    worker.start()
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = "http://127.0.0.1:%d" % sock.getsockname()[1]
    _wait_until_up(url)
    yield url
    uvicorn_server.should_exit = True
    thread.join(timeout=30)
    worker.stop()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    image = folder / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(image)
    return {"image": image, "video": make_video_or_skip(folder / "clip.mp4", seconds=4), "folder": folder}


def _wait_until_up(url: str) -> None:
    for _ in range(200):
        try:
            _http("GET", url + "/health")
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the server did not start")


def _http(method: str, url: str, body: bytes | None = None, key: str | None = KEY) -> tuple[int, dict]:
    """(status, JSON body) of a plain HTTP request."""
    request = urllib.request.Request(url, data=body, method=method)
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _post(url: str, body: dict | bytes, key: str | None = KEY) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return _http("POST", url + "/v1/chat/completions", data, key)


def _client(url: str):
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)


def _data_uri(path, kind: str) -> str:
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def _user(text: str, *parts: dict) -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def _image_part(path) -> dict:
    return {"type": "image_url", "image_url": {"url": _data_uri(path, "image/png")}}


def _video_part(path) -> dict:
    return {"type": "video_url", "video_url": {"url": _data_uri(path, "video/mp4")}}


def _local(*args) -> dict:
    """The one JSON row of a local `qvl ARGS --json` on the tiny model."""
    result = invoke(*args, "--model", "tiny", "--max-tokens", TOKENS, "--json", "-q")
    assert result.exit_code == 0, result.stderr
    [row] = json_lines(result.stdout)
    return row


def _without_timings(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "timings"}


# --- the API --------------------------------------------------------------------------------------


def test_models_and_health_need_the_key(server):
    status, models = _http("GET", server + "/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == ["tiny"]
    status, health = _http("GET", server + "/health")
    assert status == 200 and health["status"] == "ok" and health["queue"]["size"] == 16
    for key in (None, "wrong"):
        status, body = _http("GET", server + "/v1/models", key=key)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"


def test_an_image_answer_equals_qvl_describe(server, media):
    reply = _client(server).chat.completions.create(
        model="tiny", messages=_user("Describe this image.", _image_part(media["image"])), max_tokens=TOKENS
    )
    local = _local("describe", media["image"])
    assert reply.choices[0].message.content == local["text"]
    assert reply.usage.prompt_tokens == local["tokens"]["prompt"]
    assert reply.usage.completion_tokens == local["tokens"]["generated"]


def test_streamed_chunks_join_to_the_same_text(server, media):
    client = _client(server)
    messages = _user("What colours are there?", _image_part(media["image"]))
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=TOKENS)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=TOKENS, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_second_question_about_a_video_reuses_its_session(server, media):
    client = _client(server)
    video = _video_part(media["video"])
    first = client.chat.completions.create(
        model="tiny", messages=_user("What happens?", video), max_tokens=TOKENS, extra_body={"frames": 4}
    )
    before = _http("GET", server + "/health")[1]["sessions"]
    second = client.chat.completions.create(
        model="tiny", messages=_user("Who is there?", video), max_tokens=TOKENS, extra_body={"frames": 4}
    )
    after = _http("GET", server + "/health")[1]["sessions"]
    assert second.model_extra["qvl"]["session"] == "hit" and after["hits"] == before["hits"] + 1
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached == second.model_extra["qvl"]["cached_prefix_tokens"] > 280  # the video's tokens and more
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    for reply, question in ((first, "What happens?"), (second, "Who is there?")):
        local = _local("video", media["video"], "--frames", "4", "-p", question)
        assert reply.choices[0].message.content == local["text"]
        assert reply.usage.prompt_tokens == local["tokens"]["prompt"]
        media_record = reply.model_extra["qvl"]["media"]
        assert {k: media_record[k] for k in ("frames", "timestamps", "frame_size")} == {
            k: local[k] for k in ("frames", "timestamps", "frame_size")
        }
        assert media_record["notes"] == []


def test_what_the_frame_plan_changed_is_in_the_answer(server, media):
    """An odd `frames` rounds up as on the command line, and the answer says so: an API client
    has no terminal for the note."""
    reply = _client(server).chat.completions.create(
        model="tiny",
        messages=_user("What happens?", _video_part(media["video"])),
        max_tokens=2,
        extra_body={"frames": 5},
    )
    record = reply.model_extra["qvl"]["media"]
    assert record["frames"] == 6 and record["notes"] == ["frames 5 rounded up to 6 (frames come in pairs)"]


def test_eight_concurrent_requests_are_all_answered(server, media):
    questions = [f"Question number {i}?" for i in range(8)]
    image = _image_part(media["image"])

    def ask(question):
        return _post(server, {"model": "tiny", "messages": _user(question, image), "max_tokens": 6})

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, questions))
    assert [status for status, _ in replies] == [200] * 8
    # Each answer is the one that question gets alone: nothing leaked between queued requests.
    for question, (_, body) in zip(questions[:2], replies[:2]):
        _, alone = ask(question)
        assert body["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    "body, status, code",
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        ({"model": "gpt-4o", "messages": _user("Hi")}, 404, "model_not_found"),
        ({"messages": _user("Hi"), "max_tokens": 0}, 400, "invalid_option"),
        ({"messages": _user("Hi"), "temperature": "hot"}, 400, "invalid_option"),
        ({"messages": _user("Hi"), "tools": []}, 400, "invalid_option"),
        ({"messages": _user("Hi"), "framez": 8}, 400, "invalid_option"),
        ({"messages": _user("Hi"), "n": 2}, 400, "invalid_option"),
        ({"messages": []}, 400, "invalid_messages"),
        ({"messages": [{"role": "system", "content": "Be brief."}, *_user("Hi")]}, 400, "invalid_messages"),
        ({"messages": [{"role": "assistant", "content": "Hello."}, *_user("Hi")]}, 400, "invalid_messages"),
        ({"messages": [*_user("Hi"), *_user("Hello?")]}, 400, "invalid_messages"),
        (
            {"messages": _user("Hi", {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}})},
            400,
            "invalid_messages",
        ),
        (
            {
                "messages": [
                    *_user("Hi"),
                    {"role": "assistant", "content": "Hello."},
                    *_user("And?", {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}),
                ]
            },
            400,
            "invalid_messages",
        ),
        (
            {"messages": _user("Hi", {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}})},
            400,
            "invalid_input",
        ),
        (
            {"messages": _user("Hi", {"type": "video_url", "video_url": {"url": "/etc/passwd"}})},
            400,
            "local_files_refused",
        ),
        ({"messages": _user("Hi"), "frames": 8}, 400, "invalid_option"),
        ({"messages": _user("Hi"), "max_tokens": 10**8}, 400, "invalid_option"),
        (b"x" * 1_500_000, 413, "body_too_large"),
    ],
    ids=[
        "bad-json",
        "not-an-object",
        "unknown-model",
        "zero-max-tokens",
        "temperature-type",
        "unsupported-field",
        "misspelt-field",
        "n-2",
        "no-messages",
        "system-message",
        "assistant-first",
        "two-user-messages",
        "audio-part",
        "media-in-a-later-turn",
        "corrupt-image",
        "local-file",
        "frames-without-video",
        "past-the-context",
        "oversized-body",
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
def test_a_bad_request_gets_its_status_and_documented_code(server, body, status, code, stream):
    """Streamed or not, a request refused before its first token gets the status and code."""
    if stream and isinstance(body, bytes):
        pytest.skip("a body that is no JSON object cannot ask for a stream")
    got, reply = _post(server, {**body, "stream": True} if stream else body)
    assert got == status, reply
    assert set(reply["error"]) == {"message", "type", "param", "code"} and reply["error"]["message"]
    assert reply["error"]["code"] == code, reply
    assert code in _documented_codes()[status]
    assert _http("GET", server + "/health")[0] == 200


def test_an_unknown_path_or_method_gets_its_documented_code(server):
    for method, path, status in (("GET", "/v1/nothing", 404), ("GET", "/v1/chat/completions", 405)):
        got, reply = _http(method, server + path)
        assert got == status and reply["error"]["code"] == "http_error", reply
        assert "http_error" in _documented_codes()[status]


def _documented_codes() -> dict[int, set[str]]:
    """{status: its codes} from the table of errors in docs/serve.md."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "serve.md").read_text()
    codes: dict[int, set[str]] = {}
    for statuses, names in re.findall(r"^\| ([0-9][0-9, ]*) \| (`[^|]*) \|", text, flags=re.M):
        for status in statuses.split(","):
            codes.setdefault(int(status), set()).update(re.findall(r"`([a-z_]+)`", names))
    return codes


def test_a_bad_field_is_named_as_the_request_names_it(server):
    got, reply = _post(server, {"messages": _user("Hi"), "max_tokens": 0})
    assert got == 400 and reply["error"]["message"].startswith("max_tokens must be a whole number, at least 1"), reply
    assert "--" not in reply["error"]["message"] and reply["error"]["param"] == "max_tokens"


def test_the_openai_client_sees_the_errors(server):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        _client(server).chat.completions.create(model="7b", messages=_user("Hi"))


def test_a_full_queue_is_refused_at_once(tiny_model_dir):
    import asyncio

    from qvl.engine import Engine
    from qvl.serve.media import Staged
    from qvl.serve.protocol import ChatRequest
    from qvl.serve.sessions import SessionCache
    from qvl.serve.worker import Job, QueueFull, Worker

    worker = Worker(Engine("tiny", device="cpu"), queue_size=2, sessions=SessionCache(0, 0))  # not started

    async def submit_three():
        jobs = [Job(ChatRequest("Hi"), Staged()) for _ in range(3)]
        worker.submit(jobs[0])
        worker.submit(jobs[1])
        with pytest.raises(QueueFull):
            worker.submit(jobs[2])

    asyncio.run(submit_three())
    assert worker.waiting == 2


def test_a_conversation_equals_qvl_chat_and_reuses_the_kept_turns(server, media):
    local = invoke("chat", media["video"], "--frames", "4", "--model", "tiny", "--max-tokens", TOKENS, "--json",
                   "-q", input="What happens?\nWhy?\n")  # fmt: skip
    assert local.exit_code == 0, local.stderr
    first, second = json_lines(local.stdout)
    client, video = _client(server), _video_part(media["video"])
    messages = _user("What happens?", video)
    one = client.chat.completions.create(model="tiny", messages=messages, max_tokens=TOKENS, extra_body={"frames": 4})
    messages += [{"role": "assistant", "content": one.choices[0].message.content}, *_user("Why?")]
    two = client.chat.completions.create(model="tiny", messages=messages, max_tokens=TOKENS, extra_body={"frames": 4})
    assert [one.choices[0].message.content, two.choices[0].message.content] == [first["text"], second["text"]]
    assert two.usage.prompt_tokens == second["tokens"]["prompt"]
    # The follow-up reused the media and the first turn's prompt from the kept session (the tiny
    # model's answer tokens rarely survive decoding and encoding again, a real model's do).
    assert two.model_extra["qvl"]["session"] == "hit"
    assert two.usage.prompt_tokens_details.cached_tokens >= one.usage.prompt_tokens


def test_chat_through_the_server_gives_the_same_rows(server, media):
    args = ("chat", media["video"], "--frames", "4", "--max-tokens", TOKENS, "--json", "-q")
    remote = invoke(*args, "--server", server, input="What happens?\nWhy?\n", env={"QVL_API_KEY": KEY})
    assert remote.exit_code == 0, remote.stderr
    local = invoke(*args, "--model", "tiny", input="What happens?\nWhy?\n")
    differ = {"timings", "from_cache", "cache", "cache_bytes"}  # the cache is the server's
    for a, b in zip(json_lines(remote.stdout), json_lines(local.stdout), strict=True):
        assert {k: v for k, v in a.items() if k not in differ} == {k: v for k, v in b.items() if k not in differ}


# --- the command line through the server ------------------------------------------------------------


def test_stats_through_the_server_show_its_vision_time(server, media):
    """A request that prefills new media through a kept session runs the vision tower on the
    server, which --stats shows as the local run shows its own (not n/a)."""
    image = media["folder"] / "stats.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(image)
    args = ("describe", image, "--max-tokens", TOKENS, "--json", "--stats", "--server", server)
    remote = invoke(*args, env={"QVL_API_KEY": KEY})
    assert remote.exit_code == 0, remote.stderr
    vision = json_lines(remote.stdout)[0]["timings"]["vision_s"]
    assert vision > 0 and f"vision {vision:.3f} s," in remote.stderr, remote.stderr


def test_describe_through_the_server_gives_the_same_row(server, media):
    env = {"QVL_SERVER": server, "QVL_API_KEY": KEY}
    remote = invoke("describe", media["image"], "--max-tokens", TOKENS, "--json", "-q", env=env)
    assert remote.exit_code == 0, remote.stderr
    assert _without_timings(json_lines(remote.stdout)[0]) == _without_timings(_local("describe", media["image"]))


def test_video_questions_through_the_server_give_the_same_rows(server, media):
    args = ("video", media["video"], "--frames", "4", "-p", "What happens?", "-p", "Is it day?", "--max-tokens", TOKENS)
    remote = invoke(*args, "--json", "-q", "--server", server, env={"QVL_API_KEY": KEY})
    assert remote.exit_code == 0, remote.stderr
    local = invoke(*args, "--model", "tiny", "--json", "-q")
    differ = {"timings", "from_cache", "cache"}  # an upload is decoded by the server, not through a cache
    for a, b in zip(json_lines(remote.stdout), json_lines(local.stdout), strict=True):
        assert {k: v for k, v in a.items() if k not in differ} == {k: v for k, v in b.items() if k not in differ}


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "json"])
def test_a_bad_question_through_the_server_is_the_local_runs_error(server, media, stream):
    """A chat's question the engine refuses (it writes the media's own token) fails in the same
    words, naming it, whether the server refuses it before or after its answer's stream began."""
    args = ("chat", media["video"], "--frames", "4", "--max-tokens", TOKENS)
    args += () if stream else ("--json",)
    remote = invoke(*args, "--server", server, input="<|video_pad|>?\n", env={"QVL_API_KEY": KEY})
    local = invoke(*args, "--model", "tiny", input="<|video_pad|>?\n")
    assert error_lines(remote.stderr) == error_lines(local.stderr) and len(error_lines(local.stderr)) == 1
    assert "the question '<|video_pad|>?' holds <|video_pad|>" in local.stderr
    assert remote.exit_code == local.exit_code == 1


@pytest.mark.parametrize("command", ["describe", "video"])
def test_streamed_text_through_the_server_prints_as_a_local_run(server, media, command):
    """The same stdout, answer for answer: both stream the answer's text, which the tiny model's
    random text would otherwise start with a space (the stream leaves out what `text` strips)."""
    source = media["image"] if command == "describe" else media["video"]
    args = (command, source, "--max-tokens", TOKENS, *(("--frames", "4") if command == "video" else ()))
    remote = invoke(*args, "-p", "What is it?", "-p", "Why?", "--server", server, env={"QVL_API_KEY": KEY})
    assert remote.exit_code == 0, remote.stderr
    local = invoke(*args, "-p", "What is it?", "-p", "Why?", "--model", "tiny")
    assert local.exit_code == 0, local.stderr
    assert remote.stdout == local.stdout
    assert f"at {server}" in remote.stderr
    answers = [
        json.loads(line)["text"]
        for line in invoke(*args, "-p", "What is it?", "--model", "tiny", "--json").stdout.splitlines()
    ]
    assert local.stdout.split("\n")[1] == answers[0]  # the text as --json records it


@pytest.mark.parametrize(
    "args, contains",
    [
        (("--model", "7b"), "serves tiny, not 7b"),
        (("--device", "cpu"), "--device"),
        (("--psa-preset", "fast", "--psa"), "--psa-preset"),
        (("--min-tokens", "64", "--psa"), "--min-tokens"),
    ],
    ids=["other-model", "device", "psa-preset", "min-tokens"],
)
def test_through_the_server_a_mismatch_is_one_line(server, media, args, contains):
    result = invoke("describe", media["image"], *args, env={"QVL_SERVER": server, "QVL_API_KEY": KEY})
    assert_one_error(result, contains=contains, exit_code=2)


def test_a_missing_or_wrong_key_or_server_is_one_line(server, media):
    result = invoke("describe", media["image"], env={"QVL_SERVER": server, "QVL_API_KEY": ""})
    assert_one_error(result, contains="wants an API key: set QVL_API_KEY", exit_code=2)
    result = invoke("describe", media["image"], env={"QVL_SERVER": server, "QVL_API_KEY": "wrong"})
    assert_one_error(result, contains="refused the API key given (QVL_API_KEY)", exit_code=2)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        nowhere = "http://127.0.0.1:%d" % free.getsockname()[1]
    result = invoke("describe", media["image"], "--server", nowhere)
    assert_one_error(result, contains="cannot reach the qvl server", exit_code=2)


def test_a_bad_local_file_fails_before_any_request(server, media):
    bad = media["folder"] / "broken.png"
    bad.write_bytes(b"not an image")
    result = invoke("describe", bad, "--server", server, env={"QVL_API_KEY": KEY})
    assert_one_error(result, contains="broken.png: not an image", exit_code=1)


# --- qvl serve itself -------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_qvl_serve_refuses_local_files_and_drains_when_stopped(tiny_model_dir, media, stop):
    """Ctrl-C or a process manager's SIGTERM is a deliberate stop: the answer in flight is finished,
    one line says so, and the exit is 0 with no error line."""
    env = {k: v for k, v in os.environ.items() if k != "QVL_API_KEY"}
    command = [sys.executable, "-m", "qvl", "serve", "--model", "tiny", "--port", "0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url, rest = _serving_url(process)
        local = {"messages": _user("Hi", {"type": "video_url", "video_url": {"url": str(media["video"])}})}
        status, reply = _post(url, local, key=None)
        assert status == 400 and reply["error"]["code"] == "local_files_refused"
        answered: list = []
        asking = threading.Thread(
            target=lambda: answered.append(_post(url, {"messages": _user("Hi"), "max_tokens": 400}, key=None))
        )
        asking.start()
        while not answered and not _http("GET", url + "/health", key=None)[1]["busy"]:
            time.sleep(0.01)
        process.send_signal(stop)
        asking.join(timeout=120)
        assert answered and answered[0][0] == 200  # the answer in flight was finished
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    rest.join(timeout=10)
    assert "stopped: 1 request answered" in rest.text and "Traceback" not in rest.text
    assert "qvl: error" not in rest.text and rest.text.count("stopped: ") == 1, rest.text


def test_a_second_ctrl_c_stops_at_once_in_one_line(tiny_model_dir):
    """Ctrl-C twice during an answer: the process ends at once, exit 130, one line saying what it
    dropped, and none of the tracebacks of requests cancelled mid-answer."""
    env = {k: v for k, v in os.environ.items() if k != "QVL_API_KEY"}
    command = [sys.executable, "-m", "qvl", "serve", "--model", "tiny", "--port", "0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url, rest = _serving_url(process)
        body = {"messages": _user("Hi"), "max_tokens": 30_000}  # minutes of decoding on a CPU

        def ask():
            try:
                _post(url, body, key=None)
            except OSError:  # the server is gone without answering, as it should be
                pass

        threading.Thread(target=ask, daemon=True).start()
        while not _http("GET", url + "/health", key=None)[1]["busy"]:
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        process.kill()
    rest.join(timeout=10)
    assert "stopped at once by a second Ctrl-C, dropping 1 request" in rest.text, rest.text
    assert "Traceback" not in rest.text and "ERROR" not in rest.text, rest.text


def test_an_empty_api_key_is_refused_given_or_in_the_environment(tiny_model_dir):
    for args, env in ((("--api-key", " "), {}), ((), {"QVL_API_KEY": ""})):
        result = invoke("serve", "--model", "tiny", "--port", "0", *args, env=env)
        assert_one_error(result, contains="is empty", exit_code=2)


def test_an_unwritable_frame_cache_is_one_line_before_the_model_loads(tmp_path):
    # The model folder does not exist: an error about the cache comes before the load's.
    root = unwritable_dir(tmp_path)
    result = invoke("serve", "--model", tmp_path / "no-model", "--port", "0", "--cache-dir", root)
    line = assert_one_error(result, contains="not writable", exit_code=2)  # as `qvl video` says it
    assert str(root) in line and "--no-cache" in line


class _Reader(threading.Thread):
    """The rest of a pipe, read in the background so the process never blocks on it."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.text = pipe, ""

    def run(self) -> None:
        self.text = self.pipe.read()


def _serving_url(process) -> tuple[str, _Reader]:
    for line in process.stderr:
        found = re.search(r"serving tiny on (http://\S+)/v1", line)
        if found:
            reader = _Reader(process.stderr)
            reader.start()
            return found.group(1), reader
    raise AssertionError("qvl serve did not start")
