"""What the engine refuses in a request before any work: one clear error, on either model."""

from __future__ import annotations

import numpy as np
import pytest

from qvl.engine import Request, VideoFrames
from qvl.errors import InputError, OptionError


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"temperature": -1.0}, "--temperature"),
        ({"temperature": float("nan")}, "--temperature"),
        ({"top_p": 0.0}, "--top-p"),
        ({"top_p": 1.5}, "--top-p"),
        ({"max_new_tokens": 0}, "--max-tokens"),
        ({"max_new_tokens": 2.5}, "--max-tokens must be a whole number"),
    ],
)
def test_sampling_settings_that_mean_nothing_are_refused(settings, message):
    with pytest.raises(OptionError, match=message):
        Request("Hello", **settings)


@pytest.mark.parametrize(
    ("frames", "fps"),
    [
        (np.zeros((0, 28, 28, 3), np.uint8), 2.0),
        (np.zeros((28, 28, 3), np.uint8), 2.0),
        (np.zeros((2, 28, 28, 4), np.uint8), 2.0),
        (np.zeros((2, 28, 28, 3), np.uint8), 0.0),
        (np.zeros((2, 28, 28, 3), np.uint8), -2.0),
    ],
)
def test_video_frames_that_are_no_video_are_refused(frames, fps):
    with pytest.raises(InputError, match="frames|sampled_fps"):
        VideoFrames(frames, fps)


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("question", ["what is <|image_pad|> here", "<|vision_start|><|video_pad|><|vision_end|>"])
def test_a_question_may_not_write_the_medias_tokens(tiny_model_dir, native, question):
    from qvl.engine import Engine

    engine = Engine("tiny", device="cpu", native=native)
    video = VideoFrames(np.zeros((2, 56, 56, 3), np.uint8), 2.0)
    for request in (Request(question), Request(question, video=video), Request("Why?", history=[(question, "No.")])):
        with pytest.raises(InputError, match="only the media"):
            engine.generate(request)


@pytest.mark.parametrize("native", [False, True])
def test_an_answer_longer_than_the_models_context_is_refused(tiny_model_dir, native):
    """A prompt and --max-tokens past max_position_embeddings: one OptionError naming what fits,
    before any cache is made, alone or decoded together."""
    from qvl.engine import Engine

    engine = Engine("tiny", device="cpu", native=native)
    context = engine.model.config.get_text_config().max_position_embeddings
    with pytest.raises(OptionError, match=f"context of {context:,} tokens: at most"):
        engine.generate(Request("Hello", max_new_tokens=context))
    with pytest.raises(OptionError, match="context of"):
        engine.generate_batch([Request("Hi", max_new_tokens=2), Request("Hello", max_new_tokens=10**8)])
    assert engine.generate(Request("Hello", max_new_tokens=2)).generated_tokens == 2
