"""`qvl video` end to end: real ffmpeg-made videos, the tiny model, temporal positions, bad input."""

from pathlib import Path

import pytest
from cli_helpers import assert_one_error, error_lines, invoke, json_lines, make_video, run_subprocess

pytestmark = pytest.mark.usefixtures("tiny_by_default")

SMALL = ["--min-pixels", str(28 * 28 * 4), "--max-pixels", str(28 * 28 * 4), "--max-tokens", "4"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("videos") / "clip.mp4", seconds=6)


@pytest.mark.parametrize("seconds, expected", [(16, 0.5), (64, 2.0)], ids=["16s", "64s"])
def test_64_frames_give_the_real_seconds_per_temporal_patch(tmp_path, seconds, expected):
    """Two frames make one temporal patch: 64 frames over 16 s are 0.5 s apart in pairs of 0.25 s."""
    from qvl.engine import Engine, Request, VideoFrames
    from qvl.media.video import VideoOptions, load_video

    video = make_video(tmp_path / f"{seconds}s.mp4", seconds=seconds, rate=8)
    clip = load_video(video, VideoOptions(frames=64, max_pixels=28 * 28 * 4, min_pixels=28 * 28 * 4))
    assert clip.frames.shape[0] == 64
    engine = Engine("tiny")
    inputs = engine.prepare(Request("What happens?", video=VideoFrames(clip.frames, clip.sampled_fps)))
    (second_per_grid,) = inputs["second_per_grid_ts"].tolist()
    assert second_per_grid == pytest.approx(expected, rel=0.02)
    # The same as the real spacing of the frames the model saw, pair by pair.
    spacing = (clip.timestamps[-1] - clip.timestamps[0]) / (len(clip.timestamps) - 1)
    assert second_per_grid == pytest.approx(2 * spacing, rel=1e-6)


def test_video_json_reports_frames_fps_and_cache(clip):
    first = invoke("video", clip, "--frames", "8", "--json", *SMALL)
    assert first.exit_code == 0, first.stderr
    (record,) = json_lines(first.stdout)
    assert record["error"] is None and record["frames"] == 8 and record["from_cache"] is False
    assert record["sampled_fps"] == pytest.approx(8 / 6, rel=0.25)
    assert len(record["timestamps"]) == 8 and record["span"][0] < record["span"][1] <= 6
    second = json_lines(invoke("video", clip, "--frames", "8", "--json", *SMALL).stdout)[0]
    assert second["from_cache"] is True and second["timestamps"] == record["timestamps"]
    assert (record["cache"], second["cache"]) == ("miss", "hit")
    exact = json_lines(
        invoke("video", clip, "--frames", "8", "--json", "--seek", "exact", "--strict-hash", *SMALL).stdout
    )[0]
    assert exact["from_cache"] is False  # another seek mode is another entry
    assert all(abs(t - (i + 0.5) * 6 / 8) < 0.07 for i, t in enumerate(exact["timestamps"]))  # 8 fps source
    bypass = json_lines(invoke("video", clip, "--frames", "8", "--json", "--no-cache", *SMALL).stdout)[0]
    assert bypass["from_cache"] is False


def test_streamed_answer_and_seed_alias(clip):
    result = invoke("video", clip, "--preprocess-frames", "4", *SMALL)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip()


def test_dry_run_needs_no_model(clip, monkeypatch):
    monkeypatch.setenv("QVL_MODEL", "no-such-model")
    result = invoke("video", clip, "--frames", "16", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    (plan,) = json_lines(result.stdout)
    assert plan["frames"] == 16 and plan["width"] % 28 == 0 and plan["height"] % 28 == 0
    assert plan["tokens"] == 8 * (plan["width"] // 28) * (plan["height"] // 28)
    table = invoke("video", clip, "--fps", "1", "--dry-run")
    assert table.exit_code == 0 and "LLM tokens" in table.stdout


def test_dry_runs_table_names_a_long_path_on_one_line(clip, tmp_path):
    """The path whole, to copy from the terminal (a table's title wraps at the table's width)."""
    import shutil

    long = tmp_path / ("a_folder_whose_name_is_long_enough_to_wrap_" * 2) / "clip [1].mp4"
    long.parent.mkdir()
    shutil.copy(clip, long)
    table = invoke("video", long, "--frames", "4", "--dry-run", env={"COLUMNS": "80"})
    assert table.exit_code == 0, table.stderr
    assert table.stdout.splitlines()[0] == str(long) and "LLM tokens" in table.stdout


def test_infer_keeps_the_published_flags(clip):
    result = invoke("infer", "--type", "video", "--input", clip, "--preprocess-frames", "4", "--max-tokens", "3")
    assert result.exit_code == 0, result.stderr and result.stdout.strip()
    guessed = invoke("infer", "--input", clip, "--preprocess-frames", "4", "--max-tokens", "3")  # no --type
    assert guessed.exit_code == 0 and guessed.stdout.strip(), guessed.stderr


def _bad_videos(tmp_path: Path, clip: Path) -> dict:
    from qvl.media.ffmpeg import run_ffmpeg

    audio = tmp_path / "audio.m4a"
    run_ffmpeg("-f", "lavfi", "-i", "sine=duration=2", str(audio))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[:2000])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 50)
    return {
        "no video stream": (audio, "video"),
        "zero-length": (empty, "empty"),
        "truncated": (truncated, ""),
        "text named .mp4": (text, ""),
    }


