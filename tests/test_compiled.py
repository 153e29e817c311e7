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


def test_psa_kernels_have_a_mark_of_their_own(tmp_path, monkeypatch):
    # The warm-up compiles the fast path's kernels; PSA's compile on the first prompt PSA runs on.
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    remember_compiled("card")
    assert compiled_before("card") and not compiled_before("card", "psa")
    remember_compiled("card", "psa")
    assert compiled_before("card", "psa")


def test_an_answer_whose_prefill_compiled_psa_says_so_on_stderr(capsys):
    from qvl.output import RunView

    record = {
        "input": "clip.mp4",
        "text": "an answer",
        "tokens": {"prompt": 20_000, "generated": 3},
        "timings": {"prefill_s": 12.3},
        "psa": {"density": 0.2, "layers": 28, "tokens": 20_000, "compiled": True},
    }
    view = RunView(json_output=False, quiet=False)
    view.answered(record, psa=None)
    first = capsys.readouterr()
    assert "compiled and tuned its kernels (prefill 12.3 s)" in first.err and "compiled" not in first.out
    del record["psa"]["compiled"]
    view.answered(record, psa=None)
    assert "compiled" not in capsys.readouterr().err
