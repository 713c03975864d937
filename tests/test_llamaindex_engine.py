"""RagRerankHybridRetriever and the query-engine recipe (retriever -> reranker -> LLM with cited sources)."""

from __future__ import annotations

import asyncio
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.base.response.schema import Response
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from rag_rerank.integrations.llamaindex import (
    CitedContextPostprocessor,
    RagRerankHybridRetriever,
    RagRerankPostprocessor,
    build_query_engine,
    format_answer,
    open_query_engine,
)
from rag_rerank.integrations.llamaindex.query_engine import truncate_text
from rag_rerank.rerank.reranker import Reranker
from rag_rerank.retrieval import HybridRetriever, build_index, load_index

QUERY = "which market sells apples on saturday?"
CORPUS = {
    "d0": {"title": "Market", "text": "Farmers bring apples and pears to the market square every Saturday morning."},
    "d1": {"title": "River", "text": "The river runs north past the old mill."},
    "d2": {"title": "Capital", "text": "The capital city of France hosts a summer festival."},
    "d3": {"title": "Market", "text": "Cheese and bread are sold at the Saturday market."},
    "d4": {"title": "Orchard", "text": "Apples grow in the orchard behind the mill, and the harvest is in autumn."},
    "d5": {"title": "", "text": "A short note."},
    "d6": {"title": "Festival", "text": "The festival in the capital attracts visitors every summer, with music."},
    "d7": {"title": "Mill", "text": "The old mill grinds wheat into flour for the bakery on market days."},
}


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bi_encoder_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("li-index") / "idx"
    build_index(CORPUS, out, bi_encoder=str(tiny_bi_encoder_dir), device="cpu")
    return out


@pytest.fixture(scope="module")
def hybrid(index_dir: Path) -> HybridRetriever:
    return load_index(index_dir)


@pytest.fixture(scope="module")
def sharp_ce_dir(make_sharp_cross_encoder) -> Path:
    return make_sharp_cross_encoder([(QUERY, d["text"]) for d in CORPUS.values()])


def _ids(nodes: list[NodeWithScore]) -> list[str]:
    return [n.node.node_id for n in nodes]


@pytest.mark.parametrize("mode", ["hybrid", "bm25", "dense"])
def test_retriever_returns_hybrid_order_and_scores(hybrid: HybridRetriever, mode: str) -> None:
    expected = hybrid.search({"q": QUERY}, top_k=5, mode=mode)["q"]
    nodes = RagRerankHybridRetriever(hybrid, similarity_top_k=5, mode=mode).retrieve(QUERY)
    assert 4 <= len(expected) <= 5  # BM25 returns only the 4 documents sharing a term with the query
    assert _ids(nodes) == list(expected)
    assert [n.score for n in nodes] == list(expected.values())
    assert all(isinstance(n.node, TextNode) for n in nodes)


def test_retriever_from_index_folder_equals_loaded(index_dir: Path, hybrid: HybridRetriever) -> None:
    from_dir = RagRerankHybridRetriever(index_dir, similarity_top_k=8).retrieve(QUERY)
    loaded = RagRerankHybridRetriever(hybrid, similarity_top_k=8).retrieve(QUERY)
    assert [(n.node.node_id, n.score) for n in from_dir] == [(n.node.node_id, n.score) for n in loaded]
    assert len(from_dir) == len(CORPUS)


def test_nodes_carry_text_title_and_chunk_metadata(hybrid: HybridRetriever) -> None:
    meta = {"d0": {"source": "market.md", "position": 3}}
    nodes = RagRerankHybridRetriever(hybrid, similarity_top_k=8, node_metadata=meta).retrieve(QUERY)
    by_id = {n.node.node_id: n.node for n in nodes}
    d0 = by_id["d0"]
    assert d0.text == CORPUS["d0"]["text"]
    assert d0.metadata == {"title": "Market", "source": "market.md", "position": 3}
    # the reranker scores the text alone (as in training); the LLM sees the title, not the file details
    assert d0.get_content(metadata_mode=MetadataMode.EMBED) == CORPUS["d0"]["text"]
    llm_view = d0.get_content(metadata_mode=MetadataMode.LLM)
    assert "title: Market" in llm_view and "market.md" not in llm_view
    assert by_id["d5"].metadata == {"title": ""}


