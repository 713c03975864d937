"""Reranker: parity with CrossEncoder.predict, bucketing order, long documents, rank, cache, errors."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rag_rerank.errors import ModelUnavailableError
from rag_rerank.models import load_cross_encoder
from rag_rerank.rerank.reranker import Reranker

WORDS = (
    "the river runs north past the old mill while the capital city of france hosts a summer festival "
    "and farmers bring apples pears cheese bread to the market square every saturday morning"
).split()


@pytest.fixture(scope="module")
def sharp_ce_dir(make_sharp_cross_encoder) -> Path:
    """The tiny cross-encoder with a rescaled head, so orders and score comparisons are meaningful."""
    return make_sharp_cross_encoder(_mixed_pairs(seed=99))


def _text(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, n_words))


def _mixed_pairs(seed: int = 0) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    lengths = [1, 120, 3, 40, 2, 200, 7, 15, 90, 4, 60, 1]
    return [(f"what about {_text(rng, 3)}?", _text(rng, n)) for n in lengths]


def test_predict_equals_cross_encoder_predict_with_bucketing(sharp_ce_dir: Path) -> None:
    pairs = _mixed_pairs()
    ce = load_cross_encoder(str(sharp_ce_dir), device="cpu")
    expected = ce.predict(pairs, show_progress_bar=False)
    assert np.ptp(expected) > 1e-3  # the check below can tell pairs apart
    rr = Reranker(str(sharp_ce_dir), device="cpu", batch_size=3, cache_size=0)
    got = rr.predict(pairs)
    assert got.shape == (len(pairs),) and got.dtype == np.float32
    assert np.allclose(got, expected, atol=1e-5, rtol=0)
    # original order preserved: permuting the input permutes the output the same way
    perm = np.random.default_rng(1).permutation(len(pairs))
    assert np.allclose(rr.predict([pairs[i] for i in perm]), got[perm], atol=1e-5, rtol=0)


def test_activation_none_equals_raw_logits(sharp_ce_dir: Path) -> None:
    pairs = _mixed_pairs(seed=2)[:6]
    ce = load_cross_encoder(str(sharp_ce_dir), device="cpu")
    logits = ce.predict(pairs, activation_fn=torch.nn.Identity(), show_progress_bar=False)
    rr = Reranker(str(sharp_ce_dir), device="cpu", activation="none", batch_size=4)
    assert np.allclose(rr.predict(pairs), logits, atol=1e-5, rtol=0)


def test_empty_input(tiny_cross_encoder_dir: Path) -> None:
    rr = Reranker(str(tiny_cross_encoder_dir), device="cpu")
    assert rr.predict([]).shape == (0,)
    assert rr.rank("q", []) == []


def test_truncate_matches_cross_encoder_and_warns_once_with_count(
    sharp_ce_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(3)
    pairs = [("q one", _text(rng, 150)), ("q two", "short text"), ("q three", _text(rng, 90))]
    ce = load_cross_encoder(str(sharp_ce_dir), device="cpu", max_length=64)
    rr = Reranker(str(sharp_ce_dir), device="cpu", max_length=64, long_documents="truncate", batch_size=2)
    with caplog.at_level(logging.WARNING, logger="rag_rerank.rerank.reranker"):
        got = rr.predict(pairs)
    assert np.allclose(got, ce.predict(pairs, show_progress_bar=False), atol=1e-5, rtol=0)
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1
    assert "truncated 2 of 3 pairs" in warnings[0].getMessage()


def test_truncate_tokenises_each_pair_once(sharp_ce_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Truncate mode has no separate length pass (on a GPU it cost as much as the forward pass), and its character
    bucketing still returns every score in the caller's order, equal to CrossEncoder.predict's."""
    import rag_rerank.rerank.reranker as reranker_module

    rng = np.random.default_rng(7)
    pairs = [(f"q {i}", _text(rng, int(n))) for i, n in enumerate(rng.integers(2, 120, size=9))]
    rr = Reranker(str(sharp_ce_dir), device="cpu", max_length=64, long_documents="truncate", batch_size=2,
                  cache_size=0)

    def no_length_pass(*_: object) -> None:
        raise AssertionError("truncate mode tokenised the pairs a second time to measure their lengths")

    monkeypatch.setattr(reranker_module, "pair_lengths", no_length_pass)
    calls = []
    preprocess = rr.cross_encoder.preprocess
    monkeypatch.setattr(rr.cross_encoder, "preprocess", lambda batch: calls.append(len(batch)) or preprocess(batch))
    got = rr.predict(pairs)
    assert sum(calls) == len(pairs)
    ce = load_cross_encoder(str(sharp_ce_dir), device="cpu", max_length=64)
    assert np.allclose(got, ce.predict(pairs, show_progress_bar=False), atol=1e-5, rtol=0)


def test_window_score_is_max_over_windows(sharp_ce_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(4)
    query = "where is the market square?"
    doc = _text(rng, 170) + " The market square is next to the old mill. " + _text(rng, 60)
    rr = Reranker(str(sharp_ce_dir), device="cpu", max_length=64, long_documents="window", batch_size=4)
    wins = rr.windows(query, doc)
    assert len(wins) > 2
    assert doc.startswith(wins[0]) and doc.endswith(wins[-1])
    assert any("market square is next to the old mill" in w for w in wins)
    tok = rr.cross_encoder.tokenizer
    assert all(len(tok(query, w)["input_ids"]) <= 64 for w in wins)  # every window fits: nothing is cut

    with caplog.at_level(logging.WARNING, logger="rag_rerank.rerank.reranker"):
        score = float(rr.predict([(query, doc)])[0])
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]
    # by hand, with sentence-transformers on the windows
    ce = load_cross_encoder(str(sharp_ce_dir), device="cpu", max_length=64)
    window_scores = ce.predict([(query, w) for w in wins], show_progress_bar=False)
    assert score == pytest.approx(float(window_scores.max()), abs=1e-5)
    truncated = Reranker(str(sharp_ce_dir), device="cpu", max_length=64, long_documents="truncate")
    assert score >= float(truncated.predict([(query, doc)])[0]) - 1e-5
    # a document that fits is its own single window
    assert rr.windows(query, "short doc") == ["short doc"]


