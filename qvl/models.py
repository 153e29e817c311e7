"""Model presets, resolving a model spec to a local folder, and downloading weights.

A model spec is one of:
  - a preset: ``3b``, ``7b``, ``72b`` (the Qwen2.5-VL Instruct repos) or ``tiny`` (built offline);
  - a Hugging Face Hub id such as ``Qwen/Qwen2.5-VL-7B-Instruct``;
  - a local folder holding ``config.json`` and weights;
  - ``random:3b``, ``random:7b``, ``random:72b``: the published architecture with random weights and
    the tiny model's tokenizer, built on the device in seconds and never written to disk, for
    measuring a machine without downloading weights (its answers are random text).

Hub weights live in the Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``), which is always looked
at first, so a downloaded model never touches the network. When a model is missing, qvl downloads
it unless ``HF_HUB_OFFLINE`` is set; when the Hub cannot be reached it fails within a few seconds
with one line naming the exact ``qvl download`` command.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from qvl.architectures import ARCHITECTURES
from qvl.errors import ModelError

TINY_SENTINEL = "qvl/tiny"
RANDOM_PREFIX = "random:"
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"

PRESETS: dict[str, str] = {
    "3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "72b": "Qwen/Qwen2.5-VL-72B-Instruct",
    "tiny": TINY_SENTINEL,
}


@dataclass(frozen=True)
class ModelInfo:
    """What a preset costs: parameters, bf16 weight size, and the GPU memory we suggest."""

    params_b: float  # billions of parameters
    weights_gb: float  # bf16 weights on disk and in GPU memory, GB
    gpu_memory_gb: str  # suggested GPU memory for moderate video lengths
    layers: int
    hidden: int


MODEL_INFO: dict[str, ModelInfo] = {
    "3b": ModelInfo(3.75, 7.5, "16 GB or more", 36, 2048),
    "7b": ModelInfo(8.29, 16.6, "24 GB or more (80 GB for long videos)", 28, 3584),
    "72b": ModelInfo(73.4, 146.8, "several 80 GB GPUs", 80, 8192),
    "tiny": ModelInfo(0.0002, 0.001, "none (runs on the CPU)", 2, 64),
}

# The files a Qwen2.5-VL folder needs; README, LICENSE and other formats are left on the Hub.
DOWNLOAD_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
]
# Used instead of the safetensors patterns when a repo has no safetensors weights.
BIN_PATTERNS = ["*.bin", "*.bin.index.json"]

_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec turned into a folder that ``from_pretrained`` can load without the network."""

    spec: str
    repo_id: str | None  # the Hub id, or None for a local folder and for tiny
    path: Path
    is_tiny: bool = False
    revision: str | None = None
    random: str | None = None  # the preset whose architecture a random:<preset> model has

    @property
    def random_weights(self) -> bool:
        """True for models whose answers are random text (tiny, random:<preset>)."""
        return self.is_tiny or self.random is not None

    @property
    def name(self) -> str:
        """A short display name: the preset, the Hub id or the folder."""
        if self.is_tiny:
            return "tiny"
        if self.random is not None:
            return RANDOM_PREFIX + self.random
        return self.repo_id or str(self.path)


def default_model_spec() -> str:
    """The model used when none is given: ``$QVL_MODEL``, else ``DEFAULT_MODEL``."""
    return os.environ.get("QVL_MODEL", "").strip() or DEFAULT_MODEL


def preset_for(repo_id: str) -> str | None:
    """The preset name of a Hub id (``Qwen/Qwen2.5-VL-7B-Instruct`` -> ``7b``), if it has one."""
    for name, rid in PRESETS.items():
        if rid.lower() == repo_id.lower():
            return name
    return None


def download_command(repo_id: str, revision: str | None = None) -> str:
    """The exact ``qvl download`` command for a Hub id, using the preset name where there is one,
    quoted for a shell."""
    cmd = f"qvl download {shlex.quote(preset_for(repo_id) or repo_id)}"
    if revision:
        cmd += f" --revision {shlex.quote(revision)}"
    return cmd


def resolve_model(spec: str | None, *, revision: str | None = None, allow_download: bool = True) -> ResolvedModel:
    """Turn a model spec into a local folder, downloading Hub weights if needed and allowed.

    Order: the tiny preset (built on first use), an existing local folder, then a preset or Hub id
    looked up in the Hugging Face cache, then (unless offline or ``allow_download`` is False) a
    download with progress bars on stderr. Raises ``ModelError`` for an unknown preset, a folder
    without weights, or a missing model when the Hub is unreachable.
    """
    spec = (spec or default_model_spec()).strip()
    kind, value = _classify(spec)
    if kind == "tiny":
        from qvl.tiny import tiny_model_dir

        return ResolvedModel(spec=spec, repo_id=None, path=tiny_model_dir(), is_tiny=True)
    if kind == "random":
        from qvl.tiny import tiny_model_dir

        # The tiny model's folder supplies the tokenizer and processor; the weights are made in memory.
        return ResolvedModel(spec=spec, repo_id=None, path=tiny_model_dir(), random=value)
    if kind == "folder":
        path = Path(value).expanduser().resolve()
        check_model_folder(path)
        return ResolvedModel(spec=spec, repo_id=None, path=path, is_tiny=_looks_tiny(path))

    repo_id = value
    cached, problem = _cached_snapshot(repo_id, revision)
    if cached is not None:
        return ResolvedModel(spec=spec, repo_id=repo_id, path=cached, revision=revision)
    cmd = download_command(repo_id, revision)
    state = f"is only partly downloaded ({problem})" if problem else "is not downloaded"
    if is_offline():
        raise ModelError(f"model {repo_id} {state} and HF_HUB_OFFLINE is set; with network, run: {cmd}")
    if not allow_download:
        raise ModelError(f"model {repo_id} {state}; run: {cmd}")
    path = _download_repo(repo_id, revision=revision, local_dir=None)
    return ResolvedModel(spec=spec, repo_id=repo_id, path=path, revision=revision)


