"""qvl's own module tree for Qwen2.5-VL's weights (`qvl.engine.native`): the same config, the same
forward passes where the fast path calls the model's, the same greedy tokens as transformers'
stock path, and no transformers imported on its way."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from qvl.engine import native


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from qvl.engine import Engine

    return Engine("tiny", device="cpu")


@pytest.fixture(scope="module")
def tensors(tiny_model_dir):
    from safetensors.torch import load_file

    return load_file(str(tiny_model_dir / "model.safetensors"))


def test_the_config_reads_as_transformers_reads_it(engine, tiny_model_dir, tmp_path):
    ours, theirs = native.read_config(tiny_model_dir), engine.model.config
    text, vision = ours.text_config, ours.vision_config
    for name in ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "vocab_size"):
        assert getattr(text, name) == getattr(theirs.text_config, name), name
    assert text.mrope_section == theirs.text_config.rope_parameters["mrope_section"]
    for name in ("depth", "hidden_size", "num_heads", "window_size", "fullatt_block_indexes", "out_hidden_size"):
        assert getattr(vision, name) == getattr(theirs.vision_config, name), name
    assert (ours.image_token_id, ours.video_token_id) == (theirs.image_token_id, theirs.video_token_id)
    # The Hub's layout: the text model's fields at the top, mRoPE under rope_scaling.
    raw = json.loads((tiny_model_dir / "config.json").read_text())
    flat = {**raw, **raw.pop("text_config")}
    rope = flat.pop("rope_parameters")
    flat.update(rope_theta=rope["rope_theta"], rope_scaling={"type": "mrope", "mrope_section": rope["mrope_section"]})
    (tmp_path / "config.json").write_text(json.dumps(flat))
    assert native.read_config(tmp_path) == ours


def test_both_checkpoint_layouts_load(tiny_model_dir, tensors):
    hub = native.build(tiny_model_dir, tensors, torch.float32)
    renamed = {
        (
            "model.language_model." + k[6:]
            if k.startswith("model.")
            else "model." + k
            if k.startswith("visual.")
            else k
        ): v
        for k, v in tensors.items()
    }
    newer = native.build(tiny_model_dir, renamed, torch.float32)
    for (name, a), (_, b) in zip(hub.state_dict().items(), newer.state_dict().items()):
        assert torch.equal(a, b), name


def test_the_forward_passes_the_fast_path_calls_match_transformers(engine, tiny_model_dir, tensors):
    ours = native.build(tiny_model_dir, tensors, torch.float32)
    theirs = engine.model
    x = torch.randn(24, theirs.config.vision_config.hidden_size, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ours.model.visual.merger(x), theirs.model.visual.merger(x))
    embeds = torch.randn(1, 9, theirs.config.text_config.hidden_size)
    positions = torch.randint(0, 50, (3, 1, 9), generator=torch.Generator().manual_seed(2))
    for a, b in zip(
        ours.model.language_model.rotary_emb(embeds, positions),
        theirs.model.language_model.rotary_emb(embeds, positions),
    ):
        assert torch.equal(a, b)


@pytest.mark.parametrize("media", ["video", "image"])
def test_the_fast_path_on_it_gives_the_stock_tokens(engine, tiny_model_dir, tensors, media):
    from qvl.engine import Request, VideoFrames
    from qvl.engine.generate import FastGenerator, TextStream, eos_ids

    rng = np.random.default_rng(3)
    if media == "video":
        request = Request(
            "What happens?", video=VideoFrames(rng.integers(0, 255, (8, 112, 84, 3), dtype=np.uint8), 2.0)
        )
    else:
        request = Request("What is it?", images=[Image.fromarray(rng.integers(0, 255, (90, 130, 3), dtype=np.uint8))])
    request.max_new_tokens = 12
    ours = native.build(tiny_model_dir, tensors, torch.float32)
    tokenizer = engine.processor.tokenizer
    with torch.inference_mode():
        mine = FastGenerator(ours, use_graph=False).generate(
            engine.prepare(request), request, TextStream(tokenizer, None), eos_ids(ours, tokenizer)
        )
    assert mine.tokens == engine.generate(request, fast=False).tokens


_WITHOUT_TRANSFORMERS = """
import json, sys
import numpy as np
from qvl.engine import Engine, Request, VideoFrames
engine = Engine(sys.argv[1], device="cpu", native=True)
frames = np.load(sys.argv[2])
answer = engine.generate(Request("What happens?", video=VideoFrames(frames, 2.0), max_new_tokens=12))
session = engine.session(video=VideoFrames(frames, 2.0))
asked = session.ask("And then?", max_new_tokens=8)
from qvl.psa import AttentionConfig
psa = Engine(sys.argv[1], device="cpu", native=True, psa=AttentionConfig.preset("fast", block=16, min_tokens=64))
sparse = psa.generate(Request("What happens?", video=VideoFrames(frames, 2.0), max_new_tokens=4))
print(json.dumps({
    "native": engine.native and psa.native, "psa": sparse.psa["density"] < 1, "tokens": answer.tokens, "asked": asked.tokens,
    "transformers": sorted({m for m in sys.modules if m.startswith("transformers")})[:3],
}))
"""


def test_a_video_answered_without_transformers_gives_the_stock_tokens(engine, tiny_model_dir, tmp_path):
    """The engine on the tree in a fresh interpreter: a video's answer and a question about the
    kept video (a session) with the stock path's greedy tokens, and an answer through PSA;
    transformers never imported."""
    from qvl.engine import Request, VideoFrames

    frames = np.random.default_rng(7).integers(0, 255, (8, 112, 84, 3), dtype=np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TRANSFORMERS, str(tiny_model_dir), str(tmp_path / "frames.npy")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.splitlines()[-1])
    video = VideoFrames(frames, 2.0)
    stock = engine.generate(Request("What happens?", video=video, max_new_tokens=12), fast=False)
    asked = engine.generate(
        Request("And then?", video=video, max_new_tokens=8), fast=False
    )  # a session's first question is the request alone
    expected = {"native": True, "psa": True, "tokens": stock.tokens, "asked": asked.tokens, "transformers": []}
    assert answer == expected


@pytest.fixture(scope="module")
def native_engine(tiny_model_dir):
    from qvl.engine import Engine

    return Engine("tiny", device="cpu", native=True)


@pytest.mark.parametrize("name", ["video", "video after turns", "images", "text"])
def test_the_engine_on_the_tree_gives_the_stock_tokens(engine, native_engine, name):
    """Every kind of request: a video's and a text's inputs made by qvl, images' by transformers'
    processor (loaded for the first image)."""
    import dataclasses

    assert native_engine.native and native_engine.fast_path_problem is None
    request = dataclasses.replace(_requests()[name], max_new_tokens=10)
    assert native_engine.generate(request).tokens == engine.generate(request, fast=False).tokens


def test_the_engine_takes_the_tree_only_where_it_can(engine, native_engine, tiny_model_dir, tmp_path):
    from qvl.engine import Engine, Request
    from qvl.errors import ModelError, OptionError

    assert not engine.native  # the default on a CPU: transformers' model, the stock path beside the fast one
    with pytest.raises(OptionError, match="native=False"):
        native_engine.generate(Request("Hello", max_new_tokens=2), fast=False)
    # A model the tree does not implement (another activation) loads through transformers.
    other = tmp_path / "gelu"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["text_config"]["hidden_act"] = "gelu"
    (other / "config.json").write_text(json.dumps(config))
    assert not Engine(str(other), device="cpu", native=True).native
    # A checkpoint whose tensors do not fit the tree's names likewise, from the same tensors.
    from safetensors.torch import load_file, save_file

    extra = tmp_path / "extra"
    shutil.copytree(tiny_model_dir, extra)
    tensors = load_file(str(extra / "model.safetensors"))
    tensors["model.unknown.weight"] = torch.zeros(2)
    save_file(tensors, str(extra / "model.safetensors"), metadata={"format": "pt"})
    assert not Engine(str(extra), device="cpu", native=True).native
    # A checkpoint that lacks a weight: refused, on either path (transformers would leave it random).
    lacking = tmp_path / "lacking"
    shutil.copytree(tiny_model_dir, lacking)
    tensors.pop("model.norm.weight" if "model.norm.weight" in tensors else "model.language_model.norm.weight")
    save_file(tensors, str(lacking / "model.safetensors"), metadata={"format": "pt"})
    for tree in (True, None):
        with pytest.raises(ModelError, match="lacks .*norm.weight"):
            Engine(str(lacking), device="cpu", native=tree)
    # A config value that is no number: transformers' classes take the folder, and say what is wrong.
    odd = tmp_path / "odd"
    shutil.copytree(tiny_model_dir, odd)
    config = json.loads((odd / "config.json").read_text())
    config["text_config"]["rms_norm_eps"] = None
    (odd / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="cannot load the model"):
        Engine(str(odd), device="cpu", native=True)
    # No tokenizer at all: one error, from either path (transformers would build an empty one).
    older = tmp_path / "older"
    shutil.copytree(tiny_model_dir, older)
    (older / "tokenizer.json").unlink()
    for tree in (True, None):
        with pytest.raises(ModelError, match="no tokenizer"):
            Engine(str(older), device="cpu", native=tree)


def test_frames_of_other_sizes_take_the_processors_resize(engine, native_engine):
    """Frames qvl's decoder did not size (sides not multiples of 28), handed over through the API."""
    from qvl.engine import Request, VideoFrames

    frames = np.random.default_rng(4).integers(0, 255, (3, 57, 113, 3), dtype=np.uint8)
    request = Request("What happens?", video=VideoFrames(frames, 2.0), max_new_tokens=8)
    assert native_engine.generate(request).tokens == engine.generate(request, fast=False).tokens


