"""A LlamaIndex retriever over a rag-rerank hybrid index, and a query engine that answers with cited sources.

The recipe is: :class:`RagRerankHybridRetriever` (BM25 + dense, ``similarity_top_k`` candidates) ->
:class:`~rag_rerank.integrations.llamaindex.RagRerankPostprocessor` (the fine-tuned cross-encoder keeps
``top_n``) -> :class:`CitedContextPostprocessor` (numbers the sources and truncates their text for a small
LLM) -> the LLM's answer. ``response.source_nodes`` are the reranked nodes, in the reranker's order with its
scores; :func:`format_answer` prints the answer followed by the numbered sources.

What each model sees:

- the reranker scores a node's ``MetadataMode.EMBED`` content, which is the chunk text alone (every metadata
  key is excluded from the embed view), the same text it was trained and evaluated on;
- the LLM sees ``citation: N``, ``title: ...`` and the text, cut to ``max_chars_per_source`` characters at a
  word boundary; other chunk metadata (``source``, ``position``, ...) stays on the node but out of the prompt.

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
from typing import TYPE_CHECKING, Any

from rag_rerank.errors import missing_extra

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.bridge.pydantic import Field
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.llms import LLM
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.prompts import PromptTemplate
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
except ImportError as e:  # pragma: no cover - llama-index-core is a core dependency
    raise missing_extra("llama-index-core", "llamaindex") from e

from rag_rerank.retrieval.hybrid import MODES, HybridRetriever
from rag_rerank.types import ranked

if TYPE_CHECKING:
    from rag_rerank.integrations.llamaindex import RagRerankPostprocessor

logger = logging.getLogger(__name__)

CITATION_KEY = "citation"
TITLE_KEY = "title"
QA_PROMPT = (
    "Answer the question using only the numbered sources below, and cite them like [1].\n"
    "If the sources do not contain the answer, say that you do not know.\n\n"
    "{context_str}\n\n"
    "Question: {query_str}\n"
    "Answer: "
)
"""The answer prompt (``{context_str}``, ``{query_str}``); override it with ``qa_prompt=``."""


class RagRerankHybridRetriever(BaseRetriever):
    """LlamaIndex retriever over a :class:`~rag_rerank.retrieval.HybridRetriever` (BM25 + dense, fused).

    Each hit becomes ``NodeWithScore(TextNode(id_=doc_id, text=text, metadata={"title": ..., ...}),
    score=first-stage score)``, in the hybrid retriever's order, ``(-score, doc_id)``. Metadata holds the
    title, any other fields of the corpus record, and ``node_metadata[doc_id]`` when given (for example
    ``load_qa_dataset(folder).chunks``: ``source``, ``position``, ...). Only the title reaches the LLM and
    nothing reaches the reranker but the text.

    Args:
        index: a loaded ``HybridRetriever``, or an index folder written by ``rag-rerank index``.
        similarity_top_k: candidates to return per query.
        mode: ``"hybrid"`` (fused), ``"bm25"`` or ``"dense"``.
        bi_encoder: with an index folder, the bi-encoder you expect (refused when it is not the index's).
        node_metadata: extra metadata per doc id.
        callback_manager: LlamaIndex callbacks.

    Raises:
        ValueError: for an unknown mode, ``similarity_top_k < 1``, a dense mode on a BM25-only index, or
            ``bi_encoder`` given with an already loaded retriever.

    Example:
        >>> retriever = RagRerankHybridRetriever("runs/index", similarity_top_k=20)  # doctest: +SKIP
        >>> [n.node.metadata["title"] for n in retriever.retrieve("Who won Super Bowl 50?")][:3]  # doctest: +SKIP
    """

    def __init__(
        self,
        index: HybridRetriever | str | os.PathLike,
        *,
        similarity_top_k: int = 20,
        mode: str = "hybrid",
        bi_encoder: str | None = None,
        node_metadata: Mapping[str, Mapping[str, Any]] | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: use one of {list(MODES)}")
        if similarity_top_k < 1:
            raise ValueError(f"similarity_top_k must be >= 1, got {similarity_top_k}")
        if isinstance(index, HybridRetriever):
            if bi_encoder is not None:
                raise ValueError("bi_encoder applies to an index folder; a loaded HybridRetriever already has one")
            hybrid = index
        else:
            from rag_rerank.retrieval.store import load_index

            hybrid = load_index(index, bi_encoder=bi_encoder)
        if mode != "bm25" and hybrid.dense is None:
            raise ValueError(f"mode={mode!r} needs a dense index, but this index is BM25-only; use mode='bm25'")
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        self.hybrid = hybrid
        self.similarity_top_k = int(similarity_top_k)
        self.mode = mode
        self._node_metadata = {str(k): dict(v) for k, v in (node_metadata or {}).items()}

    def _node(self, doc_id: str, score: float) -> NodeWithScore:
        record = self.hybrid.corpus[doc_id]
        metadata: dict[str, Any] = {TITLE_KEY: record.get("title") or ""}
        metadata.update({k: v for k, v in record.items() if k not in ("title", "text")})
        metadata.update(self._node_metadata.get(doc_id, {}))
        keys = list(metadata)
        node = TextNode(
            id_=doc_id,
            text=record.get("text") or "",
            metadata=metadata,
            excluded_embed_metadata_keys=keys,
            excluded_llm_metadata_keys=[k for k in keys if k != TITLE_KEY],
        )
        return NodeWithScore(node=node, score=float(score))

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        run = self.hybrid.search({"q": query_bundle.query_str}, top_k=self.similarity_top_k, mode=self.mode)
        hits = ranked(run.get("q", {}), self.similarity_top_k)
        logger.debug("%s retrieval: %d candidates for %r", self.mode, len(hits), query_bundle.query_str[:80])
        return [self._node(doc_id, score) for doc_id, score in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._retrieve(query_bundle)


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
                "excluded_embed_metadata_keys": _with(node.excluded_embed_metadata_keys, CITATION_KEY),
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


def _with(keys: list[str], key: str) -> list[str]:
    return list(keys) if key in keys else [*keys, key]


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
        raise ValueError(f"llm={llm!r}: give 'embedded', 'openai:MODEL' or a LlamaIndex LLM object")
    from rag_rerank.llm import parse_llm_spec

    kind, model = parse_llm_spec(llm)
    if kind == "embedded":
        if base_url is None:
            raise ValueError(
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
) -> BaseRetriever:
    if isinstance(index, BaseRetriever):
        given = {"similarity_top_k": similarity_top_k, "mode": mode, "bi_encoder": bi_encoder}
        if any(v is not None for v in given.values()):
            set_ = sorted(k for k, v in given.items() if v is not None)
            raise ValueError(f"{set_} apply when building the retriever; set them on the retriever you pass instead")
        return index
    return RagRerankHybridRetriever(
        index,
        similarity_top_k=20 if similarity_top_k is None else similarity_top_k,
        mode="hybrid" if mode is None else mode,
        bi_encoder=bi_encoder,
    )


def _resolve_reranker(
    reranker: str | os.PathLike | BaseNodePostprocessor, top_n: int, device: str | None
) -> BaseNodePostprocessor:
    if isinstance(reranker, BaseNodePostprocessor):
        return reranker
    from rag_rerank.integrations.llamaindex import RagRerankPostprocessor

    return RagRerankPostprocessor(model=str(reranker), top_n=top_n, device=device)


def build_query_engine(
    index: HybridRetriever | BaseRetriever | str | os.PathLike,
    *,
    reranker: str | os.PathLike | RagRerankPostprocessor | BaseNodePostprocessor = "embedded:minilm-ce",
    top_n: int = 5,
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
    :class:`~rag_rerank.llm.EmbeddedLLMServer` you started.

    Args:
        index: an index folder, a ``HybridRetriever``, or any LlamaIndex retriever (used as it is).
        reranker: a cross-encoder (folder, hub id, ``embedded:*``) or a ready postprocessor (used as it is).
        top_n: nodes the reranker keeps (the LLM's sources); ignored for a ready postprocessor.
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
    retriever = _resolve_retriever(index, similarity_top_k, mode, bi_encoder)
    rerank = _resolve_reranker(reranker, top_n, device)
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
    top_n: int = 5,
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
        index, llm, base_url, reranker, top_n, similarity_top_k, mode, bi_encoder, device, context_window:
            as for :func:`build_query_engine`.
        llm_threads: CPU threads for the embedded server.
        **options: other :func:`build_query_engine` arguments (``max_chars_per_source``, ``qa_prompt``, ...).

    Example:
        >>> with open_query_engine("runs/index", reranker="runs/reranker", top_n=3) as engine:  # doctest: +SKIP
        ...     response = engine.query("Which team won Super Bowl 50?")
        ...     print(format_answer(response))
    """
    from rag_rerank.llm import EmbeddedLLMServer, parse_llm_spec

    kind, model = parse_llm_spec(llm) if isinstance(llm, str) else ("object", "")
    if kind != "embedded" or base_url is not None:
        yield build_query_engine(
            index, llm=llm, base_url=base_url, reranker=reranker, top_n=top_n, similarity_top_k=similarity_top_k,
            mode=mode, bi_encoder=bi_encoder, device=device, context_window=context_window, **options,
        )
        return
    retriever = _resolve_retriever(index, similarity_top_k, mode, bi_encoder)
    rerank = _resolve_reranker(reranker, top_n, device)
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
    "RagRerankHybridRetriever",
    "build_query_engine",
    "format_answer",
    "open_query_engine",
    "truncate_text",
]
