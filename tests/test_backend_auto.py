"""backend="auto": measured on this machine, never slower than torch on the probe, never below ranking parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag_rerank.rerank.backends.auto import MIN_SPEARMAN, _spearman_per_query, candidates, machine_key
from rag_rerank.rerank.reranker import Reranker


def test_spearman_per_query_by_hand() -> None:
    a = np.array([1.0, 2.0, 3.0, 5.0, 4.0, 3.0])
    assert _spearman_per_query(a, a, [3, 3]) == 1.0
    assert _spearman_per_query(a, np.array([3.0, 2.0, 1.0, 5.0, 4.0, 3.0]), [3, 3]) == pytest.approx(0.0)
    assert _spearman_per_query(a, -a, [6]) == pytest.approx(-1.0)


def test_auto_picks_the_fastest_backend_at_parity_and_caches_the_choice(make_sharp_cross_encoder, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from word_pairs import private_copy

    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("RAG_RERANK_CACHE", str(tmp_path / "cache"))  # a fresh measurement, not an earlier run's
    pairs = [(f"query {i}", f"passage number {j} about topic {i}") for i in range(8) for j in range(8)]
    model = private_copy(make_sharp_cross_encoder(pairs), tmp_path / "m")
    rr = Reranker(str(model), backend="auto", cache_size=0)
    choice = rr.backend_choice
    assert choice is not None and not choice.cached and rr.config.backend == choice.backend
    assert set(choice.seconds) | set(choice.rejected) == set(candidates())
    assert choice.backend in choice.seconds and choice.spearman[choice.backend] >= MIN_SPEARMAN
    assert choice.seconds[choice.backend] <= choice.seconds["torch"]  # never slower than torch on the probe
    for name, s in choice.seconds.items():  # every faster backend at parity would have been chosen instead
        if s < choice.seconds[choice.backend]:
            assert "Spearman" in choice.rejected[name], choice
    assert machine_key() == choice.machine
    again = Reranker(str(model), backend="auto", cache_size=0)
    assert again.backend_choice.cached and again.config.backend == choice.backend
    # the chosen backend ranks the probe like fp32 torch
    torch_scores = Reranker(str(model), backend="torch", cache_size=0).predict(pairs[:16])
    assert np.argsort(-rr.predict(pairs[:8])).tolist() == np.argsort(-torch_scores[:8]).tolist()


def test_auto_is_torch_for_a_model_in_memory(tiny_cross_encoder_dir: Path) -> None:
    from sentence_transformers import CrossEncoder

    rr = Reranker(CrossEncoder(str(tiny_cross_encoder_dir), device="cpu"), backend="auto")
    assert rr.config.backend == "torch" and rr.backend_choice is None


def test_auto_on_a_gpu_measures_fp32_torch_against_bf16_autocast_only(make_sharp_cross_encoder, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the exported (CPU) backends are no candidates; fp32 torch is the reference, and bf16 autocast is kept
    only when the probe measures it faster at parity (on an H200 it was slower for MiniLM). The Reranker part runs
    where CUDA is (``pipelines/bench_rerank_device.sh auto`` runs the same on the lent GPU machine)."""
    import torch

    from rag_rerank.rerank.backends import is_exported

    assert candidates("mps") == ["torch"]
    assert candidates("cuda")[0] == "torch" and not any(is_exported(c) for c in candidates("cuda"))
    assert ("torch-bf16" in candidates("cuda")) == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    from word_pairs import private_copy

    monkeypatch.setenv("RAG_RERANK_CACHE", str(tmp_path / "cache"))
    pairs = [(f"query {i}", f"passage number {j} about topic {i}") for i in range(8) for j in range(8)]
    model = private_copy(make_sharp_cross_encoder(pairs), tmp_path / "m")
    rr = Reranker(str(model), device="cuda", cache_size=0)
    choice = rr.backend_choice
    assert choice is not None and set(choice.seconds) | set(choice.rejected) == set(candidates("cuda"))
    assert choice.seconds[choice.backend] <= choice.seconds["torch"] and "gpu=" in choice.machine
    assert rr.effective_precision == ("fp32" if choice.backend == "torch" else "bf16")


def test_auto_serves_openvino_int8_as_probed_for_a_model_without_data(make_sharp_cross_encoder, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (CI of ee8092b): auto measured openvino-int8 calibrated on the probe for a model with no
    train_groups.jsonl (the untrained ``embedded:minilm-ce``), then built it for serving without calibration pairs
    and failed. Whatever picks openvino-int8 (a measurement or a cached choice), serving builds it as probed."""
    from word_pairs import private_copy

    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from rag_rerank.rerank.backends import auto

    pairs = [(f"query {i}", f"passage number {j} about topic {i}") for i in range(8) for j in range(8)]
    model = private_copy(make_sharp_cross_encoder(pairs), tmp_path / "m")
    assert not (model / "train_groups.jsonl").exists()
    probed: list[str] = []

    # what a cached openvino-int8 choice returns
    def cached_int8_choice(model_dir, settings_key, build, score, device="cpu"):
        probed.append(type(build("openvino-int8", auto.probe_pairs(model_dir)[0])).__name__)
        return auto.BackendChoice(backend="openvino-int8", cached=True)

    monkeypatch.setattr(auto, "choose_backend", cached_int8_choice)
    rr = Reranker(str(model), backend="auto", cache_size=0)
    assert probed == ["OpenVinoBackend"] and rr.config.backend == "openvino-int8"
    served = rr.predict(pairs)
    probed_model = Reranker(str(model), backend="openvino-int8", cache_size=0,
                            calibration_pairs=auto.probe_pairs(model)[0])
    assert np.isfinite(served).all()
    np.testing.assert_allclose(served, probed_model.predict(pairs), rtol=1e-5, atol=1e-6)  # the measured model