def _requests():
    from qvl.engine import Request, VideoFrames

    rng = np.random.default_rng(5)
    clip = VideoFrames(
        rng.integers(0, 255, (7, 112, 84, 3), dtype=np.uint8), sampled_fps=1.5
    )  # odd: one frame repeated
    picture = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    return {
        "video": Request("What happens? Ünïcode, «quotes» and <tags>.", video=clip),
        "video after turns": Request("And then?", video=clip, history=[("What happens?", "A dog runs.")]),
        "images": Request("Compare them.", images=[picture, picture]),
        "text": Request("Hello"),
    }


def test_the_chat_template_renders_as_transformers_renders_it(engine, tiny_model_dir):
    from qvl.engine.native_inputs import ChatTemplate

    template = ChatTemplate(tiny_model_dir)
    for name, request in _requests().items():
        messages = engine.chat_messages(request)
        assert template.render(messages) == engine.chat_text(request), name


def test_the_chat_template_is_found_where_newer_saves_keep_it(engine, tiny_model_dir, tmp_path):
    """transformers' newer releases save the template as chat_template.jinja."""
    from qvl.engine.native_inputs import ChatTemplate

    shutil.copytree(tiny_model_dir, tmp_path / "model")
    folder = tmp_path / "model"
    template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
    (folder / "chat_template.json").unlink()
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    request = _requests()["video"]
    assert ChatTemplate(folder).render(engine.chat_messages(request)) == engine.chat_text(request)


