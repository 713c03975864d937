"""A query engine that answers with cited sources: hybrid retriever -> reranker -> LLM.

The recipe is: :class:`~rag_rerank.integrations.llamaindex.RagRerankHybridRetriever` (BM25 + dense,
``similarity_top_k`` candidates; with an adapted model, the tuned first stage saved in its ``fusion.json``) ->
:class:`~rag_rerank.integrations.llamaindex.RagRerankPostprocessor` (the fine-tuned cross-encoder, fused with the
first stage as it was measured, keeps ``top_k``) -> :class:`CitedContextPostprocessor` (numbers the sources and
truncates their text for a small LLM) -> the LLM's answer. ``response.source_nodes`` are the reranked nodes, in
the reranker's order with its scores; :func:`format_answer` prints the answer followed by the numbered sources.

The LLM sees ``citation: N``, ``title: ...`` and the text, cut to ``max_chars_per_source`` characters at a word
boundary; other chunk metadata (``source``, ``position``, ...) stays on the node but out of the prompt.

LLMs: ``llm="embedded"`` is the packaged SmolLM2 served by llama.cpp. :func:`open_query_engine` starts that
server and stops it when the ``with`` block ends; :func:`build_query_engine` never starts a process, so with
``"embedded"`` it needs the ``base_url`` of a server you run. ``"openai:MODEL"`` talks to OpenAI, or with
``base_url`` to any OpenAI-compatible server; an LLM object is used as it is.

Example:
    >>> from rag_rerank.integrations.llamaindex import open_query_engine, format_answer
    >>> with open_query_engine("runs/index", reranker="runs/reranker") as engine:  # doctest: +SKIP
    ...     print(format_answer(engine.query("Which team won Super Bowl 50?")))
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rag_rerank.errors import ConfigError, missing_extra

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.bridge.pydantic import Field
    from llama_index.core.llms import LLM
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.prompts import PromptTemplate
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
except ImportError as e:  # pragma: no cover - llama-index-core is a core dependency
    raise missing_extra("llama-index-core", "llamaindex") from e

from rag_rerank.integrations.llamaindex.postprocessor import RagRerankPostprocessor, with_key
from rag_rerank.integrations.llamaindex.retriever import TITLE_KEY, RagRerankHybridRetriever
from rag_rerank.retrieval.hybrid import HybridRetriever

logger = logging.getLogger(__name__)

CITATION_KEY = "citation"
QA_PROMPT = (
    "Answer the question using only the numbered sources below, and cite them like [1].\n"
    "If the sources do not contain the answer, say that you do not know.\n\n"
    "{context_str}\n\n"
    "Question: {query_str}\n"
    "Answer: "
)
"""The answer prompt (``{context_str}``, ``{query_str}``); override it with ``qa_prompt=``."""


class CitedContextPostprocessor(BaseNodePostprocessor):
    """Number the final nodes ``1..n`` for citation and cut their text to fit a small LLM's context.

    Returns copies (the caller's nodes are not changed) with ``metadata["citation"] = n`` (shown to the LLM,
    hidden from embeddings) and the text cut at the last word boundary before ``max_chars``, followed by
    `` ...``. Put it last, after the reranker: the numbers follow the reranked order. The copies are what
    the LLM saw, so ``response.source_nodes`` hold the truncated text.

    Example:
        >>> pp = CitedContextPostprocessor(max_chars=800)
        >>> out = pp.postprocess_nodes([NodeWithScore(node=TextNode(text="Paris is in France."), score=1.0)])
        >>> out[0].node.metadata["citation"], out[0].node.get_content()
        (1, 'Paris is in France.')
    """

    max_chars: int | None = Field(default=1000, gt=0, description="Characters of text per node; None keeps all.")

    @classmethod
    def class_name(cls) -> str:
        return "CitedContextPostprocessor"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        out, cut = [], 0
        for number, item in enumerate(nodes, 1):
            node = item.node
            update: dict[str, Any] = {
                "metadata": {**node.metadata, CITATION_KEY: number},
                "excluded_embed_metadata_keys": with_key(node.excluded_embed_metadata_keys, CITATION_KEY),
                "excluded_llm_metadata_keys": [k for k in node.excluded_llm_metadata_keys if k != CITATION_KEY],
            }
            if isinstance(node, TextNode):
                text = truncate_text(node.text, self.max_chars)
                cut += text != node.text
                update["text"] = text
            out.append(NodeWithScore(node=node.model_copy(update=update), score=item.score))
        if cut:
            logger.info("cut %d of %d sources to %d characters for the LLM", cut, len(nodes), self.max_chars)
        return out


def truncate_text(text: str, max_chars: int | None) -> str:
    """``text`` cut at the last whitespace before ``max_chars`` (hard cut when there is none), plus ``" ..."``.

    Example:
        >>> truncate_text("the quick brown fox", 12)
        'the quick ...'
    """
    if max_chars is None or len(text) <= max_chars:
        return text
    head = text[:max_chars]
    space = head.rstrip().rfind(" ")
    if space > 0:
        head = head[:space]
    return head.rstrip() + " ..."


def _resolve_llm(
    llm: str | LLM,
    base_url: str | None,
    api_key: str | None,
    *,
    temperature: float,
    max_tokens: int,
    context_window: int,
    seed: int | None,
    timeout: float = 300.0,
) -> LLM:
    """An LLM object for ``llm``: returned as is, or an ``OpenAILike`` for ``"embedded"`` / ``"openai:MODEL"``."""
    if isinstance(llm, LLM):
        return llm
    if not isinstance(llm, str):
        raise ConfigError(f"llm={llm!r}: give 'embedded', 'openai:MODEL' or a LlamaIndex LLM object")
    from rag_rerank.generate.llm import parse_llm_spec

    kind, model = parse_llm_spec(llm)
    if kind == "embedded":
        if base_url is None:
            raise ConfigError(
                f"llm={llm!r} needs a running server: use open_query_engine(...), which starts and stops it, "
                "or pass base_url=EmbeddedLLMServer().start().base_url"
            )
        model = "embedded"
    try:
        from llama_index.llms.openai_like import OpenAILike
    except ImportError as e:
        raise missing_extra("llama-index-llms-openai-like", "llamaindex") from e
    key = api_key or os.environ.get("OPENAI_API_KEY") or ("sk-no-key-needed" if base_url else None)
    kwargs: dict[str, Any] = {"api_base": base_url} if base_url else {}
    return OpenAILike(
        model=model,
        api_key=key,
        is_chat_model=True,
        context_window=context_window,
        max_tokens=max_tokens,
        temperature=temperature,
        additional_kwargs={} if seed is None else {"seed": seed},
        timeout=timeout,
        **kwargs,
    )


def _resolve_retriever(
    index: HybridRetriever | BaseRetriever | str | os.PathLike,
    similarity_top_k: int | None,
    mode: str | None,
    bi_encoder: str | None,
    first_stage: Mapping[str, Any] | None = None,
) -> BaseRetriever:
    if isinstance(index, BaseRetriever):
        given = {"similarity_top_k": similarity_top_k, "mode": mode, "bi_encoder": bi_encoder}
        if any(v is not None for v in given.values()):
            set_ = sorted(k for k, v in given.items() if v is not None)
            raise ConfigError(f"{set_} apply when building the retriever; set them on the retriever you pass instead")
        return index
    return RagRerankHybridRetriever(
        index,
        similarity_top_k=20 if similarity_top_k is None else similarity_top_k,
        mode="hybrid" if mode is None else mode,
        bi_encoder=bi_encoder,
        first_stage=first_stage,
    )


def _shipped_first_stage(reranker: Any) -> dict[str, Any] | None:
    """The tuned first stage a reranker was adapted with (its ``fusion.json``), to serve the measured system."""
    from rag_rerank.rerank.fusion import load_fusion

    if isinstance(reranker, BaseNodePostprocessor):
        reranker = getattr(reranker, "model", None)
    if reranker is None or not Path(str(reranker)).is_dir():
        return None
    saved = load_fusion(str(reranker))
    return dict(saved.first_stage) if saved is not None and saved.first_stage else None


def _resolve_reranker(
    reranker: str | os.PathLike | BaseNodePostprocessor, top_k: int, device: str | None
) -> BaseNodePostprocessor:
    if isinstance(reranker, BaseNodePostprocessor):
        return reranker
    return RagRerankPostprocessor(model=str(reranker), top_k=top_k, device=device)


def build_query_engine(
    index: HybridRetriever | BaseRetriever | str | os.PathLike,
    *,
    reranker: str | os.PathLike | RagRerankPostprocessor | BaseNodePostprocessor = "embedded:minilm-ce",
    top_k: int = 5,
    similarity_top_k: int | None = None,
    mode: str | None = None,
    bi_encoder: str | None = None,
    llm: str | LLM = "embedded",
    base_url: str | None = None,
    api_key: str | None = None,
    max_chars_per_source: int | None = 1000,
    qa_prompt: str = QA_PROMPT,
    temperature: float = 0.0,
    max_tokens: int = 256,
    context_window: int = 4096,
    seed: int | None = 0,
    device: str | None = None,
    timeout: float = 300.0,
) -> RetrieverQueryEngine:
    """Hybrid retrieval -> reranker -> LLM answer with numbered sources, as a LlamaIndex query engine.

    Starts no process: for the embedded LLM use :func:`open_query_engine`, or pass ``base_url`` of an
    :class:`~rag_rerank.generate.server.EmbeddedLLMServer` you started.

    Args:
        index: an index folder, a ``HybridRetriever``, or any LlamaIndex retriever (used as it is).
        reranker: a cross-encoder (folder, hub id, ``embedded:*``) or a ready postprocessor (used as it is).
        top_k: nodes the reranker keeps (the LLM's sources); ignored for a ready postprocessor.
        similarity_top_k: first-stage candidates (default 20); only when the retriever is built here.
        mode: ``"hybrid"`` (default), ``"bm25"`` or ``"dense"``; only when the retriever is built here.
        bi_encoder: the bi-encoder expected by an index folder.
        llm: ``"embedded"``, ``"openai:MODEL"`` or a LlamaIndex ``LLM``.
        base_url: OpenAI-compatible endpoint (required for ``"embedded"`` here).
        api_key: overrides ``$OPENAI_API_KEY``.
        max_chars_per_source: text per source in the prompt (None keeps all).
        qa_prompt: the answer prompt, with ``{context_str}`` and ``{query_str}``.
        temperature, max_tokens, context_window, seed: LLM settings (for ``llm`` given as a string).
        timeout: seconds per LLM request (a small CPU model answering over long sources can be slow).
        device: the reranker's device.

    Raises:
        ValueError: for an unknown ``llm``, ``"embedded"`` without ``base_url``, or retriever settings given
            together with a ready retriever.

    Example:
        >>> engine = build_query_engine("runs/index", llm="openai:gpt-4o-mini")  # doctest: +SKIP
        >>> print(format_answer(engine.query("Which team won Super Bowl 50?")))  # doctest: +SKIP
    """
    llm_obj = _resolve_llm(
        llm, base_url, api_key,
        temperature=temperature, max_tokens=max_tokens, context_window=context_window, seed=seed, timeout=timeout,
    )
    retriever = _resolve_retriever(index, similarity_top_k, mode, bi_encoder, _shipped_first_stage(reranker))
    rerank = _resolve_reranker(reranker, top_k, device)
    return RetrieverQueryEngine.from_args(
        retriever,
        llm=llm_obj,
        node_postprocessors=[rerank, CitedContextPostprocessor(max_chars=max_chars_per_source)],
        text_qa_template=PromptTemplate(qa_prompt),
    )


@contextlib.contextmanager
def open_query_engine(
    index: HybridRetriever | BaseRetriever | str | os.PathLike,
    *,
    llm: str | LLM = "embedded",
    base_url: str | None = None,
    reranker: str | os.PathLike | BaseNodePostprocessor = "embedded:minilm-ce",
    top_k: int = 5,
    similarity_top_k: int | None = None,
    mode: str | None = None,
    bi_encoder: str | None = None,
    device: str | None = None,
    context_window: int = 4096,
    llm_threads: int = 0,
    **options: Any,
) -> Iterator[RetrieverQueryEngine]:
    """:func:`build_query_engine` in a ``with`` block that owns the embedded LLM server.

    With ``llm="embedded"`` (or a ``.gguf`` path) and no ``base_url``, the retriever and reranker are loaded
    first, then llama.cpp's server is started (``context_window`` tokens, ``llm_threads`` threads, 0 = all
    cores) and stopped when the block ends, also on errors. Otherwise nothing is started.

    Args:
        index, llm, base_url, reranker, top_k, similarity_top_k, mode, bi_encoder, device, context_window:
            as for :func:`build_query_engine`.
        llm_threads: CPU threads for the embedded server.
        **options: other :func:`build_query_engine` arguments (``max_chars_per_source``, ``qa_prompt``, ...).

    Example:
        >>> with open_query_engine("runs/index", reranker="runs/reranker", top_k=3) as engine:  # doctest: +SKIP
        ...     response = engine.query("Which team won Super Bowl 50?")
        ...     print(format_answer(response))
    """
    from rag_rerank.generate.llm import parse_llm_spec
    from rag_rerank.generate.server import EmbeddedLLMServer

    kind, model = parse_llm_spec(llm) if isinstance(llm, str) else ("object", "")
    if kind != "embedded" or base_url is not None:
        yield build_query_engine(
            index, llm=llm, base_url=base_url, reranker=reranker, top_k=top_k, similarity_top_k=similarity_top_k,
            mode=mode, bi_encoder=bi_encoder, device=device, context_window=context_window, **options,
        )
        return
    retriever = _resolve_retriever(index, similarity_top_k, mode, bi_encoder, _shipped_first_stage(reranker))
    rerank = _resolve_reranker(reranker, top_k, device)
    with EmbeddedLLMServer(model, ctx=context_window, threads=llm_threads) as server:
        yield build_query_engine(
            retriever, llm="embedded", base_url=server.base_url, reranker=rerank,
            context_window=context_window, **options,
        )


def format_answer(response: Any, *, show_scores: bool = True) -> str:
    """The answer, then its numbered sources: ``[n] title (score 0.873)  doc_id``.

    Works on any LlamaIndex response with ``.response`` and ``.source_nodes``; sources are numbered by
    their ``citation`` metadata when present, else by position.

    Example:
        >>> from llama_index.core.base.response.schema import Response
        >>> node = NodeWithScore(node=TextNode(id_="d1", text="...", metadata={"title": "Paris"}), score=0.5)
        >>> print(format_answer(Response(response="In France [1].", source_nodes=[node])))
        In France [1].
        <BLANKLINE>
        Sources:
        [1] Paris (score 0.500)  d1
    """
    answer = (getattr(response, "response", None) or "").strip() or "(no answer)"
    lines = [answer, "", "Sources:"]
    sources = list(getattr(response, "source_nodes", None) or [])
    if not sources:
        lines.append("(none)")
    for position, item in enumerate(sources, 1):
        meta = item.node.metadata
        number = meta.get(CITATION_KEY, position)
        title = str(meta.get(TITLE_KEY) or "").strip() or "(untitled)"
        score = f" (score {item.score:.3f})" if show_scores and item.score is not None else ""
        lines.append(f"[{number}] {title}{score}  {item.node.node_id}")
    return "\n".join(lines)


__all__ = [
    "CITATION_KEY",
    "QA_PROMPT",
    "CitedContextPostprocessor",
    "build_query_engine",
    "format_answer",
    "open_query_engine",
    "truncate_text",
]
