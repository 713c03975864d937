"""A LlamaIndex retriever over a rag-rerank hybrid index: :class:`RagRerankHybridRetriever`.

The reranker scores a node's ``MetadataMode.EMBED`` content, which is the chunk text alone (every metadata key
is excluded from the embed view), the same text it was trained and evaluated on; the LLM sees the title and the
text. Its scores are the first stage's, so :class:`~rag_rerank.integrations.llamaindex.RagRerankPostprocessor`
can fuse them with the reranker's as ``evaluate`` does.

Example:
    >>> retriever = RagRerankHybridRetriever("runs/index", similarity_top_k=20)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from rag_rerank.errors import ConfigError, missing_extra

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
except ImportError as e:  # pragma: no cover - llama-index-core is a core dependency
    raise missing_extra("llama-index-core", "llamaindex") from e

from rag_rerank.retrieval.hybrid import MODES, HybridRetriever
from rag_rerank.types import ranked

logger = logging.getLogger(__name__)

TITLE_KEY = "title"


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
        first_stage: fusion settings to serve instead of the index's own (the tuned first stage that ``adapt``
            chose, as saved in a model's ``fusion.json``; see :meth:`HybridRetriever.with_fusion`).
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
        first_stage: Mapping[str, Any] | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"mode={mode!r}: use one of {list(MODES)}")
        if similarity_top_k < 1:
            raise ConfigError(f"similarity_top_k must be >= 1, got {similarity_top_k}")
        if isinstance(index, HybridRetriever):
            if bi_encoder is not None:
                raise ConfigError("bi_encoder applies to an index folder; a loaded HybridRetriever already has one")
            hybrid = index
        else:
            from rag_rerank.retrieval.store import load_index

            hybrid = load_index(index, bi_encoder=bi_encoder)
        if first_stage:
            hybrid = hybrid.with_fusion(**first_stage)
        if mode != "bm25" and hybrid.dense is None:
            raise ConfigError(f"mode={mode!r} needs a dense index, but this index is BM25-only; use mode='bm25'")
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


__all__ = ["TITLE_KEY", "RagRerankHybridRetriever"]
