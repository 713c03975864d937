"""OpenVINO backends of the Reranker: fp32 parity with torch, bf16/int8 structure and parity, cache, errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from word_pairs import (
    WORDS,  # noqa: E402
    private_copy,  # noqa: E402
)
from word_pairs import random_pairs as _pairs

from rag_rerank.rerank.backends import BackendNotAvailableError
from rag_rerank.rerank.backends.openvino import calibration_from_model_dir
from rag_rerank.rerank.reranker import Reranker


def _cpu_has_native_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def sharp_dir(make_sharp_cross_encoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the sharp tiny cross-encoder (its openvino/ folder is written by these tests)."""
    return private_copy(make_sharp_cross_encoder(_pairs(seed=99)), tmp_path_factory.mktemp("ov-sharp"))


def test_openvino_fp32_equals_torch(sharp_dir: Path) -> None:
    pairs = _pairs(seed=1)
    expected = Reranker(str(sharp_dir), device="cpu", activation="none", batch_size=5, cache_size=0).predict(pairs)
    assert np.ptp(expected) > 0.05  # far above atol: the check below can tell pairs apart
    rr = Reranker(str(sharp_dir), backend="openvino", activation="none", batch_size=5, cache_size=0, num_threads=1)
    got = rr.predict(pairs)
    assert got.dtype == np.float32 and got.shape == (len(pairs),)
    np.testing.assert_allclose(got, expected, atol=2e-3, rtol=0)
    # padding must not matter: one pair at a time gives the same scores
    single = np.array([rr.predict([p])[0] for p in pairs[:6]])
    np.testing.assert_allclose(single, expected[:6], atol=2e-3, rtol=0)
    assert rr.config.backend == "openvino" and rr.device == "cpu"
    assert rr._backend.effective_precision == "f32"  # pinned, even on a bf16-capable CPU


def test_windows_and_sigmoid_match_torch(sharp_dir: Path) -> None:
    rng = np.random.default_rng(5)
    pairs = [("q one", " ".join(rng.choice(WORDS, 150))), ("q two", "short text"), ("q three", "apples " * 70)]
    kw = {"max_length": 64, "batch_size": 4, "cache_size": 0}
    ov_rr = Reranker(str(sharp_dir), backend="openvino", **kw)
    assert len(ov_rr.windows(*pairs[0])) > 1
    np.testing.assert_allclose(ov_rr.predict(pairs), Reranker(str(sharp_dir), device="cpu", **kw).predict(pairs),
                               atol=1e-3, rtol=0)


