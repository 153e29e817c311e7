"""The checkpoint read on a thread (qvl/engine/weights.py) builds the model `from_pretrained(path)` builds."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from qvl.engine.load import _pretrained_model
from qvl.engine.weights import WeightReader, checkpoint_files, stored_dtype
from qvl.errors import ModelError


def _same_models(a, b) -> None:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert a.generation_config.to_dict() == b.generation_config.to_dict()


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