def download(spec: str, *, revision: str | None = None, local_dir: str | Path | None = None) -> Path:
    """Fetch a preset or Hub id with progress bars on stderr and return its folder.

    Only the files a Qwen2.5-VL folder needs are fetched (configs, tokenizer, processor, chat
    template, safetensors weights and their index). ``tiny`` is built instead of downloaded.
    """
    spec = spec.strip()
    kind, value = _classify(spec)
    if kind == "tiny":
        from qvl.tiny import build_tiny_model, tiny_model_dir

        if local_dir is not None:
            target = Path(local_dir).expanduser()
            try:
                return build_tiny_model(target)
            except OSError as exc:
                raise ModelError(
                    f"cannot build the tiny model in {target} ({exc.strerror or type(exc).__name__}): "
                    "pass a writable --local-dir"
                ) from None
        return tiny_model_dir()
    if kind == "folder":
        raise ModelError(f"{spec} is a local folder, not a Hub model; nothing to download")
    if kind == "random":
        raise ModelError(f"{spec} has random weights made in memory on each run; nothing to download")
    if local_dir is None and (is_offline() or not hub_reachable()):
        cached, _ = _cached_snapshot(value, revision)
        if cached is not None:  # nothing to update without the Hub; the cached copy is complete
            print(
                f"{value} is already downloaded ({cached}); the Hub cannot be reached to check for updates",
                file=sys.stderr,
            )
            return cached
    # The advice never names `qvl download`: that is the command that just failed.
    if is_offline():
        var = next(
            v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(v, "").strip().lower() in _TRUE
        )
        raise ModelError(f"cannot download {value}: {var} is set; unset it and retry with network, {_ELSEWHERE}")
    unreachable = (
        f"cannot download {value}: the Hub ({_endpoint()}) is unreachable; connect to the network "
        f"(or set HF_ENDPOINT to a reachable mirror) and retry, {_ELSEWHERE}"
    )
    return _download_repo(value, revision=revision, local_dir=local_dir, unreachable=unreachable)


_ELSEWHERE = "or download it on another machine, copy its folder here and pass --model FOLDER"