def test_retriever_async_equals_sync(hybrid: HybridRetriever) -> None:
    r = RagRerankHybridRetriever(hybrid, similarity_top_k=4)
    sync = r.retrieve(QueryBundle(QUERY))
    async_ = asyncio.run(r.aretrieve(QueryBundle(QUERY)))
    assert [(n.node.node_id, n.score) for n in async_] == [(n.node.node_id, n.score) for n in sync]


def test_retriever_rejects_bad_settings(hybrid: HybridRetriever, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode='sparse'"):
        RagRerankHybridRetriever(hybrid, mode="sparse")
    with pytest.raises(ValueError, match="similarity_top_k"):
        RagRerankHybridRetriever(hybrid, similarity_top_k=0)
    with pytest.raises(ValueError, match="bi_encoder"):
        RagRerankHybridRetriever(hybrid, bi_encoder="embedded:minilm")
    bm25_only = build_index(CORPUS, tmp_path / "bm25-idx", bi_encoder=None)
    with pytest.raises(ValueError, match="BM25-only"):
        RagRerankHybridRetriever(bm25_only, mode="hybrid")
    assert _ids(RagRerankHybridRetriever(bm25_only, mode="bm25", similarity_top_k=2).retrieve(QUERY))


def test_truncate_text_cuts_at_a_word_boundary() -> None:
    assert truncate_text("the quick brown fox", 12) == "the quick ..."
    assert truncate_text("the quick brown fox", 19) == "the quick brown fox"
    assert truncate_text("abcdefghij", 4) == "abcd ..."
    assert truncate_text("abc", None) == "abc"


def test_cited_context_numbers_and_truncates_copies() -> None:
    nodes = [
        NodeWithScore(node=TextNode(id_="a", text="one two three four five", metadata={"title": "A"}), score=0.9),
        NodeWithScore(node=TextNode(id_="b", text="short", metadata={"title": "B"}), score=0.1),
    ]
    out = CitedContextPostprocessor(max_chars=10).postprocess_nodes(nodes)
    assert _ids(out) == ["a", "b"] and [n.score for n in out] == [0.9, 0.1]
    assert [n.node.metadata["citation"] for n in out] == [1, 2]
    assert out[0].node.text == "one two ..." and out[1].node.text == "short"
    assert "citation: 1" in out[0].node.get_content(metadata_mode=MetadataMode.LLM)
    assert out[0].node.get_content(metadata_mode=MetadataMode.EMBED) == "title: A\n\none two ..."
    assert nodes[0].node.text == "one two three four five" and "citation" not in nodes[0].node.metadata


def test_format_answer_lists_numbered_sources() -> None:
    src = [
        NodeWithScore(node=TextNode(id_="d3", text="x", metadata={"title": "Market", "citation": 1}), score=0.91234),
        NodeWithScore(node=TextNode(id_="d5", text="y", metadata={"title": ""}), score=None),
    ]
    text = format_answer(Response(response=" At the square [1]. ", source_nodes=src))
    assert text == "At the square [1].\n\nSources:\n[1] Market (score 0.912)  d3\n[2] (untitled)  d5"
    assert format_answer(Response(response=None)) == "(no answer)\n\nSources:\n(none)"


def test_query_engine_sources_are_the_rerankers_top_k(hybrid: HybridRetriever, sharp_ce_dir: Path) -> None:
    """Real engine and reranker; MockLLM echoes the prompt, so the test sees what the LLM was given."""
    retriever = RagRerankHybridRetriever(hybrid, similarity_top_k=6)
    engine = build_query_engine(
        retriever, reranker=str(sharp_ce_dir), top_k=3, llm=MockLLM(), max_chars_per_source=30, device="cpu"
    )
    assert isinstance(engine, RetrieverQueryEngine)
    response = engine.query(QUERY)

    candidates = retriever.retrieve(QUERY)
    scores = Reranker(str(sharp_ce_dir), device="cpu").predict([(QUERY, n.node.text) for n in candidates])
    assert np.ptp(scores) > 1e-3
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))[:3]
    assert _ids(response.source_nodes) == [candidates[i].node.node_id for i in order]
    assert np.allclose([n.score for n in response.source_nodes], scores[order], atol=1e-5, rtol=0)
    assert [n.node.metadata["citation"] for n in response.source_nodes] == [1, 2, 3]
    prompt = response.response
    assert QUERY in prompt and "citation: 1" in prompt and "citation: 4" not in prompt
    first = CORPUS[response.source_nodes[0].node.node_id]["text"]
    assert truncate_text(first, 30) in prompt and first not in prompt
    assert format_answer(response).splitlines()[-3].startswith("[1] ")


