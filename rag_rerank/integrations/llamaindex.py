"""LlamaIndex node postprocessor backed by :class:`rag_rerank.reranker.Reranker`.

A drop-in for LlamaIndex's ``SentenceTransformerRerank`` (same ``model``, ``top_n``, ``device`` and
``keep_retrieval_score`` arguments) that adds length bucketing, long-document windows, a score
cache, a score threshold and optional interpolation with the retrieval score.

Scores:

- the reranker scores each node's ``MetadataMode.EMBED`` content (like the built-in rerankers);
  with ``normalize=True`` (default) scores are sigmoid probabilities in (0, 1), else raw logits;
- nodes longer than ``max_length`` tokens are scored over overlapping windows and take the max
  (``long_documents="window"``, default), or truncated with a logged warning
  (``long_documents="truncate"``); see :mod:`rag_rerank.reranker`;
- ``score_threshold`` drops nodes whose **reranker** score (after the sigmoid when ``normalize``)
  is below it; it is applied before ``top_n`` and never to an interpolated score;
- ``interpolation_alpha=None`` (default): the node score is the reranker score. Otherwise the
  reranker scores and the retrieval scores are each normalised over the nodes of this call
  (``interpolation_norm``: ``"minmax"``, where a list whose values are all equal maps to 1.0, or
  ``"zscore"``, where it maps to 0.0; a node with no retrieval score counts as the minimum) and the
  node score is ``alpha * reranker_norm + (1 - alpha) * retrieval_norm``;
- ``interpolation_alpha="auto"`` uses the alpha that ``rag-rerank train`` chose on the validation split
  (the model folder's ``fusion.json``) with z-scores, i.e. the fused system its evaluation reports; a
  model without ``fusion.json`` falls back to the pure reranker score, with a warning;
- nodes are sorted by ``(-score, input position)`` and the first ``top_n`` are returned as new
  ``NodeWithScore`` objects: the caller's list and nodes are not modified. With
  ``keep_retrieval_score=True`` each returned node is a copy whose ``metadata["retrieval_score"]``
  holds the original score (excluded from the embed and LLM views, so it never changes the text
  that is scored or shown to the LLM).

Example:
    >>> from llama_index.core.schema import NodeWithScore, TextNode
    >>> pp = RagRerankPostprocessor(model="embedded:minilm-ce", top_n=2)  # doctest: +SKIP
    >>> nodes = [NodeWithScore(node=TextNode(text=t), score=1.0) for t in ["Paris is in France.", "Bananas."]]
    >>> pp.postprocess_nodes(nodes, query_str="Where is Paris?")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Literal

from rag_rerank.errors import missing_extra

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as e:  # pragma: no cover - llama-index-core is a core dependency
    raise missing_extra("llama-index-core", "llamaindex") from e

from rag_rerank.reranker import Reranker
from rag_rerank.retrieval.hybrid import normalize_scores

dispatcher = get_dispatcher(__name__)

RETRIEVAL_SCORE_KEY = "retrieval_score"


def _normalize(values: list[float], norm: str) -> list[float]:
    out = normalize_scores({str(i): float(v) for i, v in enumerate(values)}, norm)
    return [out[str(i)] for i in range(len(values))]


class RagRerankPostprocessor(BaseNodePostprocessor):
    """Rerank retrieved nodes with a (fine-tuned) cross-encoder.

    The model is loaded once, when the postprocessor is built, and reused by every call (sync and
    async). See the module docstring for how scores, thresholds and interpolation work.

    Example:
        >>> pp = RagRerankPostprocessor(model="runs/reranker", top_n=5, score_threshold=0.2)  # doctest: +SKIP
        >>> query_engine = index.as_query_engine(similarity_top_k=20, node_postprocessors=[pp])  # doctest: +SKIP
    """

    model: str = Field(
        default="embedded:minilm-ce", description="Cross-encoder: a local folder, a hub id or an embedded:* name."
    )
    top_n: int | None = Field(default=2, ge=0, description="Number of nodes to return (None keeps all).")
    device: str | None = Field(default=None, description="Device (cpu, cuda, ...); None picks the best available.")
    batch_size: int = Field(default=32, gt=0, description="Pairs per forward pass.")
    max_length: int | None = Field(default=None, gt=0, description="Tokens per pair; None uses the model's limit.")
    long_documents: Literal["window", "truncate"] = Field(
        default="window", description="Nodes longer than max_length: max over windows, or truncate with a warning."
    )
    normalize: bool = Field(default=True, description="Sigmoid-normalise reranker scores into (0, 1).")
    score_threshold: float | None = Field(
        default=None, description="Drop nodes whose reranker score is below this (before top_n)."
    )
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the original retrieval score in metadata['retrieval_score']."
    )
    interpolation_alpha: float | Literal["auto"] | None = Field(
        default=None,
        description="None: pure reranker score; else alpha*reranker_norm + (1-alpha)*retrieval_norm; "
                    "'auto': the alpha saved by rag-rerank train (fusion.json), with z-scores.",
    )
    interpolation_norm: Literal["minmax", "zscore"] = Field(
        default="minmax", description="How both score lists are normalised before interpolation ('auto': zscore)."
    )
    backend: str = Field(
        default="torch", description="Inference backend: torch, onnx, onnx-int8, openvino, openvino-bf16 or "
                                     "openvino-int8 (see rag_rerank.reranker; the exported ones run on CPU)."
    )
    cache_size: int = Field(default=4096, ge=0, description="Score-cache entries (LRU); 0 disables it.")
    trust_remote_code: bool = Field(default=False, description="Whether to trust remote code when loading.")

    _reranker: Reranker = PrivateAttr()
    _alpha: float | None = PrivateAttr(default=None)
    _norm: str = PrivateAttr(default="minmax")

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        self._alpha, self._norm = self._resolve_alpha()
        self._reranker = Reranker(
            self.model,
            backend=self.backend,
            batch_size=self.batch_size,
            max_length=self.max_length,
            device=self.device,
            activation="sigmoid" if self.normalize else "none",
            long_documents=self.long_documents,
            cache_size=self.cache_size,
            trust_remote_code=self.trust_remote_code,
        )

    @classmethod
    def class_name(cls) -> str:
        return "RagRerankPostprocessor"

    def _resolve_alpha(self) -> tuple[float | None, str]:
        alpha = self.interpolation_alpha
        if alpha is None:
            return None, self.interpolation_norm
        if alpha == "auto":
            from rag_rerank.fusion import saved_alpha

            saved = saved_alpha(self.model)
            return (None, self.interpolation_norm) if saved is None else (saved, "zscore")
        if isinstance(alpha, str) or not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"interpolation_alpha={alpha!r} must be in [0, 1], 'auto' or None")
        return float(alpha), self.interpolation_norm

    @property
    def alpha(self) -> float | None:
        """The interpolation weight in use (``"auto"`` resolved), or ``None`` for the pure reranker score."""
        return self._alpha

    @property
    def reranker(self) -> Reranker:
        """The shared :class:`Reranker` (one model load per postprocessor)."""
        return self._reranker

    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError(
                "RagRerankPostprocessor needs the query: call postprocess_nodes(nodes, query_str=...) "
                "or pass query_bundle=QueryBundle(...)"
            )
        if not nodes:
            return []
        top_n = len(nodes) if self.top_n is None else self.top_n
        dispatcher.event(
            ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=top_n, model_name=self.model)
        )
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: self.model,
                EventPayload.QUERY_STR: query_bundle.query_str,
                EventPayload.TOP_K: top_n,
            },
        ) as event:
            texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
            raw = self._reranker.predict([(query_bundle.query_str, t) for t in texts])
            rerank_scores = [float(s) for s in raw]
            final = self._combine(rerank_scores, nodes)
            keep = range(len(nodes))
            if self.score_threshold is not None:
                keep = [i for i in keep if rerank_scores[i] >= self.score_threshold]
            order = sorted(keep, key=lambda i: (-final[i], i))[:top_n]
            new_nodes = [self._output_node(nodes[i], final[i]) for i in order]
            event.on_end(payload={EventPayload.NODES: new_nodes})
        dispatcher.event(ReRankEndEvent(nodes=new_nodes))
        return new_nodes

    def _combine(self, rerank_scores: list[float], nodes: list[NodeWithScore]) -> list[float]:
        """The node score: the reranker score, or its interpolation with the retrieval score."""
        alpha = self._alpha
        if alpha is None:
            return rerank_scores
        retrieval = [n.score for n in nodes]
        known = [s for s in retrieval if s is not None]
        floor = min(known) if known else 0.0
        ret_norm = _normalize([floor if s is None else float(s) for s in retrieval], self._norm)
        rr_norm = _normalize(rerank_scores, self._norm)
        return [alpha * r + (1.0 - alpha) * t for r, t in zip(rr_norm, ret_norm, strict=True)]

    def _output_node(self, original: NodeWithScore, score: float) -> NodeWithScore:
        node = original.node
        if self.keep_retrieval_score:
            node = node.model_copy(
                update={
                    "metadata": {**node.metadata, RETRIEVAL_SCORE_KEY: original.score},
                    "excluded_embed_metadata_keys": _with_key(node.excluded_embed_metadata_keys),
                    "excluded_llm_metadata_keys": _with_key(node.excluded_llm_metadata_keys),
                }
            )
        return NodeWithScore(node=node, score=score)


def _with_key(keys: list[str]) -> list[str]:
    return list(keys) if RETRIEVAL_SCORE_KEY in keys else [*keys, RETRIEVAL_SCORE_KEY]


# The retriever and the query-engine recipe live in their own module; re-exported here for one import path.
from rag_rerank.integrations.llamaindex_retriever import (  # noqa: E402
    CitedContextPostprocessor,
    RagRerankHybridRetriever,
    build_query_engine,
    format_answer,
    open_query_engine,
)

__all__ = [
    "CitedContextPostprocessor",
    "RagRerankHybridRetriever",
    "RagRerankPostprocessor",
    "build_query_engine",
    "format_answer",
    "open_query_engine",
]