def check_model_folder(path: Path) -> None:
    """Raise ModelError unless ``path`` holds config.json and complete weights."""
    if not path.is_dir():
        raise ModelError(f"model folder {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelError(f"model folder {path} has no config.json")
    problem = _weights_problem(path)
    if problem:
        raise ModelError(f"model folder {path} has no weights ({problem})")


def is_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, read at call time."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return True
    return False


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment at call time (HF_HUB_CACHE, HF_HOME)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def hub_timeout() -> float:
    """Seconds to wait for the Hub before giving up: ``$QVL_HUB_TIMEOUT``, default 5."""
    try:
        return max(0.1, float(os.environ.get("QVL_HUB_TIMEOUT", "5")))
    except ValueError:
        return 5.0


def hub_reachable(timeout: float | None = None) -> bool:
    """Open (and close) a TCP connection to the Hub endpoint within ``timeout`` seconds.

    A missing DNS entry or a refused connection fails at once; a silently dropped one fails after
    the timeout instead of hanging. Behind an HTTPS proxy (``HTTPS_PROXY``) the proxy is probed.
    """
    proxy = next(
        (os.environ[v] for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if os.environ.get(v)), None
    )
    url = urlparse(proxy if proxy and "://" in proxy else f"http://{proxy}" if proxy else _endpoint())
    host = url.hostname or "huggingface.co"
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
    except ValueError:
        port = 443
    try:
        with socket.create_connection((host, port), timeout=hub_timeout() if timeout is None else timeout):
            return True
    except OSError:
        return False


def _endpoint() -> str:
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except Exception:  # pragma: no cover - huggingface_hub is a dependency
        return "https://huggingface.co"


def _classify(spec: str) -> tuple[str, str]:
    """('tiny' | 'folder' | 'hub', value) for a spec, or ModelError for an unknown preset."""
    low = spec.lower()
    if low == "tiny" or low == TINY_SENTINEL:
        return "tiny", TINY_SENTINEL
    if low in PRESETS:
        return "hub", PRESETS[low]
    if low.startswith(RANDOM_PREFIX):
        size = low[len(RANDOM_PREFIX) :]
        if size not in ARCHITECTURES:
            raise ModelError(
                f"unknown random model {spec!r}; choose one of {', '.join(RANDOM_PREFIX + s for s in ARCHITECTURES)}"
            )
        return "random", size
    expanded = os.path.expanduser(spec)
    if os.path.isdir(expanded):
        return "folder", expanded
    looks_like_path = (
        spec.startswith((".", "/", "~", "\\"))
        or spec.count("/") > 1
        or "\\" in spec
        or (len(spec) > 1 and spec[1] == ":")
    )
    if looks_like_path or os.path.exists(expanded):
        raise ModelError(
            f"model folder {spec} does not exist"
            if not os.path.exists(expanded)
            else f"model {spec} is a file, not a model folder"
        )
    if "/" not in spec:
        names = ", ".join(PRESETS)
        raise ModelError(f"unknown model preset {spec!r}; choose one of {names}, a Hub id (org/name) or a folder")
    org, _, name = spec.partition("/")
    if not org or not name or not all(c.isalnum() or c in "-_." for c in org + name):
        raise ModelError(f"{spec!r} is not a Hub model id (org/name) or an existing folder")
    return "hub", spec


def _weights_problem(path: Path) -> str | None:
    """None if the folder has complete weights, else a short reason."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            import json

            try:
                shards = set(json.loads(index.read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError):
                return f"{index_name} is unreadable"
            missing = sorted(s for s in shards if not (path / s).is_file())
            if missing:
                return f"{len(missing)} of {len(shards)} shards missing, e.g. {missing[0]}"
            return None
    if any(path.glob("*.safetensors")) or any(path.glob("*.bin")):
        return None
    return "no *.safetensors or *.bin files"


def _looks_tiny(path: Path) -> bool:
    from qvl.tiny import _DONE_MARKER

    return (path / _DONE_MARKER).is_file()


def _cached_snapshot(repo_id: str, revision: str | None) -> tuple[Path | None, str | None]:
    """(folder, None) for a complete cached snapshot in the HF cache, else (None, why it is
    incomplete or None when absent). Never uses the network."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=hf_cache_dir(),
            local_files_only=True,
            allow_patterns=DOWNLOAD_PATTERNS + BIN_PATTERNS,
        )
    except Exception:  # LocalEntryNotFoundError and friends: not cached
        return None, None
    path = Path(folder)
    if not (path / "config.json").is_file():
        return None, "no config.json"
    problem = _weights_problem(path)
    return (None, problem) if problem else (path, None)


def _download_repo(
    repo_id: str, *, revision: str | None, local_dir: str | Path | None, unreachable: str | None = None
) -> Path:
    """snapshot_download with progress on stderr; every failure becomes one ModelError line.

    unreachable: the message when the Hub cannot be reached (the default names `qvl download`,
    right for a run that needs the model, wrong for `qvl download` itself).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cmd = download_command(repo_id, revision)
    unreachable = unreachable or f"model {repo_id} is not downloaded and the Hub is unreachable; run: {cmd}"
    if not hub_reachable():
        raise ModelError(unreachable)
    timeout = hub_timeout()
    try:
        print(f"downloading {repo_id} into {local_dir or hf_cache_dir()}", file=sys.stderr)
        kwargs = dict(
            revision=revision,
            cache_dir=hf_cache_dir(),
            etag_timeout=timeout,
            local_dir=str(local_dir) if local_dir is not None else None,
        )
        folder = snapshot_download(repo_id, allow_patterns=DOWNLOAD_PATTERNS, **kwargs)
        if _weights_problem(Path(folder)):  # an older repo with PyTorch .bin weights only
            folder = snapshot_download(repo_id, allow_patterns=DOWNLOAD_PATTERNS + BIN_PATTERNS, **kwargs)
    except GatedRepoError:
        raise ModelError(
            f"model {repo_id} is gated: accept its terms on the Hub, log in (hf auth login) and run: {cmd}"
        ) from None
    except RepositoryNotFoundError:
        raise ModelError(f"model {repo_id} was not found on the Hub (private repos need: hf auth login)") from None
    except RevisionNotFoundError:
        raise ModelError(f"revision {revision} of model {repo_id} was not found on the Hub") from None
    except HfHubHTTPError as e:
        raise ModelError(f"downloading model {repo_id} failed: {_one_line(e)}; retry with: {cmd}") from None
    except Exception as e:  # DNS, refused, timeouts, LocalEntryNotFoundError; httpx/requests errors
        if not hub_reachable():
            raise ModelError(unreachable) from None
        raise ModelError(f"downloading model {repo_id} failed: {_one_line(e)}; retry with: {cmd}") from None
    path = Path(folder)
    problem = _weights_problem(path)
    if problem or not (path / "config.json").is_file():
        raise ModelError(f"model {repo_id} downloaded without usable weights ({problem or 'no config.json'})")
    return path


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] or type(e).__name__