@pytest.mark.parametrize("case", ["no video stream", "zero-length", "truncated", "text named .mp4"])
def test_bad_video_is_one_clear_line(tmp_path, clip, case):
    source, message = _bad_videos(tmp_path, clip)[case]
    assert_one_error(invoke("video", source, *SMALL), contains=message)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frames", "0"], "--frames"),
        (["--frames", "-4"], "--frames"),
        (["--fps", "0"], "--fps"),
        (["--start", "4", "--end", "2"], "--start"),
        (["--start", "60"], "past the end"),
        (["--frames", "8", "--fps", "2"], "exclusive"),
    ],
    ids=["zero frames", "negative frames", "zero fps", "start after end", "start past end", "frames and fps"],
)
def test_impossible_options_are_one_line(clip, args, message):
    assert_one_error(invoke("video", clip, *args, *SMALL), contains=message)


def test_non_numeric_frames_is_a_usage_error(clip):
    assert_one_error(run_subprocess("video", clip, "--frames", "many"), contains="--frames", exit_code=2)


def test_missing_video_does_not_stop_the_next(tmp_path, clip):
    result = invoke("video", tmp_path / "nope.mp4", clip, "--frames", "4", "--json", *SMALL)
    assert result.exit_code == 1
    records = json_lines(result.stdout)
    assert "no such file" in records[0]["error"] and records[1]["error"] is None


def test_an_option_one_of_several_videos_cannot_meet_names_that_video(tmp_path, clip):
    """--frames 40 fits the 6 s clip but not a 1 s one: the error line says which input it is about."""
    short = make_video(tmp_path / "short.mp4", seconds=1)
    (line,) = error_lines(invoke("video", clip, short, "--frames", "40", "--dry-run").stderr)
    assert line.startswith(f"qvl: error: {short}: --frames 40 asks for more frames than the 1.00 s span")
    answered = invoke("video", clip, short, "--frames", "40", "--json", "--no-cache", *SMALL)
    assert answered.exit_code == 1  # an input failed; the options were usable (the other answered)
    (line,) = error_lines(answered.stderr)
    assert line.startswith(f"qvl: error: {short}: --frames 40 asks")
    assert [r["input"] for r in json_lines(answered.stdout)] == [str(clip), str(short)]


def test_a_bad_video_with_several_questions_is_a_record_per_question_and_one_line(tmp_path, clip):
    """As docs/usage.md promises, one JSON object per input and question: a video that fails has
    one for each question, each with its prompt; its error line is said once."""
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"not a video" * 100)
    questions = ["What happens?", "Who speaks?"]
    args = ["video", clip, corrupt, "--frames", "4", "--json", "--no-cache", *SMALL]
    result = invoke(*args, "-p", questions[0], "-p", questions[1])
    assert result.exit_code == 1
    records = json_lines(result.stdout)
    assert [(r["input"], r["prompt"]) for r in records] == [(str(p), q) for p in (clip, corrupt) for q in questions]
    assert [r["error"] is None for r in records] == [True, True, False, False]
    assert records[2]["error"] == records[3]["error"] and "not a video" in records[2]["error"]
    assert error_lines(result.stderr) == [f"qvl: error: {records[2]['error']}"]


STAGES = ("media", "processor", "vision", "prefill/TTFT", "decode", "warmup", "total")


def test_stats_adds_stage_lines_on_stderr_and_leaves_stdout_alone(clip):
    args = ("video", clip, "--frames", "4", "--no-cache", *SMALL)
    plain, stats = invoke(*args), invoke(*args, "--stats")
    assert plain.exit_code == stats.exit_code == 0, stats.stderr
    assert stats.stdout == plain.stdout
    (line,) = [line for line in stats.stderr.splitlines() if line.startswith("stats ")]
    assert str(clip) in line and all(stage in line for stage in STAGES)
    assert "stats " not in plain.stderr

    plain, stats = invoke(*args, "--json"), invoke(*args, "--json", "--stats", "--quiet")
    assert stats.exit_code == 0, stats.stderr
    (record,) = json_lines(stats.stdout)
    assert record["text"] == json_lines(plain.stdout)[0]["text"] and "timings" in record
    assert len([line for line in stats.stderr.splitlines() if line.startswith("stats ")]) == 1


