"""Fusion, dense retrieval (tiny bi-encoder), the embedding cache, index folders and the CLI."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from click.testing import CliRunner

from rag_rerank.cli import main
from rag_rerank.errors import DataError
from rag_rerank.io import load_beir, load_run, save_corpus, save_queries
from rag_rerank.retrieval import (
    BiEncoderMismatchError,
    BM25Retriever,
    DenseRetriever,
    HybridRetriever,
    build_index,
    load_index,
    normalize_scores,
    rrf,
    weighted_fusion,
)

CORPUS = {
    "c1": {"title": "Paris", "text": "Paris is the capital of France and sits on the Seine."},
    "c2": {"title": "Berlin", "text": "Berlin is the capital of Germany."},
    "c3": {"title": "Seine", "text": "The Seine is a river that flows through Paris."},
    "c4": {"title": "Rome", "text": "Rome was the capital of the Roman Empire."},
    "c5": {"title": "Cats", "text": "Cats are small domesticated carnivores."},
    "c6": {"title": "Dogs", "text": "Dogs were domesticated from wolves."},
}
QUERIES = {"q1": "capital of France", "q2": "river through Paris", "q3": "domesticated wolves", "q4": "zzz"}


# ----------------------------------------------------------------------------- fusion (hand-computed)


def test_rrf_hand_computed():
    a = {"q": {"x": 3.0, "y": 2.0, "z": 1.0}}
    b = {"q": {"z": 0.9, "x": 0.5}}
    fused = rrf([a, b], k=60)["q"]
    expect = {"x": 1 / 61 + 1 / 62, "z": 1 / 63 + 1 / 61, "y": 1 / 62}
    assert list(fused) == ["x", "z", "y"]
    assert fused == pytest.approx(expect)
    weighted = rrf([a, b], k=1, weights=[2.0, 0.5])["q"]
    assert weighted == pytest.approx({"x": 2 / 2 + 0.5 / 3, "y": 2 / 3, "z": 2 / 4 + 0.5 / 2})
    assert list(rrf([a, b], top_k=1)["q"]) == ["x"]


def test_rrf_ranks_ties_by_doc_id_and_keeps_queries_of_either_run():
    fused = rrf([{"q": {"b": 1.0, "a": 1.0}}, {"p": {"c": 1.0}}], k=0)
    assert fused["q"] == {"a": 1.0, "b": 0.5}  # tie in the input: 'a' ranks first
    assert fused["p"] == {"c": 1.0}


def test_weighted_fusion_minmax_hand_computed():
    a = {"q": {"x": 10.0, "y": 6.0, "z": 2.0}}
    b = {"q": {"y": 0.8, "w": 0.4}}
    fused = weighted_fusion([a, b], weights=[1.0, 2.0], norm="minmax")["q"]
    # a -> x 1, y .5, z 0 ; b -> y 1, w 0 ; missing -> 0
    assert fused == pytest.approx({"x": 1.0, "y": 0.5 + 2.0, "z": 0.0, "w": 0.0})
    assert list(fused) == ["y", "x", "w", "z"]  # w and z tie at 0: by doc id


def test_weighted_fusion_zscore_hand_computed():
    a = {"q": {"x": 3.0, "y": 1.0}}  # mean 2, std 1 -> x 1, y -1
    b = {"q": {"x": 5.0, "y": 5.0, "z": 8.0}}  # mean 6, std sqrt(2) -> x,y -1/sqrt2, z 2/sqrt2
    fused = weighted_fusion([a, b], norm="zscore")["q"]
    s = 2**0.5
    # z is missing from a: it gets a's lowest z (-1)
    assert fused == pytest.approx({"x": 1 - 1 / s, "y": -1 - 1 / s, "z": -1 + 2 / s})


def test_normalize_scores_edge_cases():
    assert normalize_scores({}) == {}
    assert normalize_scores({"a": 2.0, "b": 2.0}) == {"a": 1.0, "b": 1.0}
    assert normalize_scores({"a": 2.0, "b": 2.0}, "zscore") == {"a": 0.0, "b": 0.0}
    with pytest.raises(ValueError, match="norm"):
        normalize_scores({"a": 1.0}, "l2")
    with pytest.raises(ValueError, match="one weight per run"):
        rrf([{}, {}], weights=[1.0])


def test_fusion_does_not_mutate_inputs():
    a, b = {"q": {"x": 1.0, "y": 0.5}}, {"q": {"y": 2.0}}
    snapshot = json.dumps([a, b])
    rrf([a, b])
    weighted_fusion([a, b], norm="zscore")
    assert json.dumps([a, b]) == snapshot


# ----------------------------------------------------------------------------- dense + cache


@pytest.fixture(scope="module")
def tiny_dense(tiny_bi_encoder_dir):
    return DenseRetriever(str(tiny_bi_encoder_dir), device="cpu").index(CORPUS)


def _count_encode(retriever: DenseRetriever) -> list[int]:
    """Wrap the real model's encode so the test sees how many texts it is asked to embed."""
    calls: list[int] = []
    real = retriever.model.encode

    def counting(texts, *args, **kwargs):
        calls.append(len(texts))
        return real(texts, *args, **kwargs)

    retriever.model.encode = counting
    return calls


