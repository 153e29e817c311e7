"""qvl's fast path (our vision tower, static KV cache decode) against the stock transformers path
it replaces, on the tiny model in fp32 on the CPU: same features, same greedy tokens.

On the CPU the decode step runs eagerly; tests/test_gpu.py runs the same comparison through the
CUDA graph."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from qvl.engine import Engine, Request, VideoFrames
from qvl.engine.vision import plan_tower, run_tower


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine("tiny", device="cpu")


def _image(h: int, w: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _frames(count: int, h: int, w: int, seed: int = 0) -> VideoFrames:
    return VideoFrames(np.random.default_rng(seed).integers(0, 255, (count, h, w, 3), dtype=np.uint8), 2.0)


def _stock_tower(visual, pixels, grid):
    with torch.inference_mode():
        out = visual(pixels, grid_thw=grid)
    return getattr(out, "pooler_output", out)


def _rel(a, b) -> float:
    assert not torch.isnan(a).any()
    return float((a - b).norm() / b.norm())


# Frame sizes in pixels: a whole number of windows (4 x 4 merged units), edge windows of every
# kind (odd merged grids), one window smaller than a window side, and a tall strip.
@pytest.mark.parametrize(
    "count,h,w",
    [(4, 224, 224), (6, 140, 196), (2, 56, 56), (4, 308, 84), (4, 252, 364)],
    ids=["whole-windows", "edges", "one-small-window", "strip", "many-windows"],
)
def test_tower_matches_stock_video(engine, count, h, w):
    inputs = engine.prepare(Request("x", video=_frames(count, h, w, seed=h + w)))
    visual = engine.model.model.visual
    pixels, grid = inputs["pixel_values_videos"], inputs["video_grid_thw"]
    assert _rel(run_tower(visual, pixels, grid), _stock_tower(visual, pixels, grid)) < 1e-5


def test_tower_mlp_in_chunks_matches_stock(engine, monkeypatch):
    from qvl.engine import vision

    monkeypatch.setattr(vision, "MLP_CHUNK", 100)  # several chunks, the last one short
    inputs = engine.prepare(Request("x", video=_frames(4, 252, 364)))
    pixels, grid = inputs["pixel_values_videos"], inputs["video_grid_thw"]
    assert pixels.shape[0] > 3 * vision.MLP_CHUNK
    out = run_tower(engine.model.model.visual, pixels, grid)
    assert _rel(out, _stock_tower(engine.model.model.visual, pixels, grid)) < 1e-5


def test_tower_matches_stock_for_several_images_of_different_sizes(engine):
    images = [_image(140, 196, 1), _image(56, 84, 2), _image(224, 224, 3)]
    inputs = engine.prepare(Request("x", images=images))
    visual = engine.model.model.visual
    pixels, grid = inputs["pixel_values"], inputs["image_grid_thw"]
    assert grid.shape[0] == 3
    assert _rel(run_tower(visual, pixels, grid), _stock_tower(visual, pixels, grid)) < 1e-5


def test_padded_mlp_is_the_module_with_its_weights_as_views():
    """The tower's MLP padded to a multiple of 128 (an odd width, as the published 3,420 is): the
    same output, and the module's own parameters become views of the padded weights."""
    from qvl.engine.fuse import fuse_padded_mlp
    from qvl.engine.vision import _mlp

    torch.manual_seed(0)
    mlp = torch.nn.Module()
    mlp.gate_proj, mlp.up_proj = torch.nn.Linear(48, 100), torch.nn.Linear(48, 100)
    mlp.down_proj = torch.nn.Linear(100, 48)
    mlp.act_fn = torch.nn.SiLU()
    mlp.forward = lambda x: mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))
    x = torch.randn(37, 48)
    with torch.no_grad():
        expected = mlp(x)
        out = _mlp(mlp, x, silu=True)
        after = mlp(x)  # the module itself, now over views of the padded weights
    weight, bias, down = fuse_padded_mlp(mlp)
    assert weight.shape == (256, 48) and down.shape == (48, 128) and bias.shape == (256,)
    assert mlp.up_proj.weight.data_ptr() == weight[128:].data_ptr()
    assert mlp.down_proj.weight.data_ptr() == down.data_ptr() and mlp.down_proj.weight.shape == (48, 100)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)


