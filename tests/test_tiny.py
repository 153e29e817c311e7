"""The tiny model: built offline, deterministic, loadable, and it generates from images and video."""

import hashlib
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from qvl import tiny
from qvl.tiny import SPECIAL_TOKENS, TINY_VERSION, build_tiny_model, tiny_model_dir


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("qvl-cache"))


@pytest.fixture(scope="session")
def loaded(tiny_dir):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_dir)
    return model, processor


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _generate(model, processor, content, **media):
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], return_tensors="pt", **media)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    return inputs, new, processor.decode(new, skip_special_tokens=True)


def test_folder_layout_and_name(tiny_dir):
    assert tiny_dir.name == f"tiny-{TINY_VERSION}"
    assert tiny_dir.parent.name == "models"
    names = {p.name for p in tiny_dir.iterdir()}
    for required in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.json",
        "preprocessor_config.json",
        "video_preprocessor_config.json",
    ):
        assert required in names
    assert not [n for n in tiny_dir.parent.iterdir() if ".tmp-" in n.name], "temporary build folder left"


def test_reused_without_rebuilding(tiny_dir):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_dir.iterdir()}
    start = time.perf_counter()
    assert tiny_model_dir(tiny_dir.parent.parent) == tiny_dir
    assert time.perf_counter() - start < 0.1
    assert {p.name: p.stat().st_mtime_ns for p in tiny_dir.iterdir()} == before


def test_cache_root_from_env(tiny_dir, monkeypatch):
    monkeypatch.setenv("QVL_CACHE_DIR", str(tiny_dir.parent.parent))
    assert tiny_model_dir() == tiny_dir


def test_deterministic_bytes(tiny_dir, tmp_path):
    a = build_tiny_model(tmp_path / "a")
    b = build_tiny_model(tmp_path / "b")
    assert _hashes(a) == _hashes(b) == _hashes(tiny_dir)


def test_build_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    build_tiny_model(tmp_path / "x")
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer_special_tokens_and_round_trip(loaded):
    _, processor = loaded
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    for t, i in zip(SPECIAL_TOKENS, ids):
        assert tok.encode(t, add_special_tokens=False) == [i]
    text = "Describe the video in one sentence. 请总结这个视频。 It's 12:45, ok?"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert max(tok.get_vocab().values()) < loaded[0].config.text_config.vocab_size


def test_config_matches_tokenizer(loaded):
    model, processor = loaded
    tok, cfg = processor.tokenizer, model.config
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert set(model.generation_config.eos_token_id) == {
        tok.convert_tokens_to_ids("<|im_end|>"),
        tok.convert_tokens_to_ids("<|endoftext|>"),
    }
    assert model.dtype == torch.float32


def test_chat_template_is_qwen(loaded):
    _, processor = loaded
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Hi"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>Hi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_generates_from_image(loaded):
    from PIL import Image

    model, processor = loaded
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 420, 3), dtype=np.uint8))
    start = time.perf_counter()
    inputs, new, text = _generate(
        model, processor, [{"type": "image"}, {"type": "text", "text": "What is this?"}], images=[image]
    )
    elapsed = time.perf_counter() - start
    assert inputs["image_grid_thw"].prod() // 4 <= 16  # small pixel budget: at most 16 tokens
    assert 1 <= len(new) <= 8 and isinstance(text, str)
    assert elapsed < 10  # well under a second on an idle CPU; generous for loaded CI machines


def test_generates_from_video_frames(loaded):
    model, processor = loaded
    frames = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (8, 3, 96, 128), dtype=np.uint8))
    inputs, new, text = _generate(
        model, processor, [{"type": "video"}, {"type": "text", "text": "Summarize."}], videos=[frames]
    )
    t, h, w = inputs["video_grid_thw"][0].tolist()
    assert t == 4  # 8 frames, temporal patch 2
    assert (inputs["input_ids"] == model.config.video_token_id).sum() == t * h * w // 4
    assert 1 <= len(new) <= 8 and isinstance(text, str)


def test_same_answer_every_time(loaded):
    model, processor = loaded
    content = [{"type": "text", "text": "Hello"}]
    assert _generate(model, processor, content)[2] == _generate(model, processor, content)[2]


def test_stale_temporary_build_is_removed(tmp_path):
    models = tmp_path / "models"
    stale = models / f".tiny-{TINY_VERSION}.tmp-dead-xyz"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    path = tiny_model_dir(tmp_path)
    assert not stale.exists()
    assert (path / "model.safetensors").is_file()


def test_loser_of_a_build_race_keeps_the_winner(tiny_dir, tmp_path):
    # Another builder renamed its complete folder into place while this one was building: the
    # rename fails, the winner's folder stays untouched and this build is thrown away.
    final = tmp_path / "models" / f"tiny-{TINY_VERSION}"
    final.parent.mkdir(parents=True)
    shutil.copytree(tiny_dir, final)
    (final / "winner").write_text("")
    tiny._build_into(final)
    assert (final / "winner").is_file()
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]


def test_incomplete_folder_is_replaced(tmp_path):
    # A folder without the completion marker (say, copied by hand and cut short) is rebuilt.
    final = tmp_path / "models" / f"tiny-{TINY_VERSION}"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    assert tiny_model_dir(tmp_path) == final
    assert tiny._is_complete(final) and (final / "model.safetensors").is_file()
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]


def test_unwritable_cache_is_one_model_error(tmp_path):
    from fs_helpers import unwritable_dir

    from qvl.errors import ModelError

    root = unwritable_dir(tmp_path)
    with pytest.raises(ModelError) as err:
        tiny_model_dir(root)
    message = str(err.value)
    assert str(root) in message and "QVL_CACHE_DIR" in message and "\n" not in message
