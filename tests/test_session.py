"""Sessions: the media prefilled once, questions asked on top of it, against fresh requests
through transformers' generate (greedy, tiny model, fp32, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from qvl.engine import Engine, Request, VideoFrames
from qvl.errors import OptionError
from qvl.psa import AttentionConfig

FRAMES = VideoFrames(np.random.default_rng(0).integers(0, 255, (8, 140, 196, 3), dtype=np.uint8), 2.0)
IMAGE = Image.fromarray(np.random.default_rng(1).integers(0, 255, (280, 392, 3), dtype=np.uint8))
QUESTIONS = ["What happens?", "Describe the colours of every object in great detail, please.", "What happens?"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine("tiny", device="cpu")


def test_video_session_answers_as_fresh_requests(engine):
    session = engine.session(video=FRAMES)
    for question in QUESTIONS:  # a long question between two short ones: nothing leaks
        asked = session.ask(question, max_new_tokens=16)
        fresh = engine.generate(Request(question, video=FRAMES, max_new_tokens=16), fast=False)
        assert asked.tokens == fresh.tokens and asked.prompt_tokens == fresh.prompt_tokens
        assert asked.text == fresh.text


def test_image_session_answers_as_fresh_requests(engine):
    session = engine.session(images=[IMAGE, IMAGE.rotate(90, expand=True)])
    for question in ("Compare them.", "Which is taller?"):
        fresh = engine.generate(Request(question, images=session.images, max_new_tokens=12), fast=False)
        assert session.ask(question, max_new_tokens=12).tokens == fresh.tokens


def test_a_question_prefills_only_its_own_tokens(engine):
    session = engine.session(video=FRAMES)
    assert session.prefix_length > 100 and session.timings.vision_s > 0 and session.cache_bytes > 0
    result = session.ask("What happens?", max_new_tokens=4)
    assert result.prompt_tokens - session.prefix_length < 20


def test_sampling_in_a_session_is_seeded(engine):
    session = engine.session(video=FRAMES)
    first = session.ask("What happens?", max_new_tokens=12, temperature=1.5, seed=3).tokens
    assert session.ask("What happens?", max_new_tokens=12, temperature=1.5, seed=3).tokens == first


def test_dense_psa_session_keeps_the_prefix_statistics(tiny_model_dir):
    engine = Engine("tiny", device="cpu", psa=AttentionConfig.preset("dense", block=16, min_tokens=64))
    session = engine.session(video=FRAMES)
    result = session.ask("What happens?", max_new_tokens=8)
    assert result.psa is not None and result.psa["density"] == 1.0
    assert result.tokens == engine.generate(Request("What happens?", video=FRAMES, max_new_tokens=8)).tokens


def test_a_question_too_long_for_the_headroom_is_one_error(engine):
    session = engine.session(video=FRAMES, headroom=32)
    with pytest.raises(OptionError, match="larger headroom"):
        session.ask("What happens?", max_new_tokens=500)


def test_a_session_needs_media(engine):
    with pytest.raises(OptionError, match="images or a video"):
        engine.session()


def test_python_api_session_over_a_video_file(tiny_model_dir, tmp_path):
    from cli_helpers import make_video_or_skip

    from qvl import QwenVLInference

    clip = make_video_or_skip(tmp_path / "clip.mp4", seconds=4)
    model = QwenVLInference(model_name="tiny", device="cpu", max_new_tokens=8, cache=False)
    session = model.session(video=str(clip), frames=8)
    for question in ("What happens?", "Which colours are there?"):
        assert session.ask(question, max_new_tokens=8).text == model.inference_video(
            str(clip), question, preprocess_frames=8, max_new_tokens=8
        )