def test_language_model_loop_matches_the_model_forward(engine, monkeypatch):
    """Our layer loop against transformers' forward over the same prompt: the last position's
    logits and every layer's keys and values, with the MLP in several chunks of odd size."""
    from qvl.engine import language
    from qvl.engine.decode import Sampling, StaticDecoder
    from qvl.engine.prefill import prefill

    monkeypatch.setattr(language, "MLP_CHUNK", 97)
    inputs = engine.prepare(Request("What happens?", video=_frames(4, 140, 196)))
    length = inputs["input_ids"].shape[1]
    ours, stock = (StaticDecoder(engine.model, length + 8, Sampling(), use_graph=False) for _ in range(2))
    assert language.supported(engine.model)
    logits = prefill(engine.model, inputs, lambda: ours).logits
    monkeypatch.setattr(language, "supported", lambda model: False)
    expected = prefill(engine.model, inputs, lambda: stock).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.keys[:, :, :length], stock.keys[:, :, :length], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.values[:, :, :length], stock.values[:, :, :length], rtol=1e-4, atol=1e-5)


def test_decode_step_logits_match_stock_generate(engine):
    """Each decode step's logits against transformers' generate's (video prompt, fp32)."""
    from engine_checks import assert_decode_logits_match_stock

    assert_decode_logits_match_stock(engine, engine.prepare(Request("What happens?", video=_frames(16, 140, 196))))


