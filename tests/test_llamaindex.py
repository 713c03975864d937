"""RagRerankPostprocessor: parity with CrossEncoder.predict, LlamaIndex contract, threshold, interpolation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from rag_rerank.integrations.llamaindex import RagRerankPostprocessor
from rag_rerank.models import load_cross_encoder

QUERY = "which market sells apples on saturday?"
TEXTS = [
    "Farmers bring apples and pears to the market square every Saturday morning.",
    "The river runs north past the old mill.",
    "The capital city of France hosts a summer festival.",
    "Cheese and bread are sold at the Saturday market.",
    "Apples grow in the orchard behind the mill, and the harvest is in autumn.",
    "A short note.",
    "The festival in the capital attracts visitors from the whole country every summer, with music and food.",
]


@pytest.fixture(scope="module")
def sharp_ce_dir(make_sharp_cross_encoder) -> Path:
    """The tiny cross-encoder with a rescaled head, so orders and score comparisons are meaningful."""
    return make_sharp_cross_encoder([(QUERY, t) for t in TEXTS])


@pytest.fixture(scope="module")
def pp(sharp_ce_dir: Path) -> RagRerankPostprocessor:
    return RagRerankPostprocessor(model=str(sharp_ce_dir), top_k=3, device="cpu")


@pytest.fixture(scope="module")
def ce(sharp_ce_dir: Path) -> Any:
    return load_cross_encoder(str(sharp_ce_dir), device="cpu")


def _nodes(retrieval: list[float | None] | None = None) -> list[NodeWithScore]:
    retrieval = retrieval or [float(len(TEXTS) - i) for i in range(len(TEXTS))]
    return [
        NodeWithScore(
            node=TextNode(
                text=t,
                id_=f"n{i}",
                metadata={"title": f"doc {i}", "secret": "not for embedding"},
                excluded_embed_metadata_keys=["secret"],
            ),
            score=s,
        )
        for i, (t, s) in enumerate(zip(TEXTS, retrieval, strict=False))
    ]


def _expected(ce: Any, nodes: list[NodeWithScore], query: str = QUERY) -> np.ndarray:
    """Direct CrossEncoder.predict on the nodes' EMBED content (what the built-in rerankers score)."""
    pairs = [(query, n.node.get_content(metadata_mode=MetadataMode.EMBED)) for n in nodes]
    return ce.predict(pairs, show_progress_bar=False)


def _ids(nodes: list[NodeWithScore]) -> list[str]:
    return [n.node.node_id for n in nodes]


def test_order_and_scores_equal_cross_encoder_predict(pp: RagRerankPostprocessor, ce: Any) -> None:
    nodes = _nodes()
    expected = _expected(ce, nodes)
    assert np.ptp(expected) > 1e-3
    out = pp.postprocess_nodes(nodes, query_str=QUERY)
    order = sorted(range(len(nodes)), key=lambda i: (-expected[i], i))[:3]
    assert _ids(out) == [f"n{i}" for i in order]
    assert np.allclose([n.score for n in out], expected[order], atol=1e-5, rtol=0)
    # the caller's nodes are untouched
    assert [n.score for n in nodes] == [n.score for n in _nodes()]


def test_empty_and_missing_query(pp: RagRerankPostprocessor) -> None:
    assert pp.postprocess_nodes([], query_str=QUERY) == []
    with pytest.raises(ValueError, match="query"):
        pp.postprocess_nodes(_nodes())


def test_async_equals_sync(pp: RagRerankPostprocessor) -> None:
    sync = pp.postprocess_nodes(_nodes(), query_bundle=QueryBundle(QUERY))
    async_ = asyncio.run(pp.apostprocess_nodes(_nodes(), query_bundle=QueryBundle(QUERY)))
    assert _ids(async_) == _ids(sync)
    assert [n.score for n in async_] == [n.score for n in sync]


def test_model_loaded_once_and_reused(sharp_ce_dir: Path) -> None:
    pp = RagRerankPostprocessor(model=str(sharp_ce_dir), top_k=2, device="cpu")
    reranker = pp.reranker
    model = reranker.cross_encoder
    pp.postprocess_nodes(_nodes(), query_str=QUERY)
    asyncio.run(pp.apostprocess_nodes(_nodes(), query_str=QUERY))
    assert pp.reranker is reranker and pp.reranker.cross_encoder is model
    assert reranker.cache_info().hits == len(TEXTS)  # the second call was served by the same reranker's cache


