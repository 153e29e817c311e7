"""`qvl describe` end to end on the tiny model: answers, --json, --together, and every bad input."""

import base64
import io
import time
from pathlib import Path

import pytest
from cli_helpers import assert_one_error, error_lines, invoke, json_lines, run_subprocess
from PIL import Image

pytestmark = pytest.mark.usefixtures("tiny_by_default")

HOUSE = Path(__file__).resolve().parent.parent / "examples" / "house.jpg"


def _image(path: Path, size=(96, 64), color=(200, 30, 90)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def test_describe_streams_an_answer_to_stdout_and_notes_the_tiny_model_on_stderr():
    result = invoke("describe", HOUSE, "--max-tokens", "8")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip()
    assert "tiny model" in result.stderr
    assert not error_lines(result.stderr)


def test_describe_json_is_one_object_per_image(tmp_path):
    second = _image(tmp_path / "red.png")
    result = invoke("describe", HOUSE, second, "--json", "--max-tokens", "5", "--prompt", "What colour?")
    assert result.exit_code == 0, result.stderr
    records = json_lines(result.stdout)
    assert [r["input"] for r in records] == [str(HOUSE), str(second)]
    for record in records:
        assert record["error"] is None
        assert record["model"] == "tiny" and record["prompt"] == "What colour?"
        assert 1 <= record["tokens"]["generated"] <= 5
        assert record["tokens"]["prompt"] > 10
        assert set(record["timings"]) >= {"load_s", "preprocess_s", "prefill_s", "decode_s", "tokens_per_s"}


def test_describe_together_gives_one_answer(tmp_path):
    a, b = _image(tmp_path / "a.png"), _image(tmp_path / "b.png", color=(0, 200, 0))
    result = invoke("describe", a, b, "--together", "--json", "--max-tokens", "4")
    assert result.exit_code == 0, result.stderr
    (record,) = json_lines(result.stdout)
    single = json_lines(invoke("describe", a, "--json", "--max-tokens", "4").stdout)[0]
    assert record["tokens"]["prompt"] > single["tokens"]["prompt"]  # both images are in the prompt
    assert record["timings"]["media_s"] > 0  # opening the images is timed as for one image


def test_directory_glob_and_data_uri_inputs(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    _image(folder / "b.png"), _image(folder / "a.jpg"), (folder / "notes.txt").write_text("x")
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (1, 2, 3)).save(buffer, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    result = invoke("describe", folder, str(tmp_path / "pics" / "*.png"), uri, "--json", "--max-tokens", "2")
    assert result.exit_code == 0, result.stderr
    inputs = [r["input"] for r in json_lines(result.stdout)]
    assert inputs == [str(folder / "a.jpg"), str(folder / "b.png"), str(folder / "b.png"), "data URI"]
    two = invoke("describe", uri, uri, "--json", "--max-tokens", "2")  # several: told apart
    assert [r["input"] for r in json_lines(two.stdout)] == ["data URI 1", "data URI 2"]


def test_one_bad_input_does_not_stop_the_others(tmp_path):
    good = _image(tmp_path / "good.png")
    result = invoke("describe", tmp_path / "missing.jpg", good, "--json", "--max-tokens", "2")
    assert result.exit_code != 0
    records = json_lines(result.stdout)
    assert records[0]["input"].endswith("missing.jpg") and "no such file" in records[0]["error"]
    assert records[1]["input"] == str(good) and records[1]["error"] is None and records[1]["text"] is not None
    assert len(error_lines(result.stderr)) == 1


@pytest.mark.parametrize("together", [False, True], ids=["each", "together"])
def test_a_bad_image_with_several_questions_is_a_record_per_question_and_one_line(tmp_path, together):
    good, missing = _image(tmp_path / "good.png"), tmp_path / "missing.jpg"
    args = ["describe", good, missing, "--json", "--max-tokens", "2", "-p", "What?", "-p", "Why?"]
    result = invoke(*args, *(["--together"] if together else []))
    assert result.exit_code == 1
    failed = [(r["input"], r["prompt"]) for r in json_lines(result.stdout) if r["error"] is not None]
    assert failed == [(str(missing), "What?"), (str(missing), "Why?")]
    assert len(error_lines(result.stderr)) == 1 and "no such file" in result.stderr


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[str, str]]:
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    truncated = tmp_path / "truncated.jpg"
    HOUSE_BYTES = HOUSE.read_bytes()
    truncated.write_bytes(HOUSE_BYTES[: len(HOUSE_BYTES) // 3])
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    wide = _image(tmp_path / "wide.png", size=(2010, 10))
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    return {
        "missing": (str(tmp_path / "nope.jpg"), "no such file"),
        "empty directory": (str(empty_dir), "directory has no images"),
        "glob without matches": (str(tmp_path / "*.webp"), "no files match"),
        "truncated": (str(truncated), "truncated"),
        "text named .jpg": (str(text), "not an image"),
        "corrupt png": (str(corrupt), "image"),
        "aspect ratio over 200": (str(wide), "aspect ratio"),
        "bad data uri": ("data:image/png;base64,@@@", "base64"),
        "a video": (str(video), f"is a video, not an image: use qvl video {video}"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty directory",
        "glob without matches",
        "truncated",
        "text named .jpg",
        "corrupt png",
        "aspect ratio over 200",
        "bad data uri",
        "a video",
    ],
)
def test_bad_image_is_one_clear_line(tmp_path, case):
    source, message = _bad_inputs(tmp_path)[case]
    assert_one_error(invoke("describe", source, "--max-tokens", "2"), contains=message)


def test_unreachable_url_fails_fast():
    started = time.perf_counter()
    result = invoke("describe", "https://qvl-test.invalid/demo.jpeg", "--max-tokens", "2")
    assert_one_error(result, contains="cannot reach")
    assert time.perf_counter() - started < 30


def test_unknown_preset_and_model_folder_without_weights_exit_2(tmp_path):
    assert_one_error(invoke("describe", HOUSE, "--model", "13b"), contains="13b", exit_code=2)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert_one_error(invoke("describe", HOUSE, "--model", folder), contains="weights", exit_code=2)


def test_usage_errors_are_one_line_through_the_entry_point():
    result = run_subprocess("describe", HOUSE, "--max-tokens", "many")
    assert_one_error(result, contains="--max-tokens", exit_code=2)
    assert result.stdout == ""


def test_version_and_help():
    from qvl import __version__

    assert invoke("--version").stdout.strip() == f"qvl {__version__}"
    result = invoke("--help")
    assert result.exit_code == 0 and "describe" in result.stdout and "video" in result.stdout


def test_describe_stats_is_one_stderr_line_per_answer(tmp_path):
    second = _image(tmp_path / "red.png")
    result = invoke("describe", HOUSE, second, "--max-tokens", "3", "--stats")
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("stats ")]
    assert len(lines) == 2 and str(second) in lines[1] and "prefill/TTFT" in lines[0]
    assert "stats " not in result.stdout


def test_a_fresh_process_shows_no_weight_bar_that_measures_nothing(tiny_model_dir):
    """The tiny model's few kilobytes load without transformers' "Loading weights" bar: stderr
    has the notes a person reads, the answer is on stdout."""
    result = run_subprocess("describe", HOUSE, "--model", "tiny", "--max-tokens", "4")
    assert result.returncode == 0, result.stderr
    assert "Loading weights" not in result.stderr and "loaded tiny" in result.stderr
    assert result.stdout.strip()


def test_a_fresh_process_ends_with_every_answer_written_and_its_exit_code(tiny_model_dir, tmp_path):
    """describe ends its process without the interpreter's teardown: stdout, a pipe here (so
    block-buffered), still holds every JSON line, and a failed input still sets the exit code."""
    missing = tmp_path / "missing.jpg"
    result = run_subprocess("describe", HOUSE, missing, "--model", "tiny", "--max-tokens", "4", "--json")
    records = json_lines(result.stdout)
    assert [r["error"] is None for r in records] == [True, False], result.stderr
    assert result.returncode != 0 and "missing.jpg" in result.stderr


def test_a_library_that_does_not_import_is_one_line_not_a_traceback(tiny_model_dir, tmp_path):
    """An incomplete install (here transformers failing on a missing dependency of its own, as a
    release newer than its dependencies does) stops with one line naming the missing module."""
    import os
    import subprocess
    import sys

    broken = tmp_path / "site" / "transformers"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'httpx2'\", name='httpx2')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(Path(__file__).parents[1])])}
    result = subprocess.run(
        [sys.executable, "-m", "qvl", "describe", HOUSE, "--model", "tiny", "--max-tokens", "4"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert_one_error(result, contains="httpx2", exit_code=2)


def test_a_server_that_is_not_qvls_is_one_line(tmp_path):
    """--server pointed at some other web server (here Python's file server)."""
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        result = invoke("describe", HOUSE, "--server", f"http://127.0.0.1:{other.server_address[1]}")
    finally:
        other.shutdown()
    assert_one_error(result, contains="is it a qvl server?", exit_code=2)


def test_top_p_or_a_seed_without_a_temperature_says_it_does_nothing():
    greedy = invoke("describe", HOUSE, "--top-p", "0.5", "--max-tokens", "2", "--json")
    assert greedy.exit_code == 0, greedy.stderr
    assert "--top-p has no effect without --temperature above 0" in greedy.stderr
    assert json_lines(greedy.stdout)[0]["error"] is None
    both = invoke("describe", HOUSE, "--top-p", "0.5", "--seed", "3", "--max-tokens", "2")
    assert both.exit_code == 0 and "--top-p and --seed have no effect without --temperature" in both.stderr
    sampled = invoke("describe", HOUSE, "--seed", "3", "--temperature", "0.7", "--max-tokens", "2")
    assert sampled.exit_code == 0 and "no effect" not in sampled.stderr
