"""Several requests decoded together (qvl/engine/batch_decode.py) against transformers' stock
`generate` of each alone: the tiny model in fp32 on the CPU, greedy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from qvl.engine import Engine, Request, VideoFrames


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine(str(tiny_model_dir), device="cpu", dtype="float32")


def _image(h: int, w: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _video(count: int, seed: int) -> VideoFrames:
    frames = np.random.default_rng(seed).integers(0, 255, (count, 140, 196, 3), dtype=np.uint8)
    return VideoFrames(frames=frames, sampled_fps=2.0)


def _requests() -> list[Request]:
    """Prompts of different lengths and media, and different token budgets."""
    return [
        Request("What happens?", video=_video(8, 0), max_new_tokens=12),
        Request("Describe.", images=[_image(56, 84, 1)], max_new_tokens=20),
        Request("Compare these two.", images=[_image(280, 392, 2), _image(56, 56, 3)], max_new_tokens=7),
    ]


def test_requests_decoded_together_get_the_tokens_each_gets_alone(engine):
    requests = _requests()
    together = engine.generate_batch(requests)
    for request, result in zip(requests, together):
        alone = engine.generate(request, fast=False)
        assert result.tokens == alone.tokens and result.text == alone.text
        assert result.prompt_tokens == alone.prompt_tokens
        assert result.timings.prefill_s > 0


def test_a_row_that_ends_early_stops_and_the_others_go_on(engine, monkeypatch):
    """An end-of-sequence token mid-way in one row ends that row only; its later steps are not
    read. The same decoder then serves a batch of another size and longer answers."""
    requests = _requests()
    stock = [engine.generate(r, fast=False).tokens for r in requests]
    end = stock[1][4]
    monkeypatch.setattr(engine.model.generation_config, "eos_token_id", end)
    ended = [engine.generate(r, fast=False).tokens for r in requests]
    together = [r.tokens for r in engine.generate_batch(requests)]
    assert together == ended and ended[1][-1] == end and len(ended[1]) < len(stock[1])
    monkeypatch.undo()
    longer = [dataclasses.replace(r, max_new_tokens=24) for r in requests[:2]]
    assert [r.tokens for r in engine.generate_batch(longer)] == [engine.generate(r, fast=False).tokens for r in longer]


def test_the_repetition_penalty_applies_per_row(engine, monkeypatch):
    monkeypatch.setattr(engine.model.generation_config, "repetition_penalty", 1.3)
    requests = _requests()[:2]
    assert [r.tokens for r in engine.generate_batch(requests)] == [
        engine.generate(r, fast=False).tokens for r in requests
    ]


def test_sampling_is_refused_and_no_requests_is_no_answers(engine):
    from qvl.errors import OptionError

    assert engine.generate_batch([]) == []
    with pytest.raises(OptionError, match="greedily"):
        engine.generate_batch([dataclasses.replace(_requests()[0], temperature=0.7)])


def test_a_smaller_batch_reuses_the_decoder_and_its_spare_rows_rest(engine):
    """Batches of varying size share one decoder (one cache, one graph on a GPU): the rows past a
    smaller batch step from the first slot, unread, and the batch's answers are still each alone's."""
    requests = _requests()
    engine.generate_batch(requests)
    decoder = engine._fast_generator().batch_decoder
    fewer = [dataclasses.replace(requests[0], max_new_tokens=9), requests[1]]
    got = [r.tokens for r in engine.generate_batch(fewer)]
    assert engine._fast_generator().batch_decoder is decoder and decoder.rows == 3
    assert got == [engine.generate(r, fast=False).tokens for r in fewer]
    steps = max(r.max_new_tokens for r in fewer) - 1
    assert int(decoder.position[2]) <= steps  # from slot 0, not from where the last batch left the row