def test_tower_plan_groups_cover_every_token_once(engine):
    config = engine.model.model.visual.config
    grid = torch.tensor([[3, 10, 14], [1, 4, 6], [2, 16, 16]])
    plan = plan_tower(grid, config)
    tokens = int(grid.prod(-1).sum())
    for groups in (plan.window_groups, plan.frame_groups):
        covered = torch.zeros(tokens, dtype=torch.long)
        for g in groups:
            if g.index is None:
                covered[g.start : g.start + g.count * g.length] += 1
            else:
                covered[g.index] += 1
        assert covered.eq(1).all()
    assert sorted(plan.window_index.tolist()) == list(range(tokens // 4))
    # Full attention is per temporal patch: 3 + 1 + 2 sequences of h * w patches.
    assert sum(g.count for g in plan.frame_groups) == 6


REQUESTS = {
    "image": lambda: Request("Describe.", images=[_image(280, 392, 0)], max_new_tokens=16),
    "video": lambda: Request("What happens?", video=_frames(8, 140, 196), max_new_tokens=32),
    "two-images": lambda: Request("Compare.", images=[_image(280, 392, 0), _image(56, 84, 4)], max_new_tokens=12),
}


@pytest.mark.parametrize("kind", REQUESTS)
def test_greedy_tokens_equal_stock_generate(engine, kind):
    request = REQUESTS[kind]()
    stock = engine.generate(request, fast=False)
    fast = engine.generate(request, fast=True)
    assert fast.tokens == stock.tokens
    assert fast.text == stock.text and fast.prompt_tokens == stock.prompt_tokens


def test_repetition_penalty_applied_as_stock(engine):
    config = engine.model.generation_config
    saved = config.repetition_penalty
    config.repetition_penalty = 1.3
    try:
        request = dataclasses.replace(REQUESTS["video"](), max_new_tokens=16)
        assert engine.generate(request, fast=True).tokens == engine.generate(request, fast=False).tokens
    finally:
        config.repetition_penalty = saved


def test_sampling_is_seeded_and_a_tiny_top_p_is_greedy(engine):
    greedy = engine.generate(REQUESTS["image"](), fast=True).tokens
    nucleus = dataclasses.replace(REQUESTS["image"](), temperature=0.8, top_p=1e-9)
    assert engine.generate(nucleus, fast=True).tokens == greedy
    sampled = dataclasses.replace(REQUESTS["image"](), temperature=1.5, seed=7)
    first = engine.generate(sampled, fast=True).tokens
    assert engine.generate(sampled, fast=True).tokens == first
    assert first != greedy


def test_streamed_pieces_join_to_the_answer(engine):
    pieces: list[str] = []
    result = engine.generate(REQUESTS["image"](), on_text=pieces.append, fast=True)
    assert "".join(pieces) == result.text  # as a terminal shows it, a server streams it and --json holds it


def test_one_decoder_serves_requests_of_different_lengths(engine):
    short = Request("Hi.", images=[_image(56, 56, 5)], max_new_tokens=8)
    long = dataclasses.replace(REQUESTS["video"](), max_new_tokens=4)
    first = engine.generate(short, fast=True).tokens
    engine.generate(long, fast=True)
    assert engine.generate(short, fast=True).tokens == first == engine.generate(short, fast=False).tokens


def test_fast_path_says_why_not_on_cpu(engine):
    assert "CUDA" in engine.fast_path_problem


def test_warm_up_does_nothing_off_the_fast_path(engine):
    load_s = engine.load_s
    assert engine.warm_up() == 0.0 and engine.load_s == load_s


def test_a_decoder_reserved_ahead_serves_the_request_as_stock(engine):
    """`Engine.warm_up(tokens)` on a GPU makes the next request's decoder at load (`reserve`): that
    request then uses it, with the stock path's tokens."""
    from qvl.engine.generate import sampling_for
    from qvl.runner import TEXT_ALLOWANCE

    request = REQUESTS["video"]()
    stock = engine.generate(request, fast=False)
    engine.generate(Request("Hi.", images=[_image(56, 56, 5)], max_new_tokens=2), fast=True)  # a small decoder
    media = int((engine.prepare(request)["input_ids"] == engine.processor.video_token_id).sum())
    planned = media + TEXT_ALLOWANCE + request.max_new_tokens
    engine._fast.reserve(planned, sampling_for(request, engine.model.generation_config))
    reserved = engine._fast.decoder
    assert reserved.capacity >= planned  # made by reserve, not the small one left before
    assert engine.generate(request, fast=True).tokens == stock.tokens
    assert engine._fast.decoder is reserved


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_steps_queued_ahead_give_the_stock_tokens_and_stop_at_the_end(engine, monkeypatch, ahead):
    """The decode loop queues steps past the token it reads (on a GPU, to keep it busy): the
    tokens are the same however many, and an end-of-sequence token mid-way leaves the queued
    steps unused, the next request unharmed."""
    import functools

    import qvl.engine.generate as generate

    monkeypatch.setattr(generate, "_loop", functools.partial(generate._loop, ahead=ahead))
    request = REQUESTS["video"]()
    stock = engine.generate(request, fast=False)
    assert engine.generate(request, fast=True).tokens == stock.tokens
    config = engine.model.generation_config
    end = stock.tokens[5]
    monkeypatch.setattr(config, "eos_token_id", end)
    stopped = engine.generate(request, fast=True).tokens
    assert stopped == engine.generate(request, fast=False).tokens
    assert stopped[-1] == end and len(stopped) == stock.tokens.index(end) + 1
    monkeypatch.undo()
    assert engine.generate(request, fast=True).tokens == stock.tokens


@pytest.mark.parametrize("kind", REQUESTS)
def test_inputs_planned_ahead_give_the_same_tokens_without_planning_again(engine, kind, monkeypatch):
    """Inputs made ahead carry their `PromptPlan` (mRoPE positions and the towers' plans, made on
    the CPU): the fast path reads it instead of planning from the ids (neither is called again),
    and gives the tokens it gives without one; the stock path leaves it out of the model's
    arguments."""
    import qvl.engine.vision
    from qvl.engine.prefill import PROMPT_PLAN, plan_prompt

    request = REQUESTS[kind]()
    unplanned = engine.generate(request, fast=True)
    inputs = engine.prepare(request, device="cpu")
    inputs[PROMPT_PLAN] = plan_prompt(engine.model, inputs)

    def planned_again(*args, **kwargs):
        raise AssertionError("planned again in the prefill")

    with monkeypatch.context() as patched:
        patched.setattr(engine.model.model, "get_rope_index", planned_again)
        patched.setattr(qvl.engine.vision, "plan_tower", planned_again)
        planned = engine.generate(request, fast=True, inputs=inputs)
    assert planned.tokens == unplanned.tokens and planned.text == unplanned.text
    assert engine.generate(request, fast=False, inputs=inputs).tokens == unplanned.tokens


def test_inputs_made_ahead_for_the_fast_path_carry_their_plan(tiny_model_dir):
    """On the CPU the tree's fast path serves: inputs made ahead (device given) carry a plan, those
    made for the model at once do not, and a batch of requests made ahead answers as each alone."""
    from qvl.engine.prefill import PROMPT_PLAN

    native = Engine("tiny", device="cpu", native=True)
    requests = [REQUESTS["video"](), REQUESTS["two-images"]()]
    assert PROMPT_PLAN in native.prepare(requests[0], device="cpu")
    assert PROMPT_PLAN not in native.prepare(requests[0])
    alone = [native.generate(request).tokens for request in requests]
    together = native.generate_batch(requests, [native.prepare(r, device="cpu") for r in requests])
    assert [r.tokens for r in together] == alone