def test_plan_notes_reach_stderr_on_a_normal_run_and_the_record_and_quiet_hides_them(clip):
    """The notes are for a person on stderr; a pipeline reads them in the record's `notes`."""
    args = ["video", clip, "--frames", "3", "--end", "99", "--no-cache", *SMALL]
    plain, as_json = invoke(*args), invoke(*args, "--json")
    for result in (plain, as_json):
        assert result.exit_code == 0, result.stderr
        assert "rounded up to 4" in result.stderr and "past the end" in result.stderr
    assert "rounded" not in plain.stdout and "past the end" not in plain.stdout
    (record,) = json_lines(as_json.stdout)  # stdout stays one JSON object
    assert record["frames"] == 4 and len(record["notes"]) == 2
    assert [line for line in record["notes"] if "rounded up to 4" in line or "past the end" in line] == record["notes"]
    quiet = invoke(*args, "--quiet")
    assert quiet.exit_code == 0 and "rounded" not in quiet.stderr and "past the end" not in quiet.stderr


def test_several_questions_read_the_video_once_and_answer_as_single_runs(tiny_model_dir, tmp_path):
    """`-p` twice: one record per question, each equal to its own run (greedy); the first carries
    the media's one read and prefill (its vision tower included), the second shows none of it."""
    video = make_video(tmp_path / "clip.mp4", seconds=4)
    common = ["video", video, "--frames", "8", "-m", "tiny", "--max-tokens", "6", "--json", "--no-cache"]
    both = invoke(*common, "-p", "What happens?", "-p", "Which colours are there?")
    assert both.exit_code == 0, both.stderr
    first, second = json_lines(both.stdout)
    assert [first["prompt"], second["prompt"]] == ["What happens?", "Which colours are there?"]
    assert second["timings"]["media_s"] == 0.0 and second["frames"] == first["frames"] == 8
    assert first["timings"]["prefill_s"] >= first["timings"]["vision_s"] > 0 == second["timings"]["vision_s"]
    for record in (first, second):
        alone = invoke(*common, "-p", record["prompt"])
        assert json_lines(alone.stdout)[0]["text"] == record["text"]


def test_several_questions_get_a_session_with_room_for_the_longest(tiny_model_dir, tmp_path):
    """A question longer than a session's default room (4,500 digits, a token each) beside a
    short one: both answered, the session sized from the questions rather than refusing."""
    video = make_video(tmp_path / "clip.mp4", seconds=2)
    long_question = "0123456789" * 450
    args = ["video", video, "--frames", "4", "-m", "tiny", "--max-tokens", "4", "--json", "--no-cache"]
    result = invoke(*args, "-p", long_question, "-p", "Who?")
    assert result.exit_code == 0, result.stderr
    first, second = json_lines(result.stdout)
    assert first["error"] is None and second["error"] is None
    assert first["tokens"]["prompt"] > 4500


def test_a_failed_question_leaves_no_header_on_stdout(capsys):
    """The text view of several answers, the first failing before its first piece: stdout holds
    the second's header and answer only (no header over an empty answer), stderr the error."""
    from qvl.output import RunView

    view = RunView(json_output=False, quiet=True, several=True)
    failed = {"input": "clip.mp4", "prompt": "Why?", "error": "clip.mp4: it went wrong"}
    answered = {"input": "clip.mp4", "prompt": "What happens?", "psa": None, "timings": {}}
    view.started("clip.mp4: Why?", 1)
    view.failed(failed)
    view.started("clip.mp4: What happens?", 2)
    for piece in ("It ", "rains."):
        view.on_text(piece)
    view.answered(answered, psa=None)
    out, err = capsys.readouterr()
    assert out == "==> clip.mp4: What happens? <==\nIt rains.\n"
    assert "it went wrong" in err


def test_an_input_too_large_for_the_memory_is_one_line(tiny_model_dir, tmp_path):
    """Frames that need more memory than the process may take (an address-space limit of 6 GiB,
    the processor asking for 2.4 GB more): the input's error line, not a traceback."""
    import resource
    import subprocess
    import sys

    video = make_video(tmp_path / "clip.mp4", seconds=8, rate=25)
    limit = 6 * 2**30

    def small():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    big = ["--fps", "25", "--min-pixels", "1000000", "--max-pixels", "1000000", "--total-pixels", "400000000"]
    result = subprocess.run(
        [sys.executable, "-m", "qvl", "video", str(video), *big, "--model", "tiny", "--no-cache"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=small,
    )
    assert_one_error(result, contains="out of memory on this machine")