def test_conversion_is_cached_and_redone_for_new_weights(sharp_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    model_dir = tmp_path / "model"
    shutil.copytree(sharp_dir, model_dir, ignore=shutil.ignore_patterns("openvino"))
    pairs = _pairs(seed=3, n=8)
    old = Reranker(str(model_dir), backend="openvino", activation="none", cache_size=0).predict(pairs)
    (first,) = (model_dir / "openvino").glob("fp32-*")
    stamp = (first / "openvino_model.bin").stat().st_mtime_ns
    Reranker(str(model_dir), backend="openvino-bf16")  # same fp32 IR, another inference precision: no conversion
    assert (first / "openvino_model.bin").stat().st_mtime_ns == stamp
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
    with torch.no_grad():
        model.classifier.weight.mul_(-2.0)  # "retrain": the scores change
    model.save_pretrained(model_dir)
    new = Reranker(str(model_dir), backend="openvino", activation="none", cache_size=0).predict(pairs)
    expected = Reranker(str(model_dir), device="cpu", activation="none", cache_size=0).predict(pairs)
    assert not np.allclose(new, old, atol=1e-2)
    np.testing.assert_allclose(new, expected, atol=2e-3, rtol=0)
    kept = [p.name for p in (model_dir / "openvino").iterdir()]
    assert len(kept) == 1 and kept[0] != first.name  # the stale conversion was replaced, no temp leftovers


@pytest.mark.skipif("not _cpu_has_native_bf16()", reason="bf16 runs natively only on CPUs with AVX512_BF16/AMX")
def test_bf16_really_runs_in_bf16(sharp_dir: Path) -> None:
    pairs = _pairs(seed=4, n=16)
    kw = {"activation": "none", "cache_size": 0}
    fp32 = Reranker(str(sharp_dir), backend="openvino", **kw).predict(pairs)
    rr = Reranker(str(sharp_dir), backend="openvino-bf16", **kw)
    bf16 = rr.predict(pairs)
    assert rr._backend.effective_precision == "bf16"
    assert np.isfinite(bf16).all() and not np.array_equal(bf16, fp32)  # bf16 rounding moves the scores


def test_int8_needs_calibration_pairs_and_says_how(sharp_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(sharp_dir, model_dir, ignore=shutil.ignore_patterns("openvino"))
    with pytest.raises(BackendNotAvailableError, match=r"train_groups\.jsonl.*\n.*calibration_pairs"):
        Reranker(str(model_dir), backend="openvino-int8")
    with pytest.raises(ValueError, match="calibration_pairs is empty"):
        Reranker(str(model_dir), backend="openvino-int8", calibration_pairs=[])


def test_int8_is_quantised_cached_separately_and_calibrated_from_train_groups(sharp_dir: Path,
                                                                              tmp_path: Path) -> None:
    """Structure only: a random model's ranking parity under int8 is meaningless (slow test below for that)."""
    model_dir = tmp_path / "model"
    shutil.copytree(sharp_dir, model_dir, ignore=shutil.ignore_patterns("openvino"))
    rows = [{"query": q, "positive": d, "negatives": [n for _, n in _pairs(seed=i, n=3)]}
            for i, (q, d) in enumerate(_pairs(seed=6, n=20))]
    (model_dir / "train_groups.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    calibration = calibration_from_model_dir(model_dir, limit=50)
    assert len(calibration) == 50 and calibration[0] == (rows[0]["query"], rows[0]["positive"])
    pairs = _pairs(seed=8, n=12)
    got = Reranker(str(model_dir), backend="openvino-int8", activation="none", cache_size=0).predict(pairs)
    (int8_dir,) = (model_dir / "openvino").glob("int8-*")
    assert "FakeQuantize" in (int8_dir / "openvino_model.xml").read_text()
    assert list((model_dir / "openvino").glob("fp32-*"))  # quantised from the cached fp32 conversion
    expected = Reranker(str(model_dir), device="cpu", activation="none", cache_size=0).predict(pairs)
    assert np.isfinite(got).all() and not np.array_equal(got, expected)


def test_missing_extra_names_it(tiny_cross_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(ImportError, match=r"rag-rerank\[openvino\]"):
        Reranker(str(tiny_cross_encoder_dir), backend="openvino-bf16")


def test_openvino_is_cpu_only_and_needs_a_folder(tiny_cross_encoder_dir: Path) -> None:
    from sentence_transformers import CrossEncoder

    with pytest.raises(ValueError, match="CPU"):
        Reranker(str(tiny_cross_encoder_dir), backend="openvino", device="cuda")
    with pytest.raises(ValueError, match="pass its folder"):
        Reranker(CrossEncoder(str(tiny_cross_encoder_dir)), backend="openvino")


# --------------------------------------------------------------------------- real model, realistic pairs
@pytest.mark.slow
def test_minilm_ce_openvino_keeps_the_ranking_on_squad_bm25_top20(squad_beir: Path, tmp_path: Path) -> None:
    """fp32 equals torch; bf16 keeps the ranking (Spearman >= 0.99, the issue's bar), on real pairs."""
    from test_reranker_onnx import _parity, _squad_pairs

    from rag_rerank.models import resolve_model_path

    model_dir = tmp_path / "minilm-ce"
    shutil.copytree(resolve_model_path("embedded:minilm-ce"), model_dir,
                    ignore=shutil.ignore_patterns("onnx", "openvino"))
    pairs, groups, _ = _squad_pairs(squad_beir, 8)
    kw = {"max_length": 256, "activation": "none", "cache_size": 0}
    ref = Reranker(str(model_dir), device="cpu", **kw).predict(pairs)
    np.testing.assert_allclose(Reranker(str(model_dir), backend="openvino", **kw).predict(pairs), ref,
                               atol=1e-3, rtol=0)
    if _cpu_has_native_bf16():
        pooled, per_query = _parity(ref, Reranker(str(model_dir), backend="openvino-bf16", **kw).predict(pairs),
                                    groups)
        assert pooled >= 0.99 and per_query >= 0.99, (pooled, per_query)
