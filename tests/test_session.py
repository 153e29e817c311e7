"""Sessions: the media prefilled once, questions asked on top of it, against fresh requests
through transformers' generate (greedy, tiny model, fp32, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
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


@pytest.mark.parametrize("question", ["What happens?", "Describe every object you can see in great detail."])
def test_a_question_continues_the_text_after_the_media(engine, question):
    """The question's keys and the first answer token's logits as a full prefill of the whole
    prompt gives them: with 16 frames the video's temporal positions run past where the text after
    it continues, so the model's rope delta for the media alone would misplace the question."""
    from qvl.engine.decode import Sampling, StaticDecoder
    from qvl.engine.prefill import prefill

    video = VideoFrames(np.random.default_rng(1).integers(0, 255, (16, 140, 196, 3), dtype=np.uint8), 2.0)
    inputs = engine.prepare(Request(question, video=video))
    length = inputs["input_ids"].shape[1]
    fresh = StaticDecoder(engine.model, length + 16, Sampling(), use_graph=False)
    expected = prefill(engine.model, inputs, lambda: fresh)
    session = engine.session(video=video)
    asked = session.ask(question, max_new_tokens=1)
    assert asked.prompt_tokens == length
    assert session.decode_delta(length) == expected.rope_delta
    torch.testing.assert_close(session.decoder.keys[:, :, :length], fresh.keys[:, :, :length], rtol=1e-4, atol=1e-4)
    assert asked.tokens[0] == int(expected.logits.argmax())


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
    assert model.last_result.timings.media_s > 0  # the frames' decoding, as --stats reports it
    small = model.session(video=str(clip), frames=8, headroom=64)
    assert small.capacity < session.capacity and small.chat("What happens?", max_new_tokens=8).text
    from PIL import Image

    Image.new("RGB", (56, 56), "red").save(tmp_path / "red.png")
    model.inference_image(str(tmp_path / "red.png"))
    assert model.last_result.timings.media_s > 0


# --- conversations: chat, reset, ask in between ------------------------------------------------

CONVERSATION = ["What happens?", "Describe the colours of every object in great detail, please.", "And then?"]


def _fresh(engine, question, history, tokens, **media):
    """The stock path's answer to the whole conversation, written as chat messages."""
    return engine.generate(Request(question, max_new_tokens=tokens, history=list(history), **media), fast=False)


def test_chat_turns_answer_as_fresh_requests_with_the_conversation(engine):
    session = engine.session(video=FRAMES)
    for question in CONVERSATION:
        history = list(session.history)
        said = session.chat(question, max_new_tokens=16)
        fresh = _fresh(engine, question, history, 16, video=FRAMES)
        assert said.tokens == fresh.tokens and said.prompt_tokens == fresh.prompt_tokens
        assert said.text == fresh.text and session.history[-1] == (question, said.text)
    assert [q for q, _ in session.history] == CONVERSATION


def test_image_chat_answers_as_fresh_requests(engine):
    images = [IMAGE, IMAGE.rotate(90, expand=True)]
    session = engine.session(images=images)
    for question in ("Compare them.", "Which is taller?"):
        history = list(session.history)
        assert (
            session.chat(question, max_new_tokens=12).tokens
            == _fresh(engine, question, history, 12, images=images).tokens
        )


def test_a_follow_up_prefills_only_what_the_cache_does_not_hold(engine):
    session = engine.session(video=FRAMES)
    first = session.chat("What happens?", max_new_tokens=8)
    assert session.last_prefilled == first.prompt_tokens - session.prefix_length
    assert session.kept_tokens == first.prompt_tokens + first.generated_tokens - 1
    second = session.chat("And then?", max_new_tokens=8)
    assert session.last_prefilled <= second.prompt_tokens - first.prompt_tokens  # the first prompt is kept
    # Another branch of the same conversation: its first turn, answer included, comes from the cache.
    history = [("What happens?", "A red ball rolls.")]
    branch = session.ask("How?", history=history, max_new_tokens=8)
    again = session.ask("Where to?", history=history, max_new_tokens=8)
    tail = engine.processor.tokenizer("Where to?<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    assert session.last_prefilled == len(tail)
    for question, result in (("How?", branch), ("Where to?", again)):
        assert result.tokens == _fresh(engine, question, history, 8, video=FRAMES).tokens


def test_reset_and_ask_leave_no_trace_of_the_conversation(engine):
    session = engine.session(video=FRAMES)
    first = session.chat("What happens?", max_new_tokens=12)
    session.chat("And then?", max_new_tokens=12)
    asked = session.ask("Which colours are there?", max_new_tokens=12)  # no history, and none kept
    assert asked.tokens == _fresh(engine, "Which colours are there?", [], 12, video=FRAMES).tokens
    assert [q for q, _ in session.history] == ["What happens?", "And then?"]
    third = session.chat("Why?", max_new_tokens=12)  # the conversation is prefilled again after the ask
    assert third.tokens == _fresh(engine, "Why?", session.history[:2], 12, video=FRAMES).tokens
    session.reset()
    assert session.history == [] and session.kept_tokens == session.prefix_length
    assert session.chat("What happens?", max_new_tokens=12).tokens == first.tokens


def test_a_conversation_too_long_for_the_headroom_says_how_to_go_on(engine):
    session = engine.session(video=FRAMES, headroom=64)
    session.chat("What happens?", max_new_tokens=24)
    with pytest.raises(OptionError, match=r"reset.*--headroom"):
        session.chat("Describe the colours of every object in great detail, please.", max_new_tokens=24)
    assert len(session.history) == 1  # the failed turn is not part of the conversation


def test_the_cache_size_is_known_before_it_is_allocated(engine):
    from qvl.engine.session import kv_bytes_per_token

    session = engine.session(video=FRAMES, headroom=100)
    assert session.cache_bytes == session.capacity * kv_bytes_per_token(engine.model)
    assert session.capacity >= session.prefix_length + 100


def test_a_session_larger_than_memory_is_one_error_before_allocating(engine):
    with pytest.raises(OptionError, match="smaller --headroom"):
        engine.session(video=FRAMES, headroom=10**14)  # petabytes: no machine has them free


@pytest.mark.parametrize(
    "need, media, video, remedy",
    [
        (9 * 2**30, 8 * 2**30, True, "fewer frames (--frames, --fps) or smaller ones (--max-pixels)"),
        (9 * 2**30, 8 * 2**30, False, "fewer or smaller images"),
        (9 * 2**30, 2**30, True, "a smaller --headroom"),
    ],
    ids=["video too large", "images too large", "headroom too large"],
)
def test_the_memory_message_names_what_makes_the_session_fit(need, media, video, remedy):
    from qvl.engine.session import memory_problem

    message = memory_problem(need, media, 4 * 2**30, "this GPU", video=video)
    assert message.startswith("the session's KV cache needs 9.0 GiB") and "this GPU has 4.0 GiB free" in message
    assert message.endswith(remedy + " make it fit") or message.endswith(remedy + " makes it fit")
    assert memory_problem(need, media, 64 * 2**30, "this GPU", video=video) is None
    assert memory_problem(need, media, None, "this machine", video=video) is None
