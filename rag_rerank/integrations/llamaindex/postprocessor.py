"""LlamaIndex node postprocessor backed by :class:`rag_rerank.rerank.Reranker`: what a user serves.

A drop-in for LlamaIndex's ``SentenceTransformerRerank`` (``model``, ``top_n``, ``device``,
``keep_retrieval_score``) that adds length bucketing, long-document windows, a score cache, a score threshold and,
by default, **the fused system that was measured**:

- ``alpha="auto"`` (default): when the model folder has a ``fusion.json`` (written by ``rag-rerank adapt`` and
  ``rag-rerank train``), the node score is ``alpha * z(reranker) + (1 - alpha) * z(retrieval score)`` with the
  alpha chosen on validation, computed by :func:`rag_rerank.retrieval.fusion.interpolate_scores`, the function
  ``rag-rerank evaluate`` measures with. A model without ``fusion.json`` (a hub id, an embedded base) is served
  alone. ``alpha=None`` always serves the reranker alone; a number in [0, 1] fixes the weight. A weight of 0 (the
  validation did not show a gain) serves the first stage's order, and the model is not run.
- ``query_guard="auto"`` (default): the fused system serves a query longer than the ``fusion.json``'s
  ``max_query_words`` (a multiple of the longest question the reranker was trained on; see
  :mod:`rag_rerank.rerank.fusion`), and, when its ``query_form`` is ``"question"`` (the reranker was trained and
  validated on questions only), a query that does not read as a question, by the retrieval order alone, without
  running the model, as ``evaluate`` measures it; an integer sets a length limit only, ``None`` fuses every query.
  The reranker served alone is never guarded. :meth:`RagRerankPostprocessor.guard_info` counts what the guard did,
  and a warning says so once when it serves most queries (the reranker is then mostly idle: ``--query-examples``).
- the reranker scores each node's ``MetadataMode.EMBED`` content (like the built-in rerankers); with
  ``normalize=True`` (default) reranker scores are sigmoid probabilities in (0, 1), else raw logits (fusion always
  uses the sigmoid scores, as ``evaluate`` and the validation that chose alpha did);
- nodes longer than ``max_length`` tokens are scored over overlapping windows and take the max
  (``long_documents="window"``, default), or truncated with a logged warning (``"truncate"``);
- ``score_threshold`` drops nodes whose **reranker** score is below it; it is applied before ``top_k`` and never
  to a fused score;
- nodes are sorted by ``(-score, input position)`` and the first ``top_k`` are returned as new ``NodeWithScore``
  objects: the caller's list and nodes are not modified. With ``keep_retrieval_score=True`` each returned node
  is a copy whose ``metadata["retrieval_score"]`` holds the original score (excluded from the embed and LLM
  views, so it never changes the text that is scored or shown to the LLM).

Names: ``top_k`` is the number of nodes kept, as everywhere in rag-rerank; ``top_n``, LlamaIndex's name for it,
is accepted too. ``alpha`` is the fusion weight, as in ``evaluate --alpha`` and ``fusion.json``.

Example:
    >>> from llama_index.core.schema import NodeWithScore, TextNode
    >>> pp = RagRerankPostprocessor(model="embedded:minilm-ce", top_k=2)  # doctest: +SKIP
    >>> nodes = [NodeWithScore(node=TextNode(text=t), score=1.0) for t in ["Paris is in France.", "Bananas."]]
    >>> pp.postprocess_nodes(nodes, query_str="Where is Paris?")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import AliasChoices

from rag_rerank.errors import ConfigError, missing_extra

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as e:  # pragma: no cover - llama-index-core is a core dependency
    raise missing_extra("llama-index-core", "llamaindex") from e

from rag_rerank.rerank.backends import BACKENDS
from rag_rerank.rerank.fusion import QueryGuard, load_fusion
from rag_rerank.rerank.reranker import Reranker, sigmoid
from rag_rerank.retrieval.fusion import interpolate_scores

dispatcher = get_dispatcher(__name__)
logger = logging.getLogger(__name__)
# after this many fused queries, a guard that has served more than this share of them by the retrieval order is
# logged once: the reranker is mostly idle, and --query-examples can train one for queries like these
GUARD_WARN_AFTER, GUARD_WARN_SHARE = 20, 0.5

RETRIEVAL_SCORE_KEY = "retrieval_score"

__all__ = ["RETRIEVAL_SCORE_KEY", "RagRerankPostprocessor", "with_key"]


def with_key(keys: list[str], key: str) -> list[str]:
    """``keys`` with ``key`` appended unless it is already there (a new list: node key lists are never mutated)."""
    return list(keys) if key in keys else [*keys, key]


class RagRerankPostprocessor(BaseNodePostprocessor):
    """Rerank retrieved nodes with a (fine-tuned) cross-encoder, fused with the retrieval score as it was measured.

    The model is loaded once, when the postprocessor is built, and reused by every call (sync and async). See
    the module docstring for scores, thresholds and fusion.

    Example:
        >>> pp = RagRerankPostprocessor(model="runs/adapt/reranker", top_k=5)  # doctest: +SKIP
        >>> query_engine = index.as_query_engine(similarity_top_k=20, node_postprocessors=[pp])  # doctest: +SKIP
    """

    model: str = Field(
        default="embedded:minilm-ce", description="Cross-encoder: a local folder, a hub id or an embedded:* name."
    )
    top_k: int | None = Field(
        default=2, ge=0, validation_alias=AliasChoices("top_k", "top_n"),
        description="Nodes to return (None keeps all); LlamaIndex's top_n is accepted too.",
    )
    device: str | None = Field(default=None, description="Device (cpu, cuda, ...); None picks the best available.")
    batch_size: int = Field(default=32, gt=0, description="Pairs per forward pass.")
    max_length: int | None = Field(default=None, gt=0, description="Tokens per pair; None uses the model's limit.")
    long_documents: Literal["window", "truncate"] = Field(
        default="window", description="Nodes longer than max_length: max over windows, or truncate with a warning."
    )
    normalize: bool = Field(default=True, description="Sigmoid-normalise reranker scores into (0, 1).")
    score_threshold: float | None = Field(
        default=None, description="Drop nodes whose reranker score is below this (before top_k)."
    )
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the original retrieval score in metadata['retrieval_score']."
    )
    alpha: float | Literal["auto"] | None = Field(
        default="auto",
        description="Fusion weight: 'auto' = the model's fusion.json (reranker alone without one); None = reranker "
                    "alone; a number in [0, 1]: alpha*z(reranker) + (1-alpha)*z(retrieval score).",
    )
    backend: str = Field(
        default="auto", description=f"Inference backend: auto (the fastest at parity on this machine, measured once) "
                                    f"or one of {', '.join(BACKENDS)} (see rag_rerank.rerank)."
    )
    query_guard: int | Literal["auto"] | None = Field(
        default="auto",
        description="Fused serving only: a query of more words is served in retrieval order; 'auto' = the model's "
                    "fusion.json (its length limit, and, when the reranker was trained on questions only, a query "
                    "that does not read as a question; none without one); None = fuse every query.",
    )
    cache_size: int = Field(default=4096, ge=0, description="Score-cache entries (LRU); 0 disables it.")
    trust_remote_code: bool = Field(default=False, description="Whether to trust remote code when loading.")

    _reranker: Reranker = PrivateAttr()
    _alpha: float | None = PrivateAttr(default=None)
    _guard: QueryGuard = PrivateAttr(default_factory=QueryGuard)
    _guard_seen: Counter = PrivateAttr(default_factory=Counter)  # "queries" and each guard reason
    _guard_warned: bool = PrivateAttr(default=False)
    _guard_lock: Any = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        if self.backend not in (*BACKENDS, "auto"):
            raise ConfigError(f"backend={self.backend!r}: use 'auto' or one of {list(BACKENDS)}")
        self._alpha = self._resolve_alpha()
        self._guard = self._resolve_guard()
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

    def _resolve_alpha(self) -> float | None:
        alpha = self.alpha
        if alpha is None:
            return None
        if alpha == "auto":
            from rag_rerank.rerank.fusion import saved_alpha

            return saved_alpha(self.model, warn=False)
        if isinstance(alpha, str) or not 0.0 <= float(alpha) <= 1.0:
            raise ConfigError(f"alpha={alpha!r} must be in [0, 1], 'auto' or None")
        return float(alpha)

    def _resolve_guard(self) -> QueryGuard:
        guard = self.query_guard
        if guard == "auto":
            saved = load_fusion(self.model) if Path(self.model).is_dir() else None
            return saved.guard if saved is not None else QueryGuard()
        if guard is not None and (isinstance(guard, str) or guard < 1):
            raise ConfigError(f"query_guard={guard!r} must be a number of words >= 1, 'auto' or None")
        return QueryGuard(max_words=guard)

    def alpha_for(self, query: str) -> float | None:
        """The fusion weight served for ``query``: :attr:`fusion_alpha`, or 0 (retrieval order) past the guard."""
        return self._served(query)[0]

    def _served(self, query: str) -> tuple[float | None, str | None]:
        """``(weight served, why the guard fired or None)``; the guard is read once per query."""
        reason = self._guard.reason(query) if self._alpha is not None else None
        return (0.0 if reason is not None else self._alpha), reason

    def guard_info(self) -> dict[str, Any]:
        """What the query guard did to the queries served fused so far: ``{"max_query_words", "query_form",
        "queries", "guarded", "too_long", "not_a_question"}`` (counts stay 0 unless the reranker is served fused with
        a guard). Logged once as a warning when more than half of the first 20 or more were guarded.

        Example:
            >>> pp.guard_info()  # doctest: +SKIP
            {'max_query_words': 51, 'query_form': 'question', 'guarded': 31, 'too_long': 0, ...}
        """
        with self._guard_lock:
            seen = Counter(self._guard_seen)
        return self._guard.tally(seen, seen["queries"])

    def _count_guard(self, reason: str | None) -> None:
        """Count a fused query by what the guard did to it (``reason``, from :meth:`_served`); warn once when the
        guard serves most queries."""
        if not self._alpha or not self._guard:  # the reranker alone, or the first stage alone anyway (alpha 0)
            return
        with self._guard_lock:
            seen = self._guard_seen
            seen["queries"] += 1
            if reason is not None:
                seen[reason] += 1
            info = self._guard.tally(seen, seen["queries"])
            warn = (not self._guard_warned and info["queries"] >= GUARD_WARN_AFTER
                    and info["guarded"] > GUARD_WARN_SHARE * info["queries"])
            if warn:
                self._guard_warned = True
        if warn:
            logger.warning(
                "the query guard served %d of the %d queries so far in retrieval order, without the reranker (%s: "
                "unlike every question it was trained on); to train a reranker for queries like yours, rerun "
                "`rag-rerank adapt` with --query-examples FILE (5-50 of them, one per line)",
                info["guarded"], info["queries"], self._guard.describe())

    @property
    def fusion_alpha(self) -> float | None:
        """The fusion weight in use (``"auto"`` resolved), or ``None`` when the reranker is served alone."""
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
            raise ConfigError(
                "RagRerankPostprocessor needs the query: call postprocess_nodes(nodes, query_str=...) "
                "or pass query_bundle=QueryBundle(...)"
            )
        if not nodes:
            return []
        top_k = len(nodes) if self.top_k is None else self.top_k
        dispatcher.event(
            ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=top_k, model_name=self.model)
        )
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: self.model,
                EventPayload.QUERY_STR: query_bundle.query_str,
                EventPayload.TOP_K: top_k,
            },
        ) as event:
            alpha, reason = self._served(query_bundle.query_str)
            self._count_guard(reason)
            if alpha == 0.0 and self.score_threshold is None:
                # the first stage alone (fusion.json's alpha 0, or a query past the guard): do not score what is ignored
                rerank_scores = [0.0] * len(nodes)
            else:
                texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
                raw = self._reranker.predict([(query_bundle.query_str, t) for t in texts])
                rerank_scores = [float(s) for s in raw]
            final = self._combine(rerank_scores, nodes, alpha)
            keep = range(len(nodes))
            if self.score_threshold is not None:
                keep = [i for i in keep if rerank_scores[i] >= self.score_threshold]
            order = sorted(keep, key=lambda i: (-final[i], i))[:top_k]
            new_nodes = [self._output_node(nodes[i], final[i]) for i in order]
            event.on_end(payload={EventPayload.NODES: new_nodes})
        dispatcher.event(ReRankEndEvent(nodes=new_nodes))
        return new_nodes

    def _combine(self, rerank_scores: list[float], nodes: list[NodeWithScore], alpha: float | None) -> list[float]:
        """The node score: the reranker score, or its fusion at ``alpha`` with the retrieval score (a missing one
        counts as the lowest retrieval score of the call)."""
        if alpha is None:
            return rerank_scores
        known = [n.score for n in nodes if n.score is not None]
        floor = min(known) if known else 0.0
        keys = [str(i) for i in range(len(nodes))]
        retrieval = {k: floor if n.score is None else float(n.score) for k, n in zip(keys, nodes, strict=True)}
        probs = rerank_scores if self.normalize else sigmoid(np.asarray(rerank_scores)).tolist()
        fused = interpolate_scores(retrieval, dict(zip(keys, probs, strict=True)), alpha)
        return [fused[k] for k in keys]

    def _output_node(self, original: NodeWithScore, score: float) -> NodeWithScore:
        node = original.node
        if self.keep_retrieval_score:
            node = node.model_copy(
                update={
                    "metadata": {**node.metadata, RETRIEVAL_SCORE_KEY: original.score},
                    "excluded_embed_metadata_keys": with_key(node.excluded_embed_metadata_keys, RETRIEVAL_SCORE_KEY),
                    "excluded_llm_metadata_keys": with_key(node.excluded_llm_metadata_keys, RETRIEVAL_SCORE_KEY),
                }
            )
        return NodeWithScore(node=node, score=score)