def test_the_tokenizer_encodes_and_decodes_as_transformers_does(engine, tiny_model_dir):
    from qvl.engine.native_inputs import Tokenizer

    ours, theirs = Tokenizer(tiny_model_dir), engine.processor.tokenizer
    text = engine.chat_text(_requests()["video"]) + " trailing  spaces\n\nand lines"
    ids = ours.encode(text)
    assert ids == theirs([text])["input_ids"][0]
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    assert (ours.eos_token_id, ours.pad_token_id) == (theirs.eos_token_id, theirs.pad_token_id)


@pytest.mark.parametrize("name", ["video", "video after turns"])
def test_a_videos_inputs_equal_the_processors(engine, tiny_model_dir, name):
    from qvl.engine.native_inputs import Tokenizer, VideoPixels, video_inputs

    request = _requests()[name]
    theirs = engine.prepare(request)
    frames = torch.from_numpy(request.video.frames)
    ours = video_inputs(
        Tokenizer(tiny_model_dir),
        VideoPixels(tiny_model_dir),
        engine.chat_text(request),
        frames,
        request.video.sampled_fps,
        engine.model.config.video_token_id,
    )
    for key, value in ours.items():
        assert value.dtype == theirs[key].dtype and torch.equal(value, theirs[key]), key


def test_a_question_after_kept_media_matches_transformers_forward(engine, tiny_model_dir, tensors):
    """A session's question on top of the media's cache (`prefill_text`): on qvl's tree through
    the prompt loop with an offset, on transformers' through its own forward; the same cache and
    the same next-token logits."""
    from qvl.engine.decode import Sampling, StaticDecoder
    from qvl.engine.prefill import prefill, prefill_text

    request = _requests()["video"]
    inputs = engine.prepare(request)
    question = torch.tensor([[11, 42, 7, 300, 5]])
    results = []
    for model in (native.build(tiny_model_dir, tensors, torch.float32), engine.model):
        decoder = StaticDecoder(model, 512, Sampling(), use_graph=False)
        with torch.inference_mode():
            done = prefill(model, inputs, lambda decoder=decoder: decoder)
            offset = inputs["input_ids"].shape[1]
            logits = prefill_text(model, question, offset, done.text_delta, decoder)
        end = offset + question.shape[1]
        results.append((logits, decoder.keys[:, :, :end].clone(), decoder.values[:, :, :end].clone()))
    (ours, our_keys, our_values), (theirs, their_keys, their_values) = results
    assert torch.allclose(our_keys, their_keys, atol=1e-5) and torch.allclose(our_values, their_values, atol=1e-5)
    assert torch.allclose(ours, theirs, atol=1e-4) and int(ours.argmax()) == int(theirs.argmax())


