"""bf16 on CPU: training's ``mixed_precision="auto"`` and the ``torch-bf16`` backend, used only where the CPU computes
bf16 natively (AVX512_BF16 or AMX), refused with the fix elsewhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rag_rerank.rerank.backends import BACKENDS, BackendNotAvailableError, is_exported, torch_backend
from rag_rerank.rerank.backends.base import native_cpu_bf16
from rag_rerank.rerank.reranker import Reranker
from rag_rerank.train import config as train_config
from rag_rerank.train.config import precision_args, training_precision

needs_cpu = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU precision rules")


def _pairs(seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    words = "river mill capital france festival apples pears cheese bread market saturday morning".split()
    return [(f"what about {' '.join(rng.choice(words, 3))}?", " ".join(rng.choice(words, int(n))))
            for n in rng.integers(3, 60, size=24)]


@needs_cpu
@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(train_config, "native_cpu_bf16", lambda: native)
    assert precision_args("auto") == ({"bf16": True, "use_cpu": True} if native else {})
    assert training_precision("auto") == ("bf16" if native else "fp32")
    assert precision_args("no") == {}
    with caplog.at_level("WARNING"):
        assert precision_args("bf16") == ({"bf16": True, "use_cpu": True} if native else {})
    assert ("no native bf16" in caplog.text) is (not native)  # an explicit bf16 that cannot be honoured says so


def test_torch_bf16_is_a_registered_in_process_backend() -> None:
    assert "torch-bf16" in BACKENDS and not is_exported("torch-bf16")


@needs_cpu
def test_torch_bf16_is_refused_where_bf16_would_be_emulated(monkeypatch: pytest.MonkeyPatch,
                                                            tiny_cross_encoder_dir: Path) -> None:
    monkeypatch.setattr(torch_backend, "native_cpu_bf16", lambda: False)
    with pytest.raises(BackendNotAvailableError, match=r"native bf16.*\n.*Fix: use backend='auto' or 'torch'"):
        Reranker(str(tiny_cross_encoder_dir), backend="torch-bf16", device="cpu")


@pytest.mark.skipif(not native_cpu_bf16(), reason="bf16 runs natively only on CPUs with AVX512_BF16 or AMX")
def test_torch_bf16_runs_in_bf16_and_ranks_like_fp32(make_sharp_cross_encoder) -> None:
    from rag_rerank.rerank.backends.auto import _spearman_per_query

    model = make_sharp_cross_encoder(_pairs(seed=99))
    pairs = _pairs(seed=1)
    fp32 = Reranker(str(model), backend="torch", activation="none", cache_size=0, device="cpu")
    bf16 = Reranker(str(model), backend="torch-bf16", activation="none", cache_size=0, device="cpu")
    assert bf16._backend.effective_precision == "bf16" and fp32._backend.effective_precision == "fp32"
    a, b = fp32.predict(pairs), bf16.predict(pairs)
    assert b.dtype == np.float32 and b.shape == a.shape
    assert not np.array_equal(a, b)  # really computed in bf16, not a copy of the fp32 pass
    # the tiny model's logits differ by ~1e-4 before its head is rescaled, so bf16 rounding reorders some close
    # pairs; a real model's spread is far wider (auto keeps torch-bf16 only at Spearman >= 0.99 on its own probe)
    assert _spearman_per_query(a, b, [len(pairs)]) > 0.8
