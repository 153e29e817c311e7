"""Where Python may not write bytecode beside the sources, qvl keeps it in its cache, so that a
fresh process does not compile torch and transformers again (`qvl.paths.keep_bytecode`). Real
interpreters, a real module without bytecode."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SHOW = (
    "import sys; from qvl.paths import keep_bytecode; keep_bytecode('probe_pkg'); import probe_pkg; "
    "print(sys.pycache_prefix, sys.dont_write_bytecode)"
)


@pytest.fixture
def probe(tmp_path):
    """A package with no bytecode beside it, and an environment that finds it and qvl's cache."""
    package = tmp_path / "src" / "probe_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("VALUE = 1\n")
    env = {**os.environ, "QVL_CACHE_DIR": str(tmp_path / "cache")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path / "src"), os.environ.get("PYTHONPATH")]))
    env.pop("PYTHONPYCACHEPREFIX", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return package, env, tmp_path / "cache" / "bytecode"


def run(env, code=SHOW) -> str:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_bytecode_goes_to_the_cache_where_python_may_not_write_it_beside_the_sources(probe):
    package, env, bytecode = probe
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    assert run(env).split() == [str(bytecode), "False"]
    assert list(bytecode.rglob("__init__*.pyc")) and not (package / "__pycache__").exists()
    # A child process (a --gpus worker) reads it from there through the environment.
    child = "import subprocess, sys; from qvl.paths import keep_bytecode; keep_bytecode('probe_pkg'); "
    child += "subprocess.run([sys.executable, '-c', 'import sys; print(sys.pycache_prefix)'])"
    assert run(env, child).strip() == str(bytecode)


def test_nothing_changes_where_python_writes_bytecode_or_the_user_chose_a_prefix(probe, tmp_path):
    package, env, bytecode = probe
    assert run(env).split() == ["None", "False"]  # written beside the sources, as Python does
    assert (package / "__pycache__").is_dir() and not bytecode.exists()
    mine = tmp_path / "mine"
    assert run({**env, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(mine)}).split() == [str(mine), "True"]
    assert not bytecode.exists()


def test_a_cache_that_cannot_be_written_changes_nothing(probe, tmp_path):
    """With a prefix Python would look for no bytecode beside the sources, the standard library's
    included: where qvl's cache cannot hold it, nothing moves."""
    package, env, _ = probe
    (tmp_path / "a-file").write_text("")  # no folder can be made below a file, even by root
    env = {**env, "PYTHONDONTWRITEBYTECODE": "1", "QVL_CACHE_DIR": str(tmp_path / "a-file" / "cache")}
    assert run(env).split() == ["None", "True"]


def test_installed_bytecode_is_used_as_it_is(probe):
    """The probe has its bytecode beside it (as a pip install writes it): nothing moves."""
    package, env, bytecode = probe
    run(env)  # writes probe_pkg/__pycache__
    assert run({**env, "PYTHONDONTWRITEBYTECODE": "1"}).split() == ["None", "True"]
    assert not bytecode.exists()
