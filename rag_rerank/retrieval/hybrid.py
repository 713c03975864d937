"""Hybrid retrieval: BM25 + dense, fused by reciprocal rank (default) or by normalised weighted scores.

The fusion functions live in :mod:`rag_rerank.retrieval.fusion`. Every output ranking is ordered by
``(-score, doc_id)`` and holds only documents some retriever actually returned.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rag_rerank.errors import ConfigError, DataError
from rag_rerank.io import atomic_dir, load_corpus, save_corpus, write_json
from rag_rerank.retrieval.bm25 import BM25Retriever
from rag_rerank.retrieval.common import read_index_config, reject_unknown_overrides, replaceable_index
from rag_rerank.retrieval.dense import DenseRetriever
from rag_rerank.retrieval.fusion import FUSIONS, NORMS, rrf, weighted_fusion
from rag_rerank.types import Corpus, Queries, Run, ranked

INDEX_FORMAT = "rag-rerank-index"
MODES = ("bm25", "dense", "hybrid")
FUSION_KEYS = frozenset({"fusion", "rrf_k", "weights", "norm", "depth"})


class HybridRetriever:
    """BM25 and a bi-encoder searched separately, then fused.

    Args:
        bm25: a :class:`BM25Retriever` (default: a new one with default settings).
        dense: a :class:`DenseRetriever` (default: a new one on ``embedded:minilm``).
        fusion: ``"rrf"`` (reciprocal rank fusion) or ``"weighted"`` (normalised score sum).
        rrf_k: the RRF constant.
        weights: ``(bm25, dense)`` weights for either fusion.
        norm: ``"minmax"`` or ``"zscore"`` for weighted fusion.
        depth: candidates taken from each retriever before fusion: an int for both, a ``(bm25, dense)``
            pair, or ``None`` for ``max(top_k, 100)``.

    Example:
        >>> h = HybridRetriever().index(corpus)  # doctest: +SKIP
        >>> run = h.search({"q1": "who wrote Hamlet?"}, top_k=100)  # doctest: +SKIP
        >>> bm25_only = h.search({"q1": "who wrote Hamlet?"}, mode="bm25")  # doctest: +SKIP
    """

    def __init__(
        self,
        bm25: BM25Retriever | None = None,
        dense: DenseRetriever | None = None,
        *,
        fusion: str = "rrf",
        rrf_k: int = 60,
        weights: tuple[float, float] = (1.0, 1.0),
        norm: str = "minmax",
        depth: int | tuple[int, int] | None = None,
    ) -> None:
        if fusion not in FUSIONS:
            raise ConfigError(f"fusion={fusion!r}: use one of {list(FUSIONS)}")
        if norm not in NORMS:
            raise ConfigError(f"norm={norm!r}: use one of {list(NORMS)}")
        if len(weights) != 2:
            raise ConfigError(f"weights={weights!r}: give two numbers, (bm25, dense)")
        self.bm25: BM25Retriever = bm25 if bm25 is not None else BM25Retriever()
        self.dense: DenseRetriever | None = dense if dense is not None else DenseRetriever()
        self.fusion, self.rrf_k, self.norm = fusion, int(rrf_k), norm
        self.weights = (float(weights[0]), float(weights[1]))
        self.depth = depth
        self._corpus: Corpus | None = None
        self._corpus_path: Path | None = None

    @property
    def corpus(self) -> Corpus:
        """The indexed corpus (read from the index folder on first use after :meth:`load`)."""
        if self._corpus is None and self._corpus_path is not None:
            self._corpus = load_corpus(self._corpus_path)
        if self._corpus is None:
            raise RuntimeError("HybridRetriever has no corpus; call .index(corpus) or HybridRetriever.load(dir) first")
        return self._corpus

    def index(self, corpus: Corpus, show_progress_bar: bool | None = None) -> HybridRetriever:
        """Index ``corpus`` with BM25 and (when present) the dense retriever. Returns ``self``."""
        if not corpus:
            raise DataError("cannot index an empty corpus; give at least one document")
        self._corpus = {d: dict(v) for d, v in corpus.items()}
        self.bm25.index(corpus, show_progress_bar)
        if self.dense is not None:
            self.dense.index(corpus, show_progress_bar)
        return self

    def _depths(self, top_k: int) -> tuple[int, int]:
        if self.depth is None:
            return max(top_k, 100), max(top_k, 100)
        if isinstance(self.depth, int):
            return self.depth, self.depth
        return int(self.depth[0]), int(self.depth[1])

    def search(
        self, queries: Queries, top_k: int = 100, mode: str = "hybrid", show_progress_bar: bool | None = None
    ) -> Run:
        """Search with ``mode`` ``"hybrid"`` (fused), ``"bm25"`` or ``"dense"``; rankings by ``(-score, doc_id)``.

        Raises:
            ValueError: for an unknown mode, or a dense/hybrid search on an index built without a bi-encoder.
        """
        if mode not in MODES:
            raise ConfigError(f"mode={mode!r}: use one of {list(MODES)}")
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        if mode != "bm25" and self.dense is None:
            raise ConfigError(
                f"mode={mode!r} needs a dense index, but this index has none; use mode='bm25' or re-index"
            )
        if mode == "bm25":
            return self.bm25.search(queries, top_k, show_progress_bar)
        if mode == "dense":
            return self.dense.search(queries, top_k, show_progress_bar)
        d_bm25, d_dense = self._depths(top_k)
        runs = [
            self.bm25.search(queries, d_bm25, show_progress_bar),
            self.dense.search(queries, d_dense, show_progress_bar),
        ]
        return self._fuse(runs, queries, top_k)

    def _fuse(self, runs: list[Run], queries: Queries, top_k: int) -> Run:
        if self.fusion == "rrf":
            fused = rrf(runs, k=self.rrf_k, weights=self.weights, top_k=top_k)
        else:
            fused = weighted_fusion(runs, weights=self.weights, norm=self.norm, top_k=top_k)
        return {q: fused.get(q, {}) for q in queries}

    def with_fusion(self, **settings: Any) -> HybridRetriever:
        """The same BM25 and dense indexes with other fusion settings (``fusion``, ``rrf_k``, ``weights``, ``norm``,
        ``depth``); nothing is copied or re-indexed.

        Example:
            >>> tuned = index.with_fusion(fusion="weighted", norm="zscore", weights=(0.4, 0.6))  # doctest: +SKIP
        """
        unknown = set(settings) - FUSION_KEYS
        if unknown:
            raise ConfigError(f"unknown fusion settings {sorted(unknown)}; use {sorted(FUSION_KEYS)}")
        cfg = {**self.config(), **settings}
        depth = cfg["depth"]
        other = HybridRetriever(self.bm25, self.dense, fusion=cfg["fusion"], rrf_k=cfg["rrf_k"],
                                weights=tuple(cfg["weights"]), norm=cfg["norm"],
                                depth=tuple(depth) if isinstance(depth, list) else depth)
        other.dense = self.dense
        other._corpus, other._corpus_path = self._corpus, self._corpus_path
        return other

    def search_all(
        self,
        queries: Queries,
        top_k: int = 100,
        show_progress_bar: bool | None = None,
        timings: dict[str, float] | None = None,
        fusions: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, Run]:
        """The ``bm25``, ``dense`` and ``hybrid`` runs from one BM25 pass and one dense pass.

        Each run equals ``search(queries, top_k, mode)``; the hybrid fuses the same component runs
        instead of searching (and encoding the queries) again. ``fusions`` adds one run per named set of fusion
        settings (see :meth:`with_fusion`), fused from the same passes. ``timings``, if given, receives the
        seconds of each pass, and for each fused run both passes plus its fusion (what a hybrid search costs).
        """
        if self.dense is None:
            raise ConfigError("search_all needs a dense index, but this index has none; use search(mode='bm25')")
        variants = {"hybrid": self, **{name: self.with_fusion(**cfg) for name, cfg in (fusions or {}).items()}}
        depths = [v._depths(top_k) for v in variants.values()]
        start = time.perf_counter()
        bm25 = self.bm25.search(queries, max(top_k, *(d[0] for d in depths)), show_progress_bar)
        t_bm25 = time.perf_counter() - start
        start = time.perf_counter()
        dense = self.dense.search(queries, max(top_k, *(d[1] for d in depths)), show_progress_bar)
        t_dense = time.perf_counter() - start
        out = {"bm25": _truncate(bm25, top_k), "dense": _truncate(dense, top_k)}
        for (name, variant), (d_bm25, d_dense) in zip(variants.items(), depths, strict=True):
            start = time.perf_counter()
            out[name] = variant._fuse([_truncate(bm25, d_bm25), _truncate(dense, d_dense)], queries, top_k)
            if timings is not None:
                timings[name] = t_bm25 + t_dense + time.perf_counter() - start
        if timings is not None:
            timings.update(bm25=t_bm25, dense=t_dense)
        return out

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """Fusion settings (JSON-serialisable)."""
        depth = list(self.depth) if isinstance(self.depth, tuple) else self.depth
        return {
            "fusion": self.fusion, "rrf_k": self.rrf_k, "weights": list(self.weights),
            "norm": self.norm, "depth": depth,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the whole index folder atomically: ``corpus.jsonl``, ``bm25/``, ``dense/``, ``config.json``.

        Example:
            >>> HybridRetriever().index(corpus).save("idx")  # doctest: +SKIP
        """
        from rag_rerank import __version__
        corpus = self.corpus
        with atomic_dir(path, replaceable=replaceable_index, what="rag-rerank index") as tmp:
            save_corpus(tmp / "corpus.jsonl", corpus)
            self.bm25.write(tmp / "bm25")
            if self.dense is not None:
                self.dense.write(tmp / "dense")
            write_json(tmp / "config.json", {
                "format": INDEX_FORMAT, "version": 1, "rag_rerank_version": __version__, "n_docs": len(corpus),
                "bi_encoder": self.dense.model_name if self.dense is not None else None,
                "bi_encoder_hash": self.dense.fingerprint if self.dense is not None else None,
                "hybrid": self.config(),
            })

    @classmethod
    def load(cls, path: str | os.PathLike, bi_encoder: str | None = None, **overrides: Any) -> HybridRetriever:
        """Load an index folder written by :meth:`save` (or ``rag-rerank index``).

        Args:
            path: the index folder.
            bi_encoder: the bi-encoder you expect; refused (:class:`BiEncoderMismatchError`) when it is not the
                one the index was built with. ``None`` uses the index's.
            **overrides: fusion settings (``fusion``, ``rrf_k``, ``weights``, ``norm``, ``depth``) and dense
                query-time settings (``device``, ``batch_size``, ``ef_search``).

        Raises:
            DataError: when ``path`` is not an index folder.
        """
        folder, cfg = read_index_config(
            path, fmt=INDEX_FORMAT, what="rag-rerank index",
            missing="{folder}: not an index folder (no config.json); build one with `rag-rerank index`",
        )
        fusion_keys = FUSION_KEYS
        dense_keys = {"device", "batch_size", "ef_search"}
        reject_unknown_overrides("HybridRetriever.load", overrides, fusion_keys | dense_keys)
        bm25 = BM25Retriever.load(folder / "bm25")
        dense = None
        if (folder / "dense").is_dir():
            dense_over = {k: v for k, v in overrides.items() if k in dense_keys}
            dense = DenseRetriever.load(folder / "dense", model=bi_encoder, **dense_over)
        elif bi_encoder is not None:
            raise DataError(f"{folder}: this index was built without a bi-encoder (BM25 only); drop --bi-encoder")
        hcfg = {**cfg.get("hybrid", {}), **{k: v for k, v in overrides.items() if k in fusion_keys}}
        depth = hcfg.get("depth")
        r = cls(
            bm25, dense, fusion=hcfg.get("fusion", "rrf"),
            rrf_k=hcfg.get("rrf_k", 60), weights=tuple(hcfg.get("weights", (1.0, 1.0))),
            norm=hcfg.get("norm", "minmax"),
            depth=tuple(depth) if isinstance(depth, list) else depth,
        )
        r.dense = dense  # None for a BM25-only index (the constructor would have made a default one)
        r._corpus_path = folder / "corpus.jsonl"
        return r


def _truncate(run: Run, k: int) -> Run:
    """Each query's top ``k`` by ``(-score, doc_id)``: equal to searching at depth ``k``."""
    return {q: dict(ranked(scores, k)) for q, scores in run.items()}
