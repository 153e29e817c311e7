"""`qvl chat` end to end: questions through a pipe and through a pseudo-terminal, slash commands,
answers against `qvl video`/`qvl describe`, bad media and options (tiny model, real media)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_error, error_lines, invoke, json_lines, make_video
from PIL import Image

pytestmark = pytest.mark.usefixtures("tiny_by_default")

STAGES = ("media", "processor", "vision", "prefill/TTFT", "decode", "warmup", "total")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("chat") / "clip.mp4", seconds=4)


def _chat_args(clip, *extra):
    return ["chat", clip, "--frames", "8", "--max-tokens", "6", "--no-cache", *extra]


def _video_answer(clip, question: str) -> str:
    """`qvl video --json`'s answer to `question` alone: what a conversation's first turn must say."""
    result = invoke("video", clip, "--frames", "8", "--max-tokens", "6", "--no-cache", "--json", "-p", question)
    assert result.exit_code == 0, result.stderr
    return json_lines(result.stdout)[0]["text"]


def test_questions_piped_to_a_process_are_one_conversation(clip):
    """A real pipe: one JSON object per answer, the turns numbered, the second turn's prompt
    holding the first turn, and /reset starting over with the first answer again."""
    questions = "What happens?\nAnd then?\n/reset\nWhat happens?\n"
    result = subprocess.run(
        [sys.executable, "-m", "qvl", *map(str, _chat_args(clip, "--json"))],
        input=questions,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    first, second, again = json_lines(result.stdout)
    assert [r["turn"] for r in (first, second, again)] == [1, 2, 1]
    assert [r["prompt"] for r in (first, second, again)] == ["What happens?", "And then?", "What happens?"]
    assert first["text"] == _video_answer(clip, "What happens?") == again["text"]
    assert second["tokens"]["prompt"] > first["tokens"]["prompt"] + len("And then?") // 4  # the first turn is in view
    assert first["cache_bytes"] == second["cache_bytes"] > 0 and first["frames"] == 8
    assert first["timings"]["media_s"] > 0 and second["timings"]["media_s"] == 0.0
    # The media's one prefill (its vision tower included) is the first answer's wait, as in `qvl video`.
    assert first["timings"]["prefill_s"] >= first["timings"]["vision_s"] > 0 == second["timings"]["vision_s"]
    assert all(r["error"] is None for r in (first, second, again))
    assert "Traceback" not in result.stderr


def test_a_chat_about_images_starts_as_describe_together(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(tmp_path / name)
        paths.append(tmp_path / name)
    chat = invoke("chat", *paths, "--max-tokens", "6", "--json", input="Compare them.\nWhich is brighter?\n")
    assert chat.exit_code == 0, chat.stderr
    first, second = json_lines(chat.stdout)
    described = invoke("describe", *paths, "--together", "--max-tokens", "6", "--json", "-p", "Compare them.")
    assert first["text"] == json_lines(described.stdout)[0]["text"]
    assert first["input"] == json_lines(described.stdout)[0]["input"] and second["turn"] == 2


def test_slash_commands_from_a_pipe(clip, tmp_path):
    transcript = tmp_path / "talk.json"
    transcript.write_text("an older transcript\n")
    lines = [
        "/stats",  # before any answer: the kept cache alone
        "What happens?",
        "/stats",
        f"/save {transcript}",
        f"/save {tmp_path / 'no-such-folder' / 'talk.json'}",
        "/save",
        "/help",
        "/bogus",
        "/quit now",  # a typo, not the end: the question after it is still answered
        "//etc/hosts?",  # a question that starts with a slash
    ]
    result = invoke(*_chat_args(clip), input="\n".join(lines) + "\n")
    assert result.exit_code == 1, result.stderr  # the first failed command's code: the unwritable file
    answers = result.stdout.split("\n\n")
    assert len(answers) == 2 and answers[0].strip() == _video_answer(clip, "What happens?")
    stderr = result.stderr
    assert "stats: no answer yet" in stderr
    (stats,) = [line for line in stderr.splitlines() if line.startswith("stats turn 1: ")]
    assert all(stage in stats for stage in STAGES)
    kept = [line for line in stderr.splitlines() if line.startswith("kept cache: ")]
    assert len(kept) == 2 and "of 8,9" in kept[0] and "MiB" in kept[0]
    saved = json.loads(transcript.read_text())
    assert saved["model"] == "tiny" and saved["frames"] == 8 and saved["input"] == str(clip)
    assert [(t["turn"], t["prompt"], t["text"]) for t in saved["turns"]] == [(1, "What happens?", answers[0].strip())]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.json"]  # no temporary file left behind
    errors = error_lines(stderr)
    assert len(errors) == 4 and "cannot write" in errors[0] and "no such file" in errors[0].lower()
    assert "/save needs a FILE" in errors[1] and "unknown command /bogus" in errors[2]
    assert "/quit takes nothing after it" in errors[3]
    assert "/reset" in stderr and "/quit" in stderr  # /help


def test_bad_media_is_one_line_before_any_model_loads(clip, tmp_path, monkeypatch):
    monkeypatch.setenv("QVL_MODEL", "no-such-model")  # loading it would be another error
    text = tmp_path / "notes.png"
    text.write_text("not an image\n" * 20)
    assert_one_error(invoke("chat", tmp_path / "nope.mp4", input="Hi?\n"), contains="no such file", exit_code=1)
    assert_one_error(invoke("chat", text, clip, input="Hi?\n"), contains="notes.png", exit_code=1)
    assert_one_error(invoke("chat", clip, clip, input="Hi?\n"), contains="one video", exit_code=2)
    assert_one_error(invoke("chat", clip, "--frames", "0", input="Hi?\n"), contains="--frames", exit_code=2)
    too_long = invoke("chat", clip, "--max-tokens", "600", "--headroom", "512", input="Hi?\n")
    assert_one_error(too_long, contains="--headroom", exit_code=2)


def test_a_session_that_cannot_fit_says_so_before_prefill(clip):
    result = invoke(*_chat_args(clip, "--headroom", str(10**14)), input="What happens?\n")
    assert_one_error(result, contains="smaller --headroom makes it fit", exit_code=2)
    assert result.stdout == ""


# --- at a terminal ------------------------------------------------------------------------------

_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def _plain(text: str) -> str:
    """Terminal output without colours, bracketed-paste switches and carriage returns."""
    return _ESCAPES.sub("", text)


def _spawn(clip, *extra):
    import pexpect

    env = {**os.environ, "QVL_MODEL": "tiny", "TERM": "xterm", "COLUMNS": "250"}
    args = ["-m", "qvl", *map(str, _chat_args(clip, *extra))]
    child = pexpect.spawn(sys.executable, args, env=env, encoding="utf-8", timeout=120, dimensions=(50, 250))
    child.expect_exact("Ctrl-D to leave")
    child.expect_exact("> ")
    return child


def _answer(child, question: str) -> str:
    child.sendline(question)
    child.expect_exact("\r\n> ")
    shown = _plain(child.before)
    assert shown.startswith(question), shown
    return shown[len(question) :].strip()


def test_a_terminal_conversation_with_line_editing_and_commands(clip, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    expected = _plain(_video_answer(clip, "What happens?"))
    child = _spawn(clip)
    assert _answer(child, "What happens?") == expected
    child.sendline("/stats")
    child.expect_exact("kept cache: ")
    child.expect_exact("> ")
    child.send("And then?\x01\x0b")  # Ctrl-A, Ctrl-K: readline's line editing erases the line
    child.sendline("Why?")
    child.expect_exact("\r\n> ")
    child.sendline(f"/save {tmp_path / 'talk.json'}")
    child.expect_exact("saved the conversation (2 turns)")
    child.expect_exact("> ")
    saved = json.loads((tmp_path / "talk.json").read_text())
    assert [turn["prompt"] for turn in saved["turns"]] == ["What happens?", "Why?"]
    child.sendline("/reset")
    child.expect_exact("forgotten")
    child.expect_exact("> ")
    assert _answer(child, "What happens?") == expected
    child.sendintr()  # Ctrl-C at the prompt drops the line and asks again
    child.expect_exact("> ")
    child.sendeof()  # Ctrl-D ends the chat cleanly
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before


def test_ctrl_c_stops_an_answer_and_the_chat_goes_on(clip):
    pexpect = pytest.importorskip("pexpect")
    expected = _plain(_video_answer(clip, "What happens?"))
    child = _spawn(clip, "--max-tokens", "20000", "--headroom", "24000")
    child.sendline("What happens?")
    child.expect_exact(expected[:4])  # the answer is streaming (its first tokens are the short answer's)
    child.sendintr()
    child.expect_exact("stopped; this answer is not kept in the conversation")
    child.expect_exact("> ")
    child.sendline("/stats")
    child.expect_exact("no answer yet")  # the stopped answer is not part of the conversation
    child.expect_exact("> ")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in child.before


def test_a_line_of_bytes_that_are_not_utf8_is_one_error_and_the_chat_goes_on(tiny_model_dir):
    house = Path(__file__).parents[1] / "examples" / "house.jpg"
    done = subprocess.run(
        [sys.executable, "-m", "qvl", "chat", str(house), "--model", "tiny", "--max-tokens", "2", "--json"],
        input=b"hi\n\xff\xfe\nagain\n",
        capture_output=True,
        timeout=120,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},  # as a UTF-8 locale decodes stdin
    )
    stderr = done.stderr.decode()
    assert "Traceback" not in stderr and error_lines(stderr) == [
        "qvl: error: the question '\\udcff\\udcfe' holds bytes that are not UTF-8 text"
    ], stderr
    records = [json.loads(line) for line in done.stdout.decode("utf-8").splitlines()]  # valid UTF-8 JSON
    assert [r["error"] is None for r in records] == [True, False, True]
    assert records[1]["prompt"] == "\ufffd\ufffd" and records[2]["prompt"] == "again"
    # One shape for every row: the failed question is no turn (null), the answers count on.
    assert [set(r) for r in records[1:]] == [set(records[0])] * 2
    assert [r["turn"] for r in records] == [1, None, 2] and records[1]["cache_bytes"] == records[0]["cache_bytes"]


def test_no_questions_on_stdin_loads_nothing(clip, tmp_path):
    """stdin at its end from the start: one note, exit 0, and neither the video's frames decoded
    (no cache entry) nor the model loaded (no load line)."""
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "qvl", "chat", str(clip), "--model", "tiny", "--cache-dir", str(cache)]
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "", done.stderr
    assert "no questions on stdin" in done.stderr and "loaded tiny" not in done.stderr, done.stderr
    assert not list(cache.rglob("meta.json"))
    # nothing to ask is no reason to pass over a path that names no file
    missing = subprocess.run(
        [*command[:4], str(tmp_path / "nowhere.mp4"), *command[5:]],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 1 and error_lines(missing.stderr) == [
        f"qvl: error: {tmp_path / 'nowhere.mp4'}: no such file"
    ]


def test_frame_options_about_images_say_they_are_not_used(tmp_path):
    house = Path(__file__).parents[1] / "examples" / "house.jpg"
    result = invoke("chat", house, "--frames", "8", "--max-tokens", "2", "--json", input="Hi?\n")
    assert result.exit_code == 0, result.stderr
    assert "the frame options apply to a video" in result.stderr
    quiet = invoke("chat", house, "--max-tokens", "2", "--json", input="Hi?\n")
    assert "frame options" not in quiet.stderr


def test_a_failed_question_about_a_video_has_an_answers_keys(clip):
    result = invoke(*_chat_args(clip, "--json"), input="What happens?\nbad <|image_pad|> here\nAnd then?\n")
    assert result.exit_code == 1 and len(error_lines(result.stderr)) == 1, result.stderr
    records = json_lines(result.stdout)
    assert [r["turn"] for r in records] == [1, None, 2]
    assert [list(r) for r in records[1:]] == [list(records[0])] * 2  # the same keys, in the same order
    assert records[1]["frames"] == records[0]["frames"] and records[1]["error"]