def test_dense_search_shape_and_order(tiny_dense):
    run = tiny_dense.search(QUERIES, top_k=4)
    assert set(run) == set(QUERIES)
    for ranking in run.values():
        assert len(ranking) == 4 and set(ranking) <= set(CORPUS)
        items = list(ranking.items())
        assert items == sorted(items, key=lambda kv: (-kv[1], kv[0]))
        assert all(isinstance(s, float) and -1.0001 <= s <= 1.0001 for s in ranking.values())
    assert len(tiny_dense.search({"q": "x"}, top_k=100)["q"]) == len(CORPUS)  # never padded
    norms = np.linalg.norm(tiny_dense.vectors(), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_dense_exact_match_ranks_itself_first(tiny_dense):
    # a doc's own text is its nearest neighbour under cosine, even for an untrained encoder
    queries = {d: f"{v['title']} {v['text']}" for d, v in CORPUS.items()}
    run = tiny_dense.search(queries, top_k=1)
    assert all(list(run[d]) == [d] for d in CORPUS)


def test_embedding_cache_skips_unchanged_chunks(tiny_bi_encoder_dir, tmp_path):
    r = DenseRetriever(str(tiny_bi_encoder_dir), device="cpu", cache_dir=tmp_path / "cache")
    calls = _count_encode(r)
    r.index(CORPUS)
    assert calls == [len(CORPUS)]
    r.index(CORPUS)
    assert calls == [len(CORPUS)]  # nothing re-encoded
    changed = {**CORPUS, "c7": {"title": "New", "text": "A brand new chunk."}}
    r.index(changed)
    assert calls == [len(CORPUS), 1]  # only the new chunk
    fresh = DenseRetriever(str(tiny_bi_encoder_dir), device="cpu", cache_dir=tmp_path / "cache")
    fresh_calls = _count_encode(fresh)
    fresh.index(changed)
    assert fresh_calls == []  # served from the on-disk cache
    np.testing.assert_allclose(fresh.vectors(), r.vectors(), atol=1e-6)


def test_reindexing_into_an_existing_index_reuses_its_embeddings(tiny_bi_encoder_dir, tmp_path):
    out = tmp_path / "idx"
    build_index(CORPUS, out, bi_encoder=str(tiny_bi_encoder_dir), device="cpu")
    previous = DenseRetriever.load(out)
    r = DenseRetriever(str(tiny_bi_encoder_dir), device="cpu")
    calls = _count_encode(r)
    assert r.seed_cache(previous) == len(CORPUS)
    r.index({**CORPUS, "c1": {"title": "Paris", "text": "Paris changed."}})
    assert calls == [1]


def test_hybrid_save_load_round_trip_gives_identical_runs(tiny_bi_encoder_dir, tmp_path):
    h = HybridRetriever(BM25Retriever(), DenseRetriever(str(tiny_bi_encoder_dir), device="cpu"), depth=(4, 3))
    h.index(CORPUS)
    h.save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx")
    for mode in ("bm25", "dense", "hybrid"):
        assert loaded.search(QUERIES, top_k=5, mode=mode) == h.search(QUERIES, top_k=5, mode=mode)
    assert loaded.corpus == CORPUS
    assert loaded.depth == (4, 3)
    hybrid = h.search(QUERIES, top_k=5)
    assert hybrid == rrf([h.bm25.search(QUERIES, 4), h.dense.search(QUERIES, 3)], top_k=5)
    assert set(hybrid) == set(QUERIES)
    w = load_index(tmp_path / "idx", fusion="weighted", norm="zscore").search(QUERIES, top_k=5)
    assert w == weighted_fusion([h.bm25.search(QUERIES, 4), h.dense.search(QUERIES, 3)], norm="zscore", top_k=5)


@pytest.mark.parametrize("fusion,depth", [("rrf", None), ("rrf", 2), ("weighted", 5)])
def test_search_all_equals_separate_searches(tiny_dense, fusion, depth):
    """One BM25 and one dense pass give the same three runs as three searches (depth < and > top_k)."""
    hybrid = HybridRetriever(BM25Retriever().index(CORPUS), tiny_dense, fusion=fusion, depth=depth)
    timings: dict[str, float] = {}
    runs = hybrid.search_all(QUERIES, top_k=3, timings=timings)
    for mode in ("bm25", "dense", "hybrid"):
        assert runs[mode] == hybrid.search(QUERIES, top_k=3, mode=mode), mode
    assert set(timings) == {"bm25", "dense", "hybrid"} and timings["hybrid"] >= timings["dense"]


def test_load_refuses_a_different_bi_encoder(tiny_bi_encoder_dir, minilm_dir, tmp_path):
    build_index(CORPUS, tmp_path / "idx", bi_encoder=str(tiny_bi_encoder_dir), device="cpu")
    with pytest.raises(BiEncoderMismatchError, match="built with bi-encoder") as e:
        load_index(tmp_path / "idx", bi_encoder=str(minilm_dir))
    assert "rebuild the index" in str(e.value)
    assert load_index(tmp_path / "idx", bi_encoder=str(tiny_bi_encoder_dir)).dense is not None


def test_bm25_only_index(tmp_path):
    h = build_index(CORPUS, tmp_path / "idx", bi_encoder=None)
    assert h.dense is None
    loaded = load_index(tmp_path / "idx")
    assert loaded.search(QUERIES, mode="bm25") == BM25Retriever().index(CORPUS).search(QUERIES)
    with pytest.raises(ValueError, match="needs a dense index"):
        loaded.search(QUERIES, mode="hybrid")


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="not an index folder"):
        load_index(tmp_path)
    with pytest.raises(ValueError, match="mode"):
        HybridRetriever(BM25Retriever().index(CORPUS)).search(QUERIES, mode="sparse")