def test_top_k_none_keeps_all_and_zero_keeps_none_and_top_n_is_an_alias(sharp_ce_dir: Path) -> None:
    everything = RagRerankPostprocessor(model=str(sharp_ce_dir), top_k=None, device="cpu")
    assert len(everything.postprocess_nodes(_nodes(), query_str=QUERY)) == len(TEXTS)
    nothing = RagRerankPostprocessor(model=str(sharp_ce_dir), top_k=0, device="cpu")
    assert nothing.postprocess_nodes(_nodes(), query_str=QUERY) == []
    llamaindex_style = RagRerankPostprocessor(model=str(sharp_ce_dir), top_n=1, device="cpu")
    assert llamaindex_style.top_k == 1 and len(llamaindex_style.postprocess_nodes(_nodes(), query_str=QUERY)) == 1


def test_score_threshold_filters(sharp_ce_dir: Path, ce: Any) -> None:
    expected = _expected(ce, _nodes())
    threshold = float(np.median(expected))
    pp = RagRerankPostprocessor(model=str(sharp_ce_dir), top_k=None, device="cpu", score_threshold=threshold)
    out = pp.postprocess_nodes(_nodes(), query_str=QUERY)
    assert sorted(_ids(out)) == sorted(f"n{i}" for i, s in enumerate(expected) if s >= threshold)
    assert 0 < len(out) < len(TEXTS)


def test_normalize_false_gives_logits(sharp_ce_dir: Path, ce: Any) -> None:
    pp = RagRerankPostprocessor(model=str(sharp_ce_dir), top_k=None, device="cpu", normalize=False)
    out = pp.postprocess_nodes(_nodes(), query_str=QUERY)
    nodes = _nodes()
    pairs = [(QUERY, n.node.get_content(metadata_mode=MetadataMode.EMBED)) for n in nodes]
    logits = ce.predict(pairs, activation_fn=torch.nn.Identity(), show_progress_bar=False)
    by_id = {n.node.node_id: n.score for n in out}
    assert np.allclose([by_id[f"n{i}"] for i in range(len(nodes))], logits, atol=1e-4, rtol=0)


def test_fusion_hand_computed_with_zscores(sharp_ce_dir: Path, ce: Any) -> None:
    retrieval = [3.0, 1.0, None, 2.0, 5.0, 1.0, 4.0]
    nodes = _nodes(retrieval)
    rr = _expected(ce, nodes).astype(float)
    alpha = 0.3
    ret = np.array([1.0 if s is None else s for s in retrieval])  # None counts as the minimum (1.0)
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731 - population std, as the z-score over one query's list
    final = alpha * z(rr) + (1 - alpha) * z(ret)
    pp = RagRerankPostprocessor(model=str(sharp_ce_dir), top_k=4, device="cpu", alpha=alpha)
    out = pp.postprocess_nodes(nodes, query_str=QUERY)
    order = sorted(range(len(nodes)), key=lambda i: (-final[i], i))[:4]
    assert _ids(out) == [f"n{i}" for i in order]
    assert np.allclose([n.score for n in out], final[order], atol=1e-4, rtol=0)
    with pytest.raises(ValueError):
        RagRerankPostprocessor(model=str(sharp_ce_dir), alpha=1.5)


def test_keep_retrieval_score_copies_nodes(sharp_ce_dir: Path) -> None:
    pp = RagRerankPostprocessor(model=str(sharp_ce_dir), top_k=None, device="cpu", keep_retrieval_score=True)
    nodes = _nodes()
    out = pp.postprocess_nodes(nodes, query_str=QUERY)
    original = {n.node.node_id: n for n in nodes}
    for n in out:
        src = original[n.node.node_id]
        assert n.node.metadata["retrieval_score"] == src.score
        # the scored / LLM text is unchanged, and the caller's node was not modified
        assert n.node.get_content(MetadataMode.EMBED) == src.node.get_content(MetadataMode.EMBED)
        assert n.node.get_content(MetadataMode.LLM) == src.node.get_content(MetadataMode.LLM)
        assert "retrieval_score" not in src.node.metadata


class _Recorder(BaseEventHandler):
    events: list = []

    def handle(self, event: Any, **kwargs: Any) -> None:
        self.events.append(event)


def test_instrumentation_events(pp: RagRerankPostprocessor) -> None:
    root = get_dispatcher()
    recorder = _Recorder(events=[])
    root.add_event_handler(recorder)
    try:
        out = pp.postprocess_nodes(_nodes(), query_str=QUERY)
    finally:
        root.event_handlers.remove(recorder)
    names = [e.class_name() for e in recorder.events if e.class_name().startswith("ReRank")]
    assert names == ["ReRankStartEvent", "ReRankEndEvent"]
    start, end = (e for e in recorder.events if e.class_name().startswith("ReRank"))
    assert start.top_n == 3 and start.model_name == pp.model and len(start.nodes) == len(TEXTS)
    assert _ids(end.nodes) == _ids(out)


