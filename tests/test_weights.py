"""The checkpoint read on a thread (qvl/engine/weights.py) builds the model `from_pretrained(path)` builds."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from qvl.engine.load import _pretrained_model
from qvl.engine.weights import WeightReader, checkpoint_files, read_safetensors, stored_dtype
from qvl.errors import ModelError


def _same_models(a, b) -> None:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert a.generation_config.to_dict() == b.generation_config.to_dict()


def _mixed_checkpoint(path):
    """A safetensors file of every common dtype, odd sizes, a scalar and an empty tensor."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    tensors = {
        "bf16": torch.randn(37, 13, generator=generator).to(torch.bfloat16),
        "f16": torch.randn(5, 3, 7, generator=generator).to(torch.float16),
        "f32": torch.randn(101, generator=generator),
        "f64": torch.randn(3, 3, generator=generator, dtype=torch.float64),
        "i64": torch.randint(-(2**40), 2**40, (9,), generator=generator),
        "i8": torch.randint(-128, 127, (11, 2), generator=generator, dtype=torch.int8),
        "bool": torch.rand(17, generator=generator) > 0.5,
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
    }
    save_file(tensors, path, metadata={"format": "pt"})
    return tensors


@pytest.mark.parametrize("chunk_bytes, lanes", [(37, 3), (64, 1), (1 << 20, 4)])
def test_the_chunked_read_gives_the_files_tensors(tmp_path, chunk_bytes, lanes):
    """Chunks smaller than a tensor, chunks that split one between two threads, and one chunk."""
    from safetensors.torch import load_file

    expected = _mixed_checkpoint(tmp_path / "mixed.safetensors")
    read = read_safetensors(tmp_path / "mixed.safetensors", "cpu", chunk_bytes, lanes)
    theirs = load_file(tmp_path / "mixed.safetensors")
    assert read.keys() == expected.keys() == theirs.keys()
    for name, tensor in read.items():
        assert tensor.dtype == theirs[name].dtype and tensor.shape == theirs[name].shape
        assert torch.equal(tensor, theirs[name]) and torch.equal(tensor, expected[name])


@pytest.mark.gpu
def test_the_chunked_read_onto_the_gpu_gives_the_files_tensors(tmp_path):
    from safetensors.torch import load_file

    _mixed_checkpoint(tmp_path / "mixed.safetensors")
    read = read_safetensors(tmp_path / "mixed.safetensors", "cuda", chunk_bytes=53, lanes=3)
    theirs = load_file(tmp_path / "mixed.safetensors")
    assert all(t.is_cuda and torch.equal(t.cpu(), theirs[k]) for k, t in read.items())


def test_a_file_that_ends_early_or_is_not_safetensors_is_refused(tmp_path):
    _mixed_checkpoint(tmp_path / "mixed.safetensors")
    data = (tmp_path / "mixed.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-5])
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    for name in ("cut", "junk"):
        with pytest.raises(ValueError):
            read_safetensors(tmp_path / f"{name}.safetensors", "cpu", chunk_bytes=40, lanes=2)


@pytest.mark.parametrize("offsets", [[[0, 16], [8, 24]], [[-8, 8], [8, 24]]], ids=["overlapping", "negative"])
def test_a_header_whose_tensors_overlap_or_reach_into_it_is_refused(tmp_path, offsets):
    """safetensors refuses these; a read that took them would leave bytes unset."""
    import struct

    header = {name: {"dtype": "F32", "shape": [4], "data_offsets": o} for name, o in zip("ab", offsets)}
    raw = json.dumps(header).encode()
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(24))
    with pytest.raises(ValueError, match="overlap|header"):
        read_safetensors(tmp_path / "bad.safetensors", "cpu", chunk_bytes=16, lanes=2)


def test_a_model_from_the_read_tensors_is_the_model_from_its_folder(tiny_model_dir):
    reader = WeightReader(checkpoint_files(tiny_model_dir), "cpu")
    model = _pretrained_model(tiny_model_dir, "cpu", torch.float32, None, reader)
    _same_models(model, _pretrained_model(tiny_model_dir, "cpu", torch.float32, None))
    kept = {p.data_ptr() for p in model.parameters()}
    assert len(kept) == len(list(model.parameters()))  # built in place: no second copy of any weight


def test_the_stock_layers_are_loaded_not_hub_kernels(tiny_model_dir):
    """transformers kernelizes by default where `kernels` is installed, fetching code from the Hub
    (on a GPU offline: the load fails); qvl keeps the layers its fast paths are checked against."""
    for reader in (None, WeightReader(checkpoint_files(tiny_model_dir), "cpu")):
        model = _pretrained_model(tiny_model_dir, "cpu", torch.float32, None, reader)
        assert not getattr(model, "use_kernels", False)


def test_tied_embeddings_and_shards_come_out_the_same(tiny_model_dir, tmp_path):
    """A checkpoint that leaves the tied lm_head out and is cut into shards with an index."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    source = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    source.config.tie_word_embeddings = source.config.text_config.tie_word_embeddings = True
    source.tie_weights()
    folder = tmp_path / "tied"
    source.save_pretrained(folder, max_shard_size="200KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(tiny_model_dir / name, folder / name)
    files = checkpoint_files(folder)
    assert len(files) > 1 and (folder / "model.safetensors.index.json").is_file()
    model = _pretrained_model(folder, "cpu", torch.float32, None, WeightReader(files, "cpu"))
    _same_models(model, _pretrained_model(folder, "cpu", torch.float32, None))
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_a_broken_shard_is_reported_by_the_usual_load(tiny_model_dir, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    reader = WeightReader(checkpoint_files(folder), "cpu")
    assert reader.tensors() is None
    with pytest.raises(ModelError, match="cannot load the model from"):
        _pretrained_model(folder, "cpu", torch.float32, None, WeightReader(checkpoint_files(folder), "cpu"))


def test_which_files_and_which_dtype(tmp_path):
    assert checkpoint_files(tmp_path) == [] and stored_dtype(tmp_path) is None
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert checkpoint_files(tmp_path) == [tmp_path / "model.safetensors"]
    index = {"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert [f.name for f in checkpoint_files(tmp_path)] == sorted(set(index["weight_map"].values()))
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert stored_dtype(tmp_path) == "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps({"dtype": "float32", "torch_dtype": "bfloat16"}))
    assert stored_dtype(tmp_path) == "float32"
