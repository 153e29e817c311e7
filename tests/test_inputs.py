"""The engine's model inputs (prompt tokenized before its video placeholder is expanded) against
transformers' processor doing all of it, on the tiny model's real processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qvl.engine import Engine, Request, VideoFrames
from qvl.engine.inputs import InputBuilder, video_kwargs
from qvl.errors import InputError


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine("tiny", device="cpu")


def _video(count: int, h: int, w: int, fps: float = 2.0) -> VideoFrames:
    frames = np.random.default_rng(count * h + w).integers(0, 255, (count, h, w, 3), dtype=np.uint8)
    return VideoFrames(frames, fps)


def _processor_inputs(engine, request: Request):
    """What transformers' processor alone makes of the request."""
    processor = engine.processor
    kwargs = {"images": list(request.images)} if request.images else {}
    if request.video is not None:
        kwargs.update(video_kwargs(request.video, processor.video_processor, torch.device("cpu")))
    return processor(text=[engine.chat_text(request)], return_tensors="pt", **kwargs)


def _assert_same(ours, reference):
    assert set(ours) == set(reference)
    for key, value in reference.items():
        assert isinstance(ours[key], torch.Tensor) and ours[key].dtype == value.dtype, key
        assert torch.equal(ours[key], value), key


@pytest.mark.parametrize(
    ("count", "h", "w", "prompt"),
    [
        (8, 56, 84, "What happens?"),
        (5, 84, 56, "Two lines,\n  odd   spaces and ünïcode."),  # an odd frame count: the processor pads
        (2, 28, 28, ""),
        (16, 112, 140, "Describe the clip in detail."),
    ],
)
def test_video_inputs_equal_the_processors_own(engine, count, h, w, prompt):
    request = Request(prompt, video=_video(count, h, w, fps=1.5))
    ours = engine.prepare(request)
    assert engine._inputs._text_keys is not None, "the shortcut should agree with this processor"
    _assert_same(ours, _processor_inputs(engine, request))


def test_a_conversation_with_history_expands_the_one_video(engine):
    request = Request("And then?", video=_video(6, 56, 56), history=[("What happens?", "A ball rolls.")])
    _assert_same(engine.prepare(request), _processor_inputs(engine, request))


def test_images_take_the_processors_path(engine):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (56, 84, 3), dtype=np.uint8))
    request = Request("What is this?", images=[image])
    _assert_same(engine.prepare(request), _processor_inputs(engine, request))


def test_a_prompt_that_writes_a_placeholder_itself_is_left_to_the_processor(engine):
    # Two placeholders for one video: the shortcut cannot know which to expand, so it steps aside
    # and the processor says what is wrong. (A question cannot write one: `Engine.chat_messages`
    # refuses it first; a chat template could.)
    video = _video(4, 56, 56)
    text = engine.chat_text(Request("Is it?", video=video)).replace("Is it?", f"Is {engine.processor.video_token}?")
    with pytest.raises((ValueError, StopIteration)):
        engine._inputs(text, (), video, torch.device("cpu"))
    with pytest.raises(InputError, match="only the media"):
        engine.prepare(Request(f"Is {engine.processor.video_token} a token?", video=video))


def test_a_processor_the_shortcut_disagrees_with_gets_the_processors_path(engine):
    class Tokenizer:
        """The real tokenizer, but one that adds a token before the prompt: the shortcut, which
        tokenizes the prompt itself, would then differ from the processor."""

        def __init__(self, real):
            self.real = real

        def __getattr__(self, name):
            return getattr(self.real, name)

        def __call__(self, text, **kwargs):
            return self.real(["!" + t for t in text], **kwargs)

    class Processor:
        def __init__(self, real):
            self.real, self.tokenizer = real, Tokenizer(real.tokenizer)

        def __getattr__(self, name):
            return getattr(self.real, name)

        def __call__(self, text=None, **kwargs):
            return self.real(text=text, **kwargs)

    builder = InputBuilder(Processor(engine.processor))
    request = Request("What happens?", video=_video(4, 56, 56))
    ours = builder(engine.chat_text(request), (), request.video, torch.device("cpu"))
    assert builder._text_keys is None
    _assert_same(ours, _processor_inputs(engine, request))