def test_inside_a_query_engine(pp: RagRerankPostprocessor) -> None:
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.retrievers import BaseRetriever

    class FixedRetriever(BaseRetriever):
        def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            return _nodes()

    engine = RetrieverQueryEngine.from_args(FixedRetriever(), llm=MockLLM(), node_postprocessors=[pp])
    response = engine.query(QUERY)
    assert _ids(response.source_nodes) == _ids(pp.postprocess_nodes(_nodes(), query_str=QUERY))


@pytest.mark.slow
def test_done_when_12_squad_passages_embedded_minilm_ce(squad_beir: Path) -> None:
    """Issue 7: for 12 SQuAD passages, top_k=5 returns them in the order of Reranker.predict scores.

    The torch backend is pinned: the scores are compared with ``CrossEncoder.predict`` to 1e-5, which only fp32
    torch reproduces (``auto`` may pick an int8 or bf16 backend, whose parity is a ranking bar of its own,
    tested in test_backend_auto.py)."""
    from rag_rerank.io import load_beir
    from rag_rerank.rerank.reranker import Reranker

    corpus, queries, qrels = load_beir(squad_beir)
    qid = sorted(queries)[0]
    relevant = sorted(qrels[qid])[0]
    ids = list(corpus)
    start = ids.index(relevant)
    passages = ids[start : start + 12]
    assert len(passages) == 12
    nodes = [NodeWithScore(node=TextNode(text=corpus[d]["text"], id_=d), score=1.0 / (r + 1)) for r, d in
             enumerate(passages)]

    pp = RagRerankPostprocessor(model="embedded:minilm-ce", top_k=5, device="cpu", backend="torch")
    out = pp.postprocess_nodes(nodes, query_str=queries[qid])

    scores = Reranker("embedded:minilm-ce", device="cpu", backend="torch").predict(
        [(queries[qid], corpus[d]["text"]) for d in passages])
    order = sorted(range(12), key=lambda i: (-scores[i], i))[:5]
    assert _ids(out) == [passages[i] for i in order]
    assert np.allclose([n.score for n in out], scores[order], atol=1e-5, rtol=0)
    ce_scores = load_cross_encoder("embedded:minilm-ce", device="cpu").predict(
        [(queries[qid], corpus[d]["text"]) for d in passages], show_progress_bar=False
    )
    assert np.allclose(scores, ce_scores, atol=1e-5, rtol=0)


