"""Resolving model specs: presets, folders, the Hugging Face cache, and a Hub that cannot be reached.

No mocks: the "Hub unreachable" cases use this machine's real lack of network (skipped where the Hub
answers) or an endpoint on a closed local port, and HF_HOME points at an empty temporary folder.
"""

import json
import shutil
import time
from pathlib import Path

import pytest

from qvl import models
from qvl.errors import ModelError
from qvl.models import (
    DEFAULT_MODEL,
    PRESETS,
    ResolvedModel,
    default_model_spec,
    download,
    download_command,
    resolve_model,
)
from qvl.tiny import tiny_model_dir

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("qvl-cache"))


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch, tiny_dir):
    """An empty HF cache, online mode, and the tiny model from the session cache."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in (
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "QVL_MODEL",
        "HF_ENDPOINT",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("QVL_CACHE_DIR", str(tiny_dir.parent.parent))
    monkeypatch.setenv("QVL_HUB_TIMEOUT", "3")


def _put_in_hf_cache(repo_id: str, source: Path, cache: Path, commit: str = FAKE_COMMIT) -> Path:
    """Lay a folder out as huggingface_hub's cache does: refs/main -> snapshots/<commit>/."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot)
    return snapshot


def test_presets_and_default(monkeypatch):
    assert PRESETS["3b"] == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert PRESETS["7b"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert PRESETS["72b"] == "Qwen/Qwen2.5-VL-72B-Instruct"
    assert "tiny" in PRESETS
    assert default_model_spec() == DEFAULT_MODEL == "Qwen/Qwen2.5-VL-7B-Instruct"
    monkeypatch.setenv("QVL_MODEL", "tiny")
    assert default_model_spec() == "tiny"
    assert resolve_model(None).is_tiny


def test_download_command():
    assert download_command("Qwen/Qwen2.5-VL-7B-Instruct") == "qvl download 7b"
    assert download_command("qwen/qwen2.5-vl-72b-instruct", "v1") == "qvl download 72b --revision v1"
    assert download_command("org/other") == "qvl download org/other"
    assert download_command("org/other", "my branch") == "qvl download org/other --revision 'my branch'"


@pytest.mark.parametrize("spec", ["tiny", "TINY", "qvl/tiny"])
def test_tiny_resolves_offline(spec, tiny_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = resolve_model(spec)
    assert resolved == ResolvedModel(spec=spec, repo_id=None, path=tiny_dir, is_tiny=True)
    assert resolved.name == "tiny"


@pytest.mark.parametrize("spec", ["13b", "qwen", "7B-instruct"])
def test_unknown_preset(spec):
    with pytest.raises(ModelError) as err:
        resolve_model(spec)
    assert f"unknown model preset '{spec}'" in str(err.value)
    assert "3b, 7b, 72b, tiny" in str(err.value)
    assert err.value.exit_code == 2


def test_local_folder(tiny_dir, tmp_path):
    folder = tmp_path / "my-model"
    shutil.copytree(tiny_dir, folder)
    resolved = resolve_model(str(folder))
    assert resolved.path == folder and resolved.repo_id is None and resolved.is_tiny


def test_folder_without_weights(tiny_dir, tmp_path):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    shutil.copy(tiny_dir / "config.json", folder)
    with pytest.raises(ModelError, match=r"model folder .*no-weights has no weights \(no \*\.safetensors"):
        resolve_model(str(folder))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_folder_with_missing_shard(tiny_dir, tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(tiny_dir / "config.json", folder)
    shutil.copy(tiny_dir / "model.safetensors", folder / "model-00001-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match=r"has no weights \(1 of 2 shards missing"):
        resolve_model(str(folder))


@pytest.mark.parametrize("spec", ["./missing", "/no/such/folder", "a/b/c"])
def test_missing_folder(spec):
    with pytest.raises(ModelError, match=f"model folder {spec} does not exist"):
        resolve_model(spec)


def test_bad_hub_id():
    with pytest.raises(ModelError, match="not a Hub model id"):
        resolve_model("org/bad name")


def test_found_in_hf_cache_without_network(tiny_dir, tmp_path, monkeypatch):
    snapshot = _put_in_hf_cache("Qwen/Qwen2.5-VL-3B-Instruct", tiny_dir, tmp_path / "hf" / "hub")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # any network use would fail
    for spec in ("3b", "Qwen/Qwen2.5-VL-3B-Instruct"):
        resolved = resolve_model(spec, allow_download=False)
        assert resolved.path == snapshot and resolved.repo_id == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert resolve_model("3b", revision=FAKE_COMMIT).path == snapshot


def test_hf_hub_cache_variable(tiny_dir, tmp_path, monkeypatch):
    snapshot = _put_in_hf_cache("org/model", tiny_dir, tmp_path / "elsewhere")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert resolve_model("org/model").path == snapshot


def test_partly_downloaded(tiny_dir, tmp_path, monkeypatch):
    snapshot = _put_in_hf_cache("Qwen/Qwen2.5-VL-3B-Instruct", tiny_dir, tmp_path / "hf" / "hub")
    (snapshot / "model.safetensors").unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"model Qwen/Qwen2.5-VL-3B-Instruct is only partly downloaded"):
        resolve_model("3b")


def test_offline_mode_names_the_command(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        resolve_model("72b", revision="abc")
    assert str(err.value) == (
        "model Qwen/Qwen2.5-VL-72B-Instruct is not downloaded and HF_HUB_OFFLINE is set; "
        "with network, run: qvl download 72b --revision abc"
    )
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE") as err:
        download("7b")
    assert "qvl download" not in str(err.value)  # the command that failed is no advice
    assert "unset it" in str(err.value) and "--model FOLDER" in str(err.value)


def test_no_download_allowed():
    with pytest.raises(ModelError, match=r"^model org/model is not downloaded; run: qvl download org/model$"):
        resolve_model("org/model", allow_download=False)


def _fails_fast(fn, *args, **kwargs) -> tuple[str, float]:
    start = time.perf_counter()
    with pytest.raises(ModelError) as err:
        fn(*args, **kwargs)
    return str(err.value), time.perf_counter() - start


def test_closed_endpoint_fails_fast(monkeypatch):
    # A real refused connection, on any machine: nothing listens on the discard port.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    message, elapsed = _fails_fast(resolve_model, "7b")
    assert (
        message
        == "model Qwen/Qwen2.5-VL-7B-Instruct is not downloaded and the Hub is unreachable; run: qvl download 7b"
    )
    assert elapsed < 5


def test_hub_unreachable_on_this_machine():
    if models.hub_reachable(timeout=3):
        pytest.skip("the Hub is reachable here; this test checks a machine without network")
    message, elapsed = _fails_fast(resolve_model, None)
    assert (
        message
        == "model Qwen/Qwen2.5-VL-7B-Instruct is not downloaded and the Hub is unreachable; run: qvl download 7b"
    )
    assert elapsed < 5
    message, _ = _fails_fast(resolve_model, "3b", revision="v2")
    assert message.endswith("run: qvl download 3b --revision v2")
    message, elapsed = _fails_fast(download, "Qwen/Qwen2.5-VL-72B-Instruct", local_dir="unused")
    # `qvl download` itself must not advise running `qvl download`.
    assert "qvl download" not in message and "unreachable" in message and elapsed < 5
    assert "--model FOLDER" in message and "HF_ENDPOINT" in message


def test_download_of_a_cached_model_without_network(tiny_dir, tmp_path, monkeypatch, capsys):
    snapshot = _put_in_hf_cache("Qwen/Qwen2.5-VL-7B-Instruct", tiny_dir, tmp_path / "hf" / "hub")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert download("7b") == snapshot
    assert "already downloaded" in capsys.readouterr().err


def test_download_tiny_builds(tmp_path, tiny_dir):
    assert download("tiny") == tiny_dir
    out = download("tiny", local_dir=tmp_path / "t")
    assert (out / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()
    assert resolve_model(str(out)).is_tiny


def test_download_rejects_folder(tmp_path):
    with pytest.raises(ModelError, match="is a local folder"):
        download(str(tmp_path))


def test_model_info_covers_presets():
    assert set(models.MODEL_INFO) == set(PRESETS)
