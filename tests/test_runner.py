"""The runner on its own: records, per-input errors, exit codes, the view it reports to."""

from __future__ import annotations

from qvl.errors import InputError, ModelError
from qvl.runner import Media, Runner, Settings, View


class Recorder(View):
    def __init__(self):
        self.events = []

    def loaded(self, engine):
        self.events.append(("loaded", engine.name))

    def answered(self, record, psa):
        self.events.append(("answered", record["input"]))

    def failed(self, record):
        self.events.append(("failed", record["input"]))


def bad_media():
    raise InputError("a.png: not an image")


def test_a_bad_input_is_one_error_record_and_no_model_loads():
    view = Recorder()
    runner = Runner(Settings(model="tiny"), view)
    record = runner.run("a.png", "Describe this image.", bad_media)
    assert record == {
        "input": "a.png",
        "model": "tiny",
        "prompt": "Describe this image.",
        "text": None,
        "tokens": None,
        "timings": None,
        "error": "a.png: not an image",
    }
    assert runner.exit_code == 1 and not runner.stopped
    assert view.events == [("failed", "a.png")]


def test_a_model_that_cannot_load_stops_the_run(monkeypatch):
    def no_model(self):
        raise ModelError("model x is not downloaded")

    monkeypatch.setattr(Runner, "engine", no_model)
    view = Recorder()
    runner = Runner(Settings(model="x"), view)
    assert runner.run("a.png", "?", Media)["error"] == "model x is not downloaded"
    assert runner.stopped and runner.exit_code == 2
    assert runner.run("b.png", "?", Media) is None  # later inputs do nothing
    assert view.events == [("failed", "a.png")]


def test_records_carry_the_answer_and_the_media_keys():
    from PIL import Image

    view = Recorder()
    runner = Runner(Settings(model="tiny", max_tokens=2), view)
    image = Image.new("RGB", (56, 56), (200, 10, 10))
    for label in ("a", "b"):
        record = runner.run(label, "What?", lambda: Media(images=[image], record={"extra": 1}))
        assert record["error"] is None and record["extra"] == 1 and record["tokens"]["generated"] <= 2
    assert runner.exit_code == 0
    assert view.events == [("loaded", "tiny"), ("answered", "a"), ("answered", "b")]  # loaded once


def test_cli_error_objects_have_every_key_an_answer_has(tmp_path):
    from cli_helpers import invoke, json_lines
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (56, 56), (10, 200, 10)).save(good)
    result = invoke("describe", tmp_path / "missing.png", good, tmp_path / "gone.png", "-m", "tiny", "--json")
    assert result.exit_code == 1
    before, answer, after = json_lines(result.stdout)  # a failure before the model loads, and one after
    assert answer["error"] is None
    for failed in (before, after):
        assert set(answer) <= set(failed) | {"psa"}, set(answer) - set(failed)
        assert failed["model"] == "tiny" and failed["prompt"] == "Describe this image."
        assert failed["text"] is None and failed["tokens"] is None and failed["timings"] is None
        assert "no such file" in failed["error"]


def test_the_model_loads_on_a_thread_while_the_first_video_decodes():
    """A video's frames start to decode, the model loads beside them, and the answer is the
    same as a run that loads it first."""

    from PIL import Image

    class Loading(Recorder):
        def load_progress(self, background):
            self.events.append(("load_progress", background))
            return False

    image = Image.new("RGB", (64, 64), (200, 30, 30))
    answers = []
    for background in (True, False):
        view = Loading()
        runner = Runner(Settings(model="tiny", max_tokens=6), view)

        def media(runner=runner, background=background):
            if background:
                runner.load_in_background()  # as the CLI's frame loader does once a video is planned
            return Media(images=[image])

        answers.append(runner.run("red.png", "Describe.", media)["text"])
        assert view.events[:2] == [("load_progress", background), ("loaded", "tiny")]
    assert answers[0] == answers[1]


def test_a_model_that_cannot_load_on_the_thread_fails_as_it_would_in_the_main_one(tmp_path):
    runner = Runner(Settings(model=str(tmp_path / "no-such-model")), Recorder())
    runner.load_in_background()
    record = runner.run("a.png", "?", Media)
    assert "no-such-model" in record["error"] and runner.stopped and runner.exit_code == 2


def test_a_load_no_input_used_is_waited_for_before_the_end():
    runner = Runner(Settings(model="tiny"), Recorder())
    runner.load_in_background()
    runner.run("a.png", "?", bad_media)  # the input fails before it needs the model
    runner.finish_loading()
    thread, outcome = runner._loading
    assert not thread.is_alive() and "engine" in outcome


class Counted(Recorder):
    def load_progress(self, background):
        self.events.append(("load_progress", background))
        return False


def test_threads_asking_for_the_engine_at_once_share_one_load():
    """A batch's prefetch threads run the processor while the model loads: each waits for the one
    load, and all get the same engine."""
    from concurrent.futures import ThreadPoolExecutor

    view = Counted()
    runner = Runner(Settings(model="tiny"), view)
    runner.load_in_background()
    with ThreadPoolExecutor(4) as pool:
        engines = list(pool.map(lambda _: runner.engine(), range(4)))
    assert all(engine is engines[0] for engine in engines)
    assert view.events == [("load_progress", True), ("loaded", "tiny")]


def test_a_failed_background_load_is_raised_to_every_caller_and_not_tried_again(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    view = Counted()
    runner = Runner(Settings(model=str(tmp_path / "no-such-model")), view)
    runner.load_in_background()

    def engine(_):
        try:
            return runner.engine()
        except ModelError as exc:
            return exc

    with ThreadPoolExecutor(3) as pool:
        errors = list(pool.map(engine, range(3)))
    assert all(isinstance(e, ModelError) and "no-such-model" in str(e) for e in errors)
    assert view.events == [("load_progress", True)]  # one load, the background one: none tried after it


def test_a_load_without_progress_hides_the_hubs_and_transformers_bars():
    """`Engine(progress=False)`, as a background or quiet load asks: no download or loading bars."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    from qvl.engine import Engine

    try:
        for progress in (True, False):
            enable_progress_bars()
            hf_logging.enable_progress_bar()
            Engine("tiny", device="cpu", progress=progress)
            assert are_progress_bars_disabled() is not progress
            assert hf_logging.is_progress_bar_enabled() is progress
    finally:
        enable_progress_bars()
        hf_logging.enable_progress_bar()


def test_the_weights_start_to_read_before_transformers_is_imported(tiny_model_dir):
    """A fresh process's load overlaps reading the weights with importing transformers (seconds of
    each on a GPU host): nothing may import transformers before the read starts. Run as the CLI
    runs a video's background load, in a fresh interpreter (the tiny model already built: building
    it needs transformers)."""
    import subprocess
    import sys

    script = """
import sys
import qvl.engine.load as load
imported = []
def reader(path, device, dtype):
    imported.extend(m for m in sys.modules if m == "transformers" or m.startswith("transformers."))
load._weight_reader = reader
from qvl.output import RunView
from qvl.runner import Runner, Settings
runner = Runner(Settings(model="tiny", device="cpu"), RunView(json_output=True, quiet=False))
runner.load_in_background()
runner.engine()
print(sorted(imported))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
