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


def test_auto_picks_the_fastest_backend_at_parity_and_caches_the_choice(make_sharp_cross_encoder, tmp_path: Path):
    from word_pairs import private_copy

    pytest.importorskip("onnxruntime")
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