def test_window_stride_controls_overlap(tiny_cross_encoder_dir: Path) -> None:
    doc = _text(np.random.default_rng(5), 300)
    dense = Reranker(str(tiny_cross_encoder_dir), device="cpu", max_length=64, window_stride=8)
    default = Reranker(str(tiny_cross_encoder_dir), device="cpu", max_length=64)
    assert len(dense.windows("q", doc)) > len(default.windows("q", doc)) > 1


def test_rank_sorted_by_score_then_index(sharp_ce_dir: Path) -> None:
    rr = Reranker(str(sharp_ce_dir), device="cpu")
    docs = ["apples and pears", "the capital of france", "apples and pears", "river mill", "cheese"]
    query = "what fruit is sold?"
    scores = rr.predict([(query, d) for d in docs])
    rows = rr.rank(query, docs)
    assert [r["corpus_id"] for r in rows] == sorted(range(len(docs)), key=lambda i: (-scores[i], i))
    assert all(r["text"] == docs[r["corpus_id"]] and r["score"] == pytest.approx(scores[r["corpus_id"]]) for r in rows)
    ids = [r["corpus_id"] for r in rows]
    assert ids.index(0) < ids.index(2)  # equal documents tie: the earlier one first
    top = rr.rank(query, docs, top_k=2, return_documents=False)
    assert top == [{"corpus_id": r["corpus_id"], "score": r["score"]} for r in rows[:2]]


def test_cache_hits_and_eviction(sharp_ce_dir: Path) -> None:
    rr = Reranker(str(sharp_ce_dir), device="cpu", cache_size=2)
    a, b, c = ("q", "doc a"), ("q", "doc b"), ("q", "doc c")
    first = rr.predict([a, b, c])
    info = rr.cache_info()
    assert (info.hits, info.misses, info.size, info.maxsize) == (0, 3, 2, 2)
    assert np.allclose(rr.predict([c]), first[2:3])  # most recent: a hit
    assert rr.cache_info().hits == 1
    rr.predict([a])  # evicted (least recently used): a miss
    assert rr.cache_info().misses == 4
    rr.predict([("q", "doc c"), ("another q", "doc c")])  # same doc, other query: a different key
    assert rr.cache_info().hits == 2 and rr.cache_info().misses == 5
    rr.clear_cache()
    assert rr.cache_info().size == 0


def test_cache_disabled(tiny_cross_encoder_dir: Path) -> None:
    rr = Reranker(str(tiny_cross_encoder_dir), device="cpu", cache_size=0)
    rr.predict([("q", "d")])
    rr.predict([("q", "d")])
    assert rr.cache_info().hits == 0 and rr.cache_info().size == 0


def test_num_threads_apply_while_scoring_and_are_restored(tiny_cross_encoder_dir: Path) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rr = Reranker(str(tiny_cross_encoder_dir), device="cpu", num_threads=1, cache_size=0)
        seen: list[int] = []
        hook = rr.cross_encoder.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
        rr.predict([("q", "d"), ("q", "another document")])
        assert seen == [1]  # the forward pass ran with the thread count asked for...
        assert torch.get_num_threads() == 2  # ...and the caller's count came back
        hook.remove()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"activation": "softmax"},
        {"long_documents": "split"},
        {"cache_size": -1},
        {"window_stride": 0},
    ],
)
def test_invalid_settings(tiny_cross_encoder_dir: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Reranker(str(tiny_cross_encoder_dir), device="cpu", **kwargs)


def test_bad_pairs_and_missing_model(tiny_cross_encoder_dir: Path) -> None:
    rr = Reranker(str(tiny_cross_encoder_dir), device="cpu")
    with pytest.raises(ValueError, match=r"pairs\[1\]"):
        rr.predict([("q", "d"), ("only one",)])
    with pytest.raises(TypeError):
        rr.predict([("q", 3)])
    with pytest.raises(ModelUnavailableError):
        Reranker("./no/such/model/dir")


def test_import_does_not_need_llama_index() -> None:
    code = (
        "import sys, rag_rerank.rerank.reranker; "
        "bad = sorted(m for m in sys.modules if m.startswith(('llama_index', 'sentence_transformers'))); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_embedded_minilm_ce_matches_cross_encoder(squad_beir: Path) -> None:
    from rag_rerank.io import load_beir

    corpus, queries, _ = load_beir(squad_beir)
    query = next(iter(queries.values()))
    docs = [d["text"] for d in list(corpus.values())[:16]]
    pairs = [(query, d) for d in docs]
    rr = Reranker("embedded:minilm-ce", device="cpu", batch_size=8)
    expected = load_cross_encoder("embedded:minilm-ce", device="cpu").predict(pairs, show_progress_bar=False)
    assert np.allclose(rr.predict(pairs), expected, atol=1e-5, rtol=0)