def test_default_serves_the_fused_system_evaluate_measures(sharp_ce_dir: Path, ce: Any, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    from rag_rerank.rerank.fusion import FusionChoice, save_fusion
    from rag_rerank.rerank.runs import interpolate_run

    model = tmp_path / "ce"
    shutil.copytree(sharp_ce_dir, model)
    save_fusion(model, FusionChoice(alpha=0.4, metric="mrr@10", value=1.0))
    retrieval = [3.0, 1.0, 2.5, 2.0, 5.0, 1.5, 4.0]
    nodes = _nodes(retrieval)
    rr = _expected(ce, nodes).astype(float)
    pp = RagRerankPostprocessor(model=str(model), top_k=None, device="cpu")  # alpha="auto" by default
    assert pp.alpha == "auto" and pp.fusion_alpha == 0.4
    out = pp.postprocess_nodes(nodes, query_str=QUERY)
    # the same order as the evaluated fused system (rag_rerank.rerank.runs.interpolate_run over all the nodes)
    ids = [f"n{i}" for i in range(len(nodes))]
    first_stage = {"q": dict(zip(ids, retrieval, strict=True))}
    fused = interpolate_run(first_stage, {"q": dict(zip(ids, rr, strict=True))}, 0.4, len(nodes))["q"]
    assert _ids(out) == sorted(ids, key=lambda d: -fused[d])
    assert _ids(out) != sorted(ids, key=lambda d: -rr[ids.index(d)])  # and not the reranker's order alone
    with caplog.at_level("INFO", logger="rag_rerank"):  # whatever level an earlier CLI test (-q) left it at
        plain = RagRerankPostprocessor(model=str(sharp_ce_dir), device="cpu")
    assert plain.fusion_alpha is None and "no fusion.json" in caplog.text
    assert RagRerankPostprocessor(model=str(model), device="cpu", alpha=None).fusion_alpha is None
    with pytest.raises(ValueError):
        RagRerankPostprocessor(model=str(sharp_ce_dir), alpha="sometimes")


def test_a_query_past_the_guard_is_served_in_retrieval_order_without_running_the_model(
        sharp_ce_dir: Path, tmp_path: Path) -> None:
    import shutil

    from rag_rerank.rerank.fusion import FusionChoice, save_fusion

    model = tmp_path / "ce"
    shutil.copytree(sharp_ce_dir, model)
    limit = len(QUERY.split())  # the query itself is at the limit: fused; one word more is past it
    save_fusion(model, FusionChoice(alpha=0.4, metric="mrr@10", value=1.0, max_query_words=limit))
    retrieval = [3.0, 1.0, 2.5, 2.0, 5.0, 1.5, 4.0]
    pp = RagRerankPostprocessor(model=str(model), top_k=None, device="cpu")  # query_guard="auto": fusion.json's
    unguarded = RagRerankPostprocessor(model=str(model), top_k=None, device="cpu", query_guard=None)
    assert pp.alpha_for(QUERY) == 0.4 and pp.alpha_for(QUERY + " please") == 0.0
    assert _ids(pp.postprocess_nodes(_nodes(retrieval), query_str=QUERY)) == _ids(
        unguarded.postprocess_nodes(_nodes(retrieval), query_str=QUERY))  # within the guard: the fused system
    calls = []
    pp.reranker.predict = lambda *a, **k: calls.append(a) or []  # the model must not run past the guard
    out = pp.postprocess_nodes(_nodes(retrieval), query_str=QUERY + " please")
    assert not calls and _ids(out) == [f"n{i}" for i in sorted(range(len(retrieval)), key=lambda i: -retrieval[i])]
    assert unguarded.alpha_for(QUERY + " please") == 0.4
    assert RagRerankPostprocessor(model=str(model), device="cpu", query_guard=3).alpha_for(QUERY) == 0.0
    assert RagRerankPostprocessor(model=str(model), device="cpu", alpha=None).alpha_for(QUERY + " please") is None
    with pytest.raises(ValueError, match="query_guard"):
        RagRerankPostprocessor(model=str(model), device="cpu", query_guard=0)
    save_fusion(model, FusionChoice(alpha=0.4, metric="mrr@10", value=1.0, max_query_words=limit,
                                    query_form="question"))  # a reranker trained on questions only
    formed = RagRerankPostprocessor(model=str(model), top_k=None, device="cpu")
    assert formed.alpha_for(QUERY) == 0.4 and formed.alpha_for("apples market saturday") == 0.0
    formed.reranker.predict = lambda *a, **k: calls.append(a) or []
    out = formed.postprocess_nodes(_nodes(retrieval), query_str="apples market saturday")
    assert not calls and _ids(out) == [f"n{i}" for i in sorted(range(len(retrieval)), key=lambda i: -retrieval[i])]
    assert RagRerankPostprocessor(model=str(model), device="cpu", query_guard=None).alpha_for("apples") == 0.4


def test_the_postprocessor_counts_what_the_guard_did_and_warns_once_when_it_serves_most_queries(
        sharp_ce_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    from rag_rerank.integrations.llamaindex.postprocessor import GUARD_WARN_AFTER
    from rag_rerank.rerank.fusion import FusionChoice, save_fusion

    model = tmp_path / "ce"
    shutil.copytree(sharp_ce_dir, model)
    save_fusion(model, FusionChoice(alpha=0.4, metric="mrr@10", value=1.0, max_query_words=8, query_form="question"))
    pp = RagRerankPostprocessor(model=str(model), top_k=2, device="cpu")
    retrieval = [3.0, 1.0, 2.5]
    with caplog.at_level("WARNING", logger="rag_rerank"):
        pp.postprocess_nodes(_nodes(retrieval), query_str=QUERY)  # fused
        pp.postprocess_nodes(_nodes(retrieval), query_str=QUERY + " and on sunday and on monday too")  # too long
        for i in range(GUARD_WARN_AFTER):
            pp.postprocess_nodes(_nodes(retrieval), query_str=f"apples market {i}")  # not questions
    info = pp.guard_info()
    assert info == {"max_query_words": 8, "query_form": "question", "queries": GUARD_WARN_AFTER + 2,
                    "guarded": GUARD_WARN_AFTER + 1, "too_long": 1, "not_a_question": GUARD_WARN_AFTER}
    warnings = [r.getMessage() for r in caplog.records if "query guard served" in r.getMessage()]
    assert len(warnings) == 1 and "--query-examples" in warnings[0]  # once, not on every query after
    alone = RagRerankPostprocessor(model=str(model), top_k=2, device="cpu", alpha=None)
    alone.postprocess_nodes(_nodes(retrieval), query_str="apples market")
    assert alone.guard_info()["queries"] == 0  # the reranker alone is never guarded
