"""Model resolution: embedded names, local dirs, hub ids, and the offline error."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rag_rerank.errors import ModelUnavailableError
from rag_rerank.models import (
    EMBEDDED_MODELS,
    check_model,
    embedded_models_table,
    materialise_minilm_ce,
    resolve_model_path,
)


def test_embedded_minilm_is_a_sentence_transformers_dir():
    path = resolve_model_path("embedded:minilm")
    assert (path / "modules.json").is_file()
    assert (path / "model.safetensors").is_file()


def test_embedded_smollm2_is_a_gguf_file():
    path = resolve_model_path("embedded:smollm2")
    assert path.suffix == ".gguf"
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"


def test_unknown_embedded_name_lists_the_known_ones():
    with pytest.raises(ModelUnavailableError) as e:
        resolve_model_path("embedded:nope")
    for name in EMBEDDED_MODELS:
        assert name in str(e.value)


def test_missing_local_path_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        resolve_model_path(str(tmp_path / "no-such-model"))


def test_local_directory_resolves_to_itself(tiny_cross_encoder_dir: Path):
    assert resolve_model_path(str(tiny_cross_encoder_dir)) == tiny_cross_encoder_dir.resolve()


def test_hub_id_offline_error_says_what_why_and_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing can be found locally
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailableError) as e:
        resolve_model_path("BAAI/bge-reranker-base", role="cross-encoder")
    assert time.monotonic() - t0 < 30  # fails fast, does not hang on the network
    msg = str(e.value)
    lines = msg.splitlines()
    assert 1 <= len(lines) <= 3
    assert "BAAI/bge-reranker-base" in msg  # what was asked
    assert "offline" in msg.lower() or "cache" in msg.lower()  # why
    assert "embedded:minilm-ce" in msg  # what to do instead


def test_hub_id_without_offline_flag_still_fails_cleanly_when_unreachable(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ModelUnavailableError, match="sentence-transformers/all-MiniLM-L6-v2"):
        resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")


def test_minilm_ce_is_materialised_once_and_deterministic(tmp_path: Path):
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification

    a = materialise_minilm_ce(tmp_path / "a")
    b = materialise_minilm_ce(tmp_path / "b")
    assert (a / ".complete").is_file() and (a / "config.json").is_file()
    pairs = [("who wrote hamlet?", "Hamlet is a tragedy by William Shakespeare."), ("capital of peru", "Lima.")]
    sa = CrossEncoder(str(a), device="cpu").predict(pairs, show_progress_bar=False)
    sb = CrossEncoder(str(b), device="cpu").predict(pairs, show_progress_bar=False)
    assert sa.tolist() == sb.tolist()  # same seed, same head, identical scores
    hf = AutoModelForSequenceClassification.from_pretrained(str(a))
    assert hf.config.num_labels == 1
    # no temp folders left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_embedded_minilm_ce_resolves_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("RAG_RERANK_CACHE", str(tmp_path))
    first = resolve_model_path("embedded:minilm-ce")
    assert first.parent == tmp_path
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path("embedded:minilm-ce") == first  # second call reuses it
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime


def test_check_model_loads_the_bi_encoder():
    assert "384" in check_model("embedded:minilm")


def test_check_model_rejects_a_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelUnavailableError, match="failed to load"):
        check_model(str(tmp_path), role="cross-encoder")


def test_embedded_table_lists_every_embedded_model():
    rows = embedded_models_table()
    assert [r["name"] for r in rows] == list(EMBEDDED_MODELS)
    assert all(r["path"] and not r["path"].startswith("NOT AVAILABLE") for r in rows)