def test_requests_decoded_together_on_it_give_the_stock_tokens(engine, tiny_model_dir, tensors):
    from qvl.engine import Request, VideoFrames
    from qvl.engine.generate import FastGenerator, eos_ids

    rng = np.random.default_rng(9)
    requests = [
        Request(prompt, video=VideoFrames(rng.integers(0, 255, (n, 112, 84, 3), dtype=np.uint8), 2.0), max_new_tokens=8)
        for prompt, n in (("What happens?", 8), ("Which colours?", 4))
    ]
    ours = native.build(tiny_model_dir, tensors, torch.float32)
    with torch.inference_mode():
        rows = FastGenerator(ours, use_graph=False).generate_rows(
            [engine.prepare(r) for r in requests], requests, eos_ids(ours, engine.processor.tokenizer)
        )
    assert [row.tokens for row in rows] == [engine.generate(r, fast=False).tokens for r in requests]


def test_a_template_kept_only_by_the_tokenizer_serves_both_paths(engine, tiny_model_dir, tmp_path):
    """No chat_template.json: the processor has no template of its own, and both paths take the
    tokenizer's (transformers' processor alone would refuse to render)."""
    from qvl.engine import Engine

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "chat_template.json").unlink()
    request = _requests()["video"]
    for tree in (False, True):
        assert Engine(str(folder), device="cpu", native=tree).chat_text(request) == engine.chat_text(request)


def test_a_random_preset_has_transformers_shapes_and_draws(tiny_model_dir):
    """random:<preset> on the tree: the published architecture's parameters, named and shaped as
    transformers' model of the same config, drawn as transformers draws an untrained one."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from qvl.engine.load import random_config

    for size in ("3b", "7b"):
        raw = random_config(size, tiny_model_dir)
        with torch.device("meta"):
            ours = native.NativeModel(native.config_from_dict(raw), native.Config())
            theirs = Qwen2_5_VLForConditionalGeneration._from_config(Qwen2_5_VLConfig(**raw))
        shapes = {name: tuple(t.shape) for name, t in ours.state_dict().items()}
        assert shapes == {name: tuple(t.shape) for name, t in theirs.state_dict().items()}, size
    # The values, on the tiny architecture: in the dtype asked for, spread as transformers' are.
    raw = json.loads((tiny_model_dir / "config.json").read_text())
    ours = native.random_model(native.config_from_dict(raw), native.Config(), "cpu", torch.bfloat16)
    theirs = Qwen2_5_VLForConditionalGeneration._from_config(Qwen2_5_VLConfig(**raw), dtype=torch.bfloat16)
    theirs_state = theirs.state_dict()
    for name, tensor in ours.state_dict().items():
        other = theirs_state[name]
        assert tensor.dtype == torch.bfloat16 and tensor.device.type == "cpu", name
        if other.numel() < 256 or other.float().std() == 0:  # biases, norms: the constants themselves
            assert torch.equal(tensor, other), name
        else:
            assert abs(tensor.float().std() - other.float().std()) < 0.1 * other.float().std(), name
            assert abs(tensor.float().mean()) < 0.01, name


def test_a_random_preset_on_the_tree_answers_as_transformers_with_its_weights(tiny_model_dir, monkeypatch):
    """`Engine("random:<preset>", native=True)` (the default on one GPU): the tree with random
    weights and qvl's processor; transformers' model holding the same weights gives its tokens."""
    import dataclasses

    from qvl.architectures import ARCHITECTURES
    from qvl.engine import Engine, Request

    raw = json.loads((tiny_model_dir / "config.json").read_text())
    monkeypatch.setitem(
        ARCHITECTURES,
        "tiny-test",
        {"text": raw["text_config"], "vision": raw["vision_config"], "tie_word_embeddings": False},
    )
    tree = Engine("random:tiny-test", device="cpu", native=True)
    stock = Engine("random:tiny-test", device="cpu")
    assert tree.native and not stock.native and tree.random_weights
    stock.model.load_state_dict(tree.model.state_dict(), strict=False)
    for request in (dataclasses.replace(_requests()["video"], max_new_tokens=8), Request("Hello", max_new_tokens=8)):
        assert tree.generate(request).tokens == stock.generate(request, fast=False).tokens
