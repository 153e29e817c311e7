"""The mark that the fast path's kernels were compiled on this machine (`qvl.engine.compiled`): a
first run is told once, and nothing claims a first run it cannot tell. Real files in a Triton
cache folder of the test's own."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from qvl.engine.compiled import compiled_before, remember_compiled  # noqa: E402


def test_the_first_run_on_a_card_is_known_and_remembered(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))  # not made yet, as on a new machine
    assert not compiled_before("NVIDIA H100 80GB HBM3")
    remember_compiled("NVIDIA H100 80GB HBM3")
    assert compiled_before("NVIDIA H100 80GB HBM3")
    assert not compiled_before("NVIDIA H200")  # another card compiles its own
    assert [p.name.startswith("qvl-fast-path-NVIDIA_H100") for p in (tmp_path / "triton").iterdir()] == [True]


def test_clearing_tritons_cache_clears_the_mark(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    remember_compiled("card")
    for path in tmp_path.iterdir():
        path.unlink()
    assert not compiled_before("card")


def test_a_cache_qvl_may_not_write_claims_nothing(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")  # a folder cannot be made below a file, even by root
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "a-file" / "triton"))
    assert compiled_before("card")
    remember_compiled("card")  # no error: the mark is only a courtesy
    assert compiled_before("card")
