"""Device and dtype choice, and loading a model + processor: from a folder, or random:<preset>."""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Any

from qvl.errors import ModelError, OptionError, first_line

if TYPE_CHECKING:
    import torch

    from qvl.models import ResolvedModel

DEVICES = ("auto", "cuda", "cpu")
DTYPES = ("auto", "bfloat16", "float16", "float32")
# Fraction of free GPU memory the weights may take before we spread the model with device_map="auto":
# the rest is left for activations and the KV cache of long videos.
_FIT_FRACTION = 0.8


def check_device(device: str) -> None:
    """Reject an unknown --device before anything heavy is imported."""
    if device not in DEVICES:
        raise OptionError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise OptionError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")


def resolve_device(device: str) -> str:
    import torch

    check_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device cuda: no CUDA device is available on this machine")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    import torch

    check_dtype(dtype)
    if dtype == "auto":
        # bf16 where the GPU has it; CPU matmuls in half precision are slow and lossy, so fp32 there.
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


def hide_load_progress() -> None:
    """No progress bars from the Hub's downloads or transformers' weight loading. Imports nothing
    heavy: transformers takes the Hub's switch when it is imported, so it is told itself only where
    it is imported already."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        hf_logging.disable_progress_bar()


def load_model(
    resolved: ResolvedModel, device: str, dtype, attn_implementation, *, native: bool | None = None, psa: bool = False
):
    """(model, processor) ready for inference: qvl's own module tree and processor (`engine.native`)
    where `native` asks for them and the checkpoint loads into them (None: where the weights are
    read straight onto one GPU, or a random:<preset> model's are made on one, and no
    `attn_implementation` asks for transformers' attention), else transformers'. psa: the
    prompt's attention through PSA wherever a request sets it."""
    if resolved.random is None:
        check_tokenizer(resolved.path)
    # Started before transformers is imported, which the read then overlaps.
    reader = None if resolved.random is not None else _weight_reader(resolved.path, device, dtype)
    one_gpu = reader is not None or (resolved.random is not None and device == "cuda")
    wanted = native if native is not None else one_gpu
    try:
        if wanted and attn_implementation is None:
            if resolved.random is not None:
                tree = _random_tree(resolved, device, dtype)
            else:
                tree, reader = _native_model(resolved.path, device, dtype, reader)
            if tree is not None:
                if psa:
                    from qvl.engine.native import use_psa

                    use_psa(tree[0])
                return tree
        if psa:
            from qvl.psa import attn_implementation as psa_attn_implementation

            attn_implementation = psa_attn_implementation()
        if resolved.random is not None:
            model = _random_model(resolved, device, dtype, attn_implementation)
        else:  # no weight bar where the weights are in memory already, or a few KB
            quiet = reader is not None or resolved.is_tiny
            with _without_weight_bar() if quiet else contextlib.nullcontext():
                model = _pretrained_model(resolved.path, device, dtype, attn_implementation, reader)
    except BaseException:
        if reader is not None:  # an error may end the process: not while the read's threads copy to the GPU
            reader.tensors()
        raise
    from qvl.engine import rope_index

    rope_index.install(model)  # the published model's positions, whichever transformers is installed
    processor = load_processor(resolved.path)
    model.eval()
    return model, processor


def load_processor(path):
    """transformers' processor for the model in `path`, with the tokenizer's chat template where
    the processor has none of its own; a `ModelError` where it cannot be loaded."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path)
    except ImportError:
        raise
    except Exception as exc:  # noqa: BLE001 - a missing or damaged file, a config's value
        raise ModelError(f"cannot load the processor from {path}: {first_line(exc)}") from None
    if getattr(processor, "chat_template", None) is None:
        processor.chat_template = getattr(processor.tokenizer, "chat_template", None)
    return processor


def check_tokenizer(path) -> None:
    """A `ModelError` where `path` holds no tokenizer (transformers would build an empty one)."""
    if not (path / "tokenizer.json").is_file() and not (path / "vocab.json").is_file():
        raise ModelError(f"cannot load the model from {path}: it has no tokenizer (tokenizer.json)")


def _native_model(path, device: str, dtype, reader=None):
    """((qvl's tree, its processor), None) over the checkpoint in `path` (the tensors `reader` has
    read, or the files read here); (None, a reader of the tensors already read, or None) where the
    folder is not what the tree reads: transformers' classes then load it, from those tensors."""
    from qvl.engine import native
    from qvl.engine.native_inputs import NativeProcessor
    from qvl.engine.weights import WeightReader, checkpoint_files

    tensors = None
    try:
        config = native.read_config(path)
        text, vision = config.text_config, config.vision_config
        if text.hidden_act != "silu" or vision.hidden_act != "silu" or text.use_sliding_window:
            return None, reader  # not what the tree implements
        processor = NativeProcessor(path, config.image_token_id, config.video_token_id)
        tensors = (reader or WeightReader(checkpoint_files(path), device)).tensors()
        if tensors:
            return (native.build(path, tensors, dtype, config), processor), None
    except Exception:  # noqa: BLE001 - anything the tree cannot read (a name, a shape, a tokenizer's format)
        pass
    return None, (_Read(tensors) if tensors and reader is not None else reader)


class _Read:
    """Tensors read already, handed over as a `WeightReader` hands over its own."""

    def __init__(self, tensors: dict):
        self._tensors: dict | None = tensors

    def tensors(self) -> dict | None:
        tensors, self._tensors = self._tensors, None
        return tensors


@contextlib.contextmanager
def _without_weight_bar():
    """No "Loading weights" bar from transformers where it would measure nothing: tensors that qvl
    has read already, the tiny model's few kilobytes."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _weight_reader(path, device: str, dtype):
    """A `WeightReader` of the checkpoint onto one GPU, where that is where the model goes and the
    files hold `dtype` already (a conversion would keep both copies at once); else None."""
    import torch

    from qvl.engine.weights import WeightReader, checkpoint_files, stored_dtype

    if device != "cuda" or stored_dtype(path) != str(dtype).removeprefix("torch."):
        return None
    files = checkpoint_files(path)
    if not files or not fits(sum(f.stat().st_size for f in files), torch.cuda.mem_get_info()[0]):
        return None
    return WeightReader(files, "cuda")


def _pretrained_model(path, device: str, dtype, attn_implementation, reader=None):
    """The model from its folder; from the tensors `reader` has read where it has them all."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    # transformers swaps layers for Hub kernels by default where the `kernels` package is installed
    # (a dependency of newer releases): that downloads code at load, which fails offline, and the
    # swapped layers are neither the stock ones the fast paths are checked against nor ones they use.
    # output_loading_info: which weights the checkpoint lacked (transformers leaves them random).
    kwargs: dict[str, Any] = {"dtype": dtype, "use_kernels": False, "output_loading_info": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if device == "cuda":
        # A reader exists only where the weights fit one GPU; asking the GPU again would count the
        # weights it is reading as taken.
        kwargs["device_map"] = "cuda" if reader is not None or _fits_one_gpu(path) else "auto"
    tensors = reader.tensors() if reader is not None else None
    try:
        if tensors is not None:
            config = Qwen2_5_VLConfig.from_pretrained(path)
            with _without_load_report():
                loaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                    None, config=config, state_dict=tensors, **kwargs
                )
            model = _complete(loaded, path)
            with contextlib.suppress(OSError):  # from_pretrained(path) too goes on without one
                model.generation_config = GenerationConfig.from_pretrained(path)
            return model
        with _without_load_report():
            loaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, **kwargs)
        return _complete(loaded, path)
    except ModelError:
        raise
    except torch.cuda.OutOfMemoryError:
        raise ModelError(f"the model in {path} does not fit in GPU memory; try a smaller one (--model 3b)") from None
    except ImportError:  # a broken install, which the engine says as such
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file, a config's value, a tensor's shape
        raise ModelError(f"cannot load the model from {path}: {first_line(exc)}") from None


@contextlib.contextmanager
def _without_load_report():
    """No warnings from transformers while it loads (its "LOAD REPORT" table, the layers its
    tensor-parallel plan left alone): what they report, qvl says in one line (a missing weight,
    `_complete`) or raises (a tensor of another shape)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _complete(loaded, path):
    """The model of `from_pretrained(..., output_loading_info=True)`; a `ModelError` where the
    checkpoint lacked any of its weights, which would answer at random."""
    model, info = loaded if isinstance(loaded, tuple) else (loaded, {})
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelError(f"cannot load the model from {path}: its checkpoint lacks {missing[0]}{more}")
    return model


def random_config(size: str, tiny_path) -> dict:
    """config.json's contents for the published architecture of `size`, with the tiny tokenizer's
    special-token ids."""
    import json

    from qvl.architectures import ARCHITECTURES

    arch = ARCHITECTURES[size]
    tiny = json.loads((tiny_path / "config.json").read_text())
    ids = {k: tiny[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    tiny_text = tiny["text_config"]
    text = {**arch["text"], **{k: tiny_text[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}}
    return {
        "text_config": text,
        "vision_config": dict(arch["vision"]),
        "tie_word_embeddings": arch["tie_word_embeddings"],
        **ids,
    }


def _random_tree(resolved: ResolvedModel, device: str, dtype):
    """(qvl's tree with random weights, its processor) for a random:<preset> model."""
    from qvl.engine import native
    from qvl.engine.native_inputs import NativeProcessor

    config = native.config_from_dict(random_config(resolved.random, resolved.path))
    _check_random_fits(resolved, config, device, dtype)
    model = native.random_model(config, native.read_generation_config(resolved.path), device, dtype)
    return model, NativeProcessor(resolved.path, config.image_token_id, config.video_token_id)


def _random_model(resolved: ResolvedModel, device: str, dtype, attn_implementation):
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(**random_config(resolved.random, resolved.path))
    _check_random_fits(resolved, config, device, dtype)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, **kwargs)
    model.generation_config = GenerationConfig.from_pretrained(resolved.path)
    return model


def _check_random_fits(resolved: ResolvedModel, config, device: str, dtype) -> None:
    """A `ModelError` before any allocation where a random:<preset> model's weights cannot fit."""
    import torch

    need = _parameter_count(config) * torch.empty((), dtype=dtype).element_size()
    free, where = free_memory(device)
    if not fits(need, free):
        halved = dtype == torch.float32 and fits(need // 2, free)
        halve = ", --dtype bfloat16 (half the memory)" if halved else ""
        raise ModelError(
            f"{resolved.name} needs {need / 2**30:.0f} GiB for its weights and {where} has "
            f"{free / 2**30:.0f} GiB free; try a smaller one (random:3b){halve} or the tiny model"
        )


def free_memory(device: str) -> tuple[int | None, str]:
    """Bytes a new allocation on `device` can take (None where the system does not say), and what
    to call that memory in a message: the GPU's free memory plus what torch holds unused, or the
    machine's available RAM."""
    if device == "cuda":
        import torch

        unused = torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
        return torch.cuda.mem_get_info()[0] + unused, "this GPU"
    return _free_ram(), "this machine"


def fits(need: int, free: int | None) -> bool:
    """Whether `need` bytes leave room in `free` for activations (True where `free` is unknown)."""
    return free is None or need <= _FIT_FRACTION * free


def _free_ram() -> int | None:
    """Bytes of memory available to a new allocation (None where the system does not say)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _parameter_count(config) -> int:
    """Parameters of a Qwen2.5-VL config, from its shapes (biases and norms left out)."""
    t, v = config.text_config, config.vision_config
    head_dim = t.hidden_size // t.num_attention_heads
    attn = t.hidden_size * (t.num_attention_heads + 2 * t.num_key_value_heads) * head_dim
    attn += t.num_attention_heads * head_dim * t.hidden_size
    layer = attn + 3 * t.hidden_size * t.intermediate_size
    embeddings = t.vocab_size * t.hidden_size * (1 if config.tie_word_embeddings else 2)
    vision_layer = 4 * v.hidden_size**2 + 3 * v.hidden_size * v.intermediate_size
    merger = (4 * v.hidden_size) ** 2 + 4 * v.hidden_size * v.out_hidden_size
    return t.num_hidden_layers * layer + embeddings + v.depth * vision_layer + merger


def _fits_one_gpu(path) -> bool:
    import torch

    weights = sum(p.stat().st_size for p in path.glob("*.safetensors")) or sum(
        p.stat().st_size for p in path.glob("*.bin")
    )
    return fits(weights, torch.cuda.mem_get_info()[0]) or torch.cuda.device_count() == 1