def test_build_query_engine_refuses_embedded_without_server(hybrid: HybridRetriever) -> None:
    with pytest.raises(ValueError, match="open_query_engine"):
        build_query_engine(hybrid, llm="embedded")
    with pytest.raises(ValueError, match="unknown --llm"):
        build_query_engine(hybrid, llm="gpt-4o")
    with pytest.raises(ValueError, match="similarity_top_k"):
        build_query_engine(RagRerankHybridRetriever(hybrid), llm=MockLLM(), similarity_top_k=5)


def test_openai_spec_builds_an_openai_like_llm(hybrid: HybridRetriever, tiny_cross_encoder_dir: Path) -> None:
    from llama_index.llms.openai_like import OpenAILike

    engine = build_query_engine(
        hybrid, llm="openai:my-model", base_url="http://127.0.0.1:9/v1", reranker=str(tiny_cross_encoder_dir),
        max_tokens=64, device="cpu",
    )
    llm = engine._response_synthesizer._llm
    assert isinstance(llm, OpenAILike)
    assert (llm.model, llm.api_base, llm.max_tokens) == ("my-model", "http://127.0.0.1:9/v1", 64)
    assert llm.is_chat_model and llm.temperature == 0.0


def test_missing_openai_like_names_the_extra(hybrid: HybridRetriever, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_index.llms.openai_like", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'rag-rerank\[llamaindex\]'"):
        build_query_engine(hybrid, llm="openai:my-model", base_url="http://127.0.0.1:9/v1")


def _healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url.removesuffix("/v1") + "/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


@pytest.mark.slow
def test_embedded_llm_engine_answers_with_reranked_sources(hybrid: HybridRetriever) -> None:
    """The whole recipe on the packaged models: hybrid retriever -> minilm-ce -> SmolLM2 via llama.cpp.

    torch is pinned on both sides, so the sources' scores can be compared exactly."""
    retriever = RagRerankHybridRetriever(hybrid, similarity_top_k=6)
    reranker = RagRerankPostprocessor(model="embedded:minilm-ce", top_k=3, device="cpu", backend="torch")
    with open_query_engine(retriever, reranker=reranker, max_tokens=48, llm_threads=2) as engine:
        base_url = engine._response_synthesizer._llm.api_base
        assert _healthy(base_url)
        response = engine.query(QUERY)
    assert not _healthy(base_url), "the embedded server must stop when the with block ends"

    assert isinstance(response.response, str) and response.response.strip()
    candidates = retriever.retrieve(QUERY)
    independent = Reranker("embedded:minilm-ce", device="cpu", cache_size=0, backend="torch")
    scores = independent.predict([(QUERY, n.node.text) for n in candidates])
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))[:3]
    assert _ids(response.source_nodes) == [candidates[i].node.node_id for i in order]
    assert np.allclose([n.score for n in response.source_nodes], scores[order], atol=1e-5, rtol=0)
    assert format_answer(response).startswith(response.response.strip())