# ----------------------------------------------------------------------------- CLI


def test_cli_index_and_retrieve(tiny_bi_encoder_dir, tmp_path):
    data = tmp_path / "dataset"
    save_corpus(data / "corpus.jsonl", CORPUS)
    save_queries(tmp_path / "queries.jsonl", QUERIES)
    runner = CliRunner()
    res = runner.invoke(main, ["index", str(data), "--out", str(tmp_path / "idx"), "--bi-encoder",
                               str(tiny_bi_encoder_dir), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    for mode in ("bm25", "dense", "hybrid"):
        out = tmp_path / f"{mode}.trec"
        res = runner.invoke(main, ["retrieve", str(tmp_path / "idx"), "--queries", str(tmp_path / "queries.jsonl"),
                                   "--top-k", "3", "--mode", mode, "--out", str(out)])
        assert res.exit_code == 0, res.output
        lines = [line.split() for line in out.read_text().splitlines()]
        assert all(len(p) == 6 and p[1] == "Q0" and p[5] == f"rag-rerank-{mode}" for p in lines)
        for qid in {p[0] for p in lines}:
            ranks = [int(p[3]) for p in lines if p[0] == qid]
            scores = [float(p[4]) for p in lines if p[0] == qid]
            assert ranks == list(range(1, len(ranks) + 1)) and len(ranks) <= 3
            assert scores == sorted(scores, reverse=True)
        expected = load_index(tmp_path / "idx").search(QUERIES, top_k=3, mode=mode)
        got = load_run(out)
        assert {q: list(r) for q, r in got.items()} == {q: list(r) for q, r in expected.items() if r}


def test_cli_user_errors_are_one_line(tiny_bi_encoder_dir, minilm_dir, tmp_path):
    save_corpus(tmp_path / "corpus.jsonl", CORPUS)
    save_queries(tmp_path / "queries.jsonl", QUERIES)
    runner = CliRunner()
    res = runner.invoke(main, ["index", str(tmp_path / "corpus.jsonl"), "--out", str(tmp_path / "idx"), "--no-dense"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["retrieve", str(tmp_path / "idx"), "-q", str(tmp_path / "queries.jsonl"),
                               "--mode", "dense", "--out", str(tmp_path / "r.trec")])
    assert res.exit_code != 0 and "needs a dense index" in res.output and "Traceback" not in res.output
    empty = tmp_path / "nocorpus"
    empty.mkdir()
    res = runner.invoke(main, ["index", str(empty), "--out", str(tmp_path / "idx2")])
    assert res.exit_code != 0 and "no corpus.jsonl" in res.output


# ----------------------------------------------------------------------------- real model, real data


@pytest.mark.slow
def test_real_minilm_on_squad_sample(squad_beir):
    corpus, queries, qrels = load_beir(squad_beir)
    docs = sorted(corpus)[:: len(corpus) // 150][:150]  # ~150 passages spread over the articles
    sub = {d: corpus[d] for d in docs}
    qids = sorted(q for q in queries if set(qrels[q]) & set(docs))
    qids = random.Random(0).sample(qids, min(200, len(qids)))
    h = HybridRetriever(BM25Retriever(), DenseRetriever("embedded:minilm", device="cpu")).index(sub)
    qs = {q: queries[q] for q in qids}
    runs = {m: h.search(qs, top_k=10, mode=m) for m in ("bm25", "dense", "hybrid")}

    def mrr(run):
        return float(np.mean([next((1 / i for i, d in enumerate(run[q], 1) if d in qrels[q]), 0.0) for q in qids]))

    def hit(run):
        return float(np.mean([any(d in qrels[q] for d in run[q]) for q in qids]))

    # a working system: hybrid is not worse than BM25 alone; the bi-encoder finds gold for most questions
    assert mrr(runs["hybrid"]) >= mrr(runs["bm25"]) - 0.03
    assert hit(runs["dense"]) >= 0.75
    assert mrr(runs["dense"]) >= 0.5
