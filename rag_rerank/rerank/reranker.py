"""Fast cross-encoder inference: length bucketing, long-document windows and a score cache.

``Reranker`` wraps a sentence-transformers ``CrossEncoder`` (:func:`rag_rerank.models.load_cross_encoder`:
``embedded:*`` names, local folders, hub ids) and scores ``(query, document)`` pairs with exactly the model's own
preprocessing and forward pass. What it adds:

- **length bucketing**: pairs are sorted by token length (longest first, ties by input position) and
  batched, so each batch pads to a similar length; scores come back in the caller's order;
- ``torch.inference_mode()``, a configurable torch thread count, and bf16/fp16 autocast on CUDA;
- **long documents** (query + document longer than ``max_length`` tokens), never handled silently:

  - ``long_documents="window"`` (default): the document is cut into overlapping token windows that
    each fit next to the query (``window_stride`` tokens apart, half a window by default; windows
    start on word boundaries), every window is scored, and the document gets the **maximum**
    window score. :meth:`Reranker.windows` returns the exact window texts, so
    ``predict([(q, doc)]) == max(predict([(q, w) for w in windows(q, doc)]))``. Cost grows with
    document length (about ``2 * tokens / window`` forward passes with the default stride);
  - ``long_documents="truncate"``: the pair is truncated to ``max_length`` and tokenised once, as
    ``CrossEncoder.predict`` does, and one warning per call says how many pairs were cut;
- **long queries** keep ``max_query_tokens`` tokens (half of ``max_length`` by default), as in training
  (:mod:`rag_rerank.rerank.windows`);

- a bounded LRU **score cache** keyed by (model id and scoring settings, query, sha256 of the
  document text); ``cache_size=0`` disables it.

Backends differ only in the forward pass (registry: :mod:`rag_rerank.rerank.backends`); ``"auto"``, the default,
keeps the fastest installed one at ranking parity with fp32 torch on this model and machine.

Example:
    >>> rr = Reranker("embedded:minilm-ce")  # doctest: +SKIP
    >>> rr.predict([("who wrote it?", "Harper Lee wrote it."), ("who wrote it?", "It rained.")])  # doctest: +SKIP
    array([0.51, 0.49], dtype=float32)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from rag_rerank.errors import ConfigError, RagRerankError
from rag_rerank.models import default_device, load_cross_encoder, resolve_model_path
from rag_rerank.rerank.backends import BackendNotAvailableError, check_installed, create_backend, is_exported
from rag_rerank.rerank.backends.auto import BackendChoice, build_as_probed
from rag_rerank.rerank.inputs import check_pairs, check_positive
from rag_rerank.rerank.score_cache import CacheInfo, ScoreCache, doc_hash
from rag_rerank.rerank.windows import MIN_WINDOW_TOKENS, make_windows, pair_lengths, query_budget, truncate_query

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

logger = logging.getLogger(__name__)

Activation = Literal["sigmoid", "none"]
LongDocuments = Literal["window", "truncate"]

_UNSET_MAX_LENGTH = 100_000  # tokenizers without a limit report ~1e30


@dataclass(frozen=True)
class RerankerConfig:
    """The settings a :class:`Reranker` was built with (``max_length`` is the effective one)."""

    model: str
    backend: str = "torch"
    batch_size: int = 32
    max_length: int | None = None
    device: str | None = None
    activation: str = "sigmoid"
    long_documents: str = "window"
    window_stride: int | None = None
    num_threads: int | None = None
    cache_size: int = 4096
    autocast: bool = True
    max_query_tokens: int | None = None


class Reranker:
    """Score ``(query, document)`` pairs with a cross-encoder, fast and with no silent truncation.

    Args:
        model: ``embedded:minilm-ce``, a local model folder, a Hugging Face hub id, or a loaded
            ``CrossEncoder`` (torch backend; scored as it is at each call, so the cache is off: the
            training-time evaluator uses this).
        backend: ``"auto"`` (default; ``$RAG_RERANK_BACKEND`` overrides it): the fastest installed backend whose
            rankings match fp32 torch (per-query Spearman >= 0.99) on a probe of this model, measured once per
            model and machine (:mod:`rag_rerank.rerank.backends.auto`; ``backend_choice`` says why): on a GPU, fp32
            torch or bf16 autocast; torch for an in-memory model. Or one of ``"torch"``, ``"torch-bf16"`` (bf16
            autocast; on CPU only where it is native: AVX512_BF16 or AMX), ``"onnx"`` (fp32 onnxruntime, CPU),
            ``"onnx-int8"`` (dynamic int8 weights, CPU), ``"openvino"`` (fp32), ``"openvino-bf16"`` or
            ``"openvino-int8"`` (OpenVINO, CPU). Exported models are made on first use and cached.
        batch_size: pairs (or document windows) per forward pass.
        max_length: tokens per pair; ``None`` uses the model's limit (512 for BERT-style models).
        device: ``cpu``, ``cuda``, ...; ``None`` picks the best available (always ``cpu`` for ONNX).
        activation: ``"sigmoid"`` gives scores in (0, 1) (the ``CrossEncoder.predict`` default for
            one-label models); ``"none"`` gives raw logits.
        long_documents: ``"window"`` (max over overlapping windows) or ``"truncate"`` (with a
            warning); see the module docstring.
        window_stride: tokens between window starts; ``None`` = half a window.
        max_query_tokens: tokens a query keeps; ``None`` = half of ``max_length`` (the training default).
        num_threads: CPU threads while scoring: torch's (restored afterwards; ``None`` leaves it) or
            onnxruntime's intra-op pool (``None`` = the cores this process may use).
        cache_size: score-cache entries (LRU); ``0`` disables the cache.
        autocast: ``backend="torch"`` on CUDA runs under bf16 (or fp16) autocast; ignored on CPU and by ``auto``.
        trust_remote_code: passed to the model loader.
        calibration_pairs: ``(query, passage)`` pairs that calibrate ``"openvino-int8"`` (default: the model
            folder's ``train_groups.jsonl``); ignored by the other backends.

    Raises:
        BackendNotAvailableError: for an unknown backend (see :data:`rag_rerank.rerank.backends.BACKENDS`), or a
            model the ONNX export cannot handle.
        ImportError: for an ONNX or OpenVINO backend without its extra (``rag-rerank[onnx]``/``[openvino]``).
        ModelUnavailableError: when the model cannot be had (offline, not cached, ...).
        ValueError: for invalid settings.

    Example:
        >>> rr = Reranker("embedded:minilm-ce", batch_size=16)  # doctest: +SKIP
        >>> rr.rank("capital of France?", ["Paris is the capital.", "Bananas."], top_k=1)  # doctest: +SKIP
        [{'corpus_id': 0, 'score': 0.52, 'text': 'Paris is the capital.'}]
    """

    def __init__(
        self,
        model: str | os.PathLike | CrossEncoder,
        *,
        backend: str | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        device: str | None = None,
        activation: Activation | str = "sigmoid",
        long_documents: LongDocuments | str = "window",
        window_stride: int | None = None,
        num_threads: int | None = None,
        cache_size: int = 4096,
        autocast: bool = True,
        trust_remote_code: bool = False,
        calibration_pairs: Sequence[tuple[str, str]] | None = None,
        max_query_tokens: int | None = None,
    ) -> None:
        backend = backend or os.environ.get("RAG_RERANK_BACKEND") or "auto"
        auto = backend == "auto" and isinstance(model, (str, os.PathLike))  # an in-memory model is scored as it is
        backend = "torch" if backend == "auto" else backend
        autocast = autocast and not auto  # on a GPU auto measures fp32 torch against bf16 autocast itself
        exported = (auto and (device or default_device()) == "cpu") or is_exported(backend)  # CPU-only backends
        if exported and not auto:
            check_installed(backend)
            if device not in (None, "cpu"):
                raise ConfigError(f"backend={backend!r} runs on CPU; got device={device!r}. Fix: drop device")
        if exported:
            device = "cpu"
        check_positive("batch_size", batch_size)
        if max_length is not None:
            check_positive("max_length", max_length)
        for name, value in (("window_stride", window_stride), ("num_threads", num_threads),
                            ("max_query_tokens", max_query_tokens)):
            if value is not None:
                check_positive(name, value)
        if activation not in ("sigmoid", "none"):
            raise ConfigError(f"activation={activation!r}; use 'sigmoid' or 'none'")
        if long_documents not in ("window", "truncate"):
            raise ConfigError(f"long_documents={long_documents!r}; use 'window' or 'truncate'")
        if cache_size < 0:
            raise ConfigError(f"cache_size={cache_size} must be >= 0 (0 disables the cache)")

        if isinstance(model, os.PathLike):
            model = os.fspath(model)
        if isinstance(model, str):
            self._ce: CrossEncoder = load_cross_encoder(
                model, device=device, max_length=max_length, trust_remote_code=trust_remote_code
            )
        else:  # a model in memory (e.g. mid-training): scored as it is at each call, so nothing is cached
            if exported:
                raise ConfigError(f"backend={backend!r} exports a saved model; pass its folder, not a CrossEncoder")
            if not hasattr(model, "tokenizer") or not hasattr(model, "num_labels"):
                raise TypeError(f"model must be a name, a folder or a CrossEncoder; got {type(model).__name__}")
            self._ce = model
            if max_length is not None:
                model.max_seq_length = max_length
            cache_size = 0
            model = f"<in-memory {type(model).__name__} {id(model):#x}>"
        if self._ce.num_labels != 1:
            raise RagRerankError(
                f"model {model!r} has {self._ce.num_labels} output labels; a reranker needs exactly 1 score per pair"
            )
        self._tokenizer = self._ce.tokenizer
        if self._tokenizer is None:
            raise RagRerankError(f"model {model!r} has no text tokenizer; Reranker supports text cross-encoders only")
        if long_documents == "window" and not getattr(self._tokenizer, "is_fast", False):
            raise RagRerankError(
                f"long_documents='window' needs a fast (Rust) tokenizer to find token offsets, and {model!r} "
                "has a slow one.\nFix: pass long_documents='truncate' (long pairs are then cut, with a warning)."
            )
        effective = self._ce.max_seq_length
        if effective is None or effective > _UNSET_MAX_LENGTH:
            positions = getattr(self._ce.model.config, "max_position_embeddings", 512)
            effective = min(int(positions), 512)
            self._ce.max_seq_length = effective
            logger.info("model %s declares no max length; using %d tokens", model, effective)
        self.max_length: int = int(effective)
        self.max_query_tokens = query_budget(self.max_length, max_query_tokens)
        self.device: str = str(self._ce.device)
        self.config = RerankerConfig(
            model=model,
            backend=backend,
            batch_size=batch_size,
            max_length=self.max_length,
            device=self.device,
            activation=activation,
            long_documents=long_documents,
            window_stride=window_stride,
            num_threads=num_threads,
            cache_size=cache_size,
            autocast=autocast,
            max_query_tokens=self.max_query_tokens,
        )
        model_dir = resolve_model_path(model, role="cross-encoder") if exported or auto else None
        self.backend_choice: BackendChoice | None = None
        self._calibration = calibration_pairs
        build = functools.partial(create_backend, ce=self._ce, model_dir=model_dir, num_threads=num_threads,
                                  autocast=autocast, trust_remote_code=trust_remote_code,
                                  calibration_pairs=calibration_pairs)
        if auto:
            backend = self._choose_backend(model_dir, build)
            self.config = dataclasses.replace(self.config, backend=backend)
            self._backend = build_as_probed(backend, model_dir, build, has_calibration=calibration_pairs is not None)
        else:
            self._backend = build(backend)
        self._cache = ScoreCache(cache_size)
        # everything that changes a score is part of the cache's model key
        self._cache_model_key = (f"{model}|{backend}|{activation}|{self.max_length}|{long_documents}|{window_stride}"
                                 f"|{self.max_query_tokens}")

    def __repr__(self) -> str:
        c = self.config
        return (f"Reranker(model={c.model!r}, backend={c.backend!r}, device={c.device!r}, max_length={c.max_length}, "
                f"long_documents={c.long_documents!r}, activation={c.activation!r})")

    def _choose_backend(self, model_dir: Any, build: Any) -> str:
        """``backend="auto"``: measure the installed backends on this model and machine (cached); see
        :mod:`rag_rerank.rerank.backends.auto`."""
        from rag_rerank.rerank.backends.auto import choose_backend

        skip = ("model", "backend", "device", "cache_size")
        settings = "|".join(str(v) for k, v in dataclasses.asdict(self.config).items() if k not in skip)

        def score(backend: Any, pairs: list[tuple[str, str]]) -> np.ndarray:
            saved, self._backend = getattr(self, "_backend", None), backend
            try:
                return self._score(pairs, False)
            finally:
                self._backend = saved

        try:
            self.backend_choice = choose_backend(
                model_dir, settings, lambda name, _probe: build_as_probed(
                    name, model_dir, build, has_calibration=self._calibration is not None), score, device=self.device)
        except BackendNotAvailableError as e:  # e.g. no weights file an exporter understands
            logger.info("backend auto -> torch (%s)", str(e).splitlines()[0])
            return "torch"
        return self.backend_choice.backend

    @property
    def effective_precision(self) -> str:
        """The precision the backend really runs at here: ``fp32``, ``bf16``, ``fp16`` or ``int8``.

        ``openvino-bf16`` on a CPU without native bf16 runs fp32, and says so here.
        """
        return self._backend.effective_precision

    @property
    def cross_encoder(self) -> CrossEncoder:
        """The underlying sentence-transformers model (shared, not a copy; ONNX backends use only its tokenizer)."""
        return self._ce

    # ------------------------------------------------------------------ scoring
    def predict(
        self,
        pairs: Sequence[tuple[str, str]],
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Score each ``(query, document)`` pair; the output follows the input order.

        With documents that fit ``max_length`` this equals ``CrossEncoder.predict`` on the same model
        (sigmoid activation) or ``CrossEncoder.predict(activation_fn=Identity())`` (``"none"``).

        Args:
            pairs: ``(query, document)`` string pairs.
            show_progress_bar: tqdm bar over batches; ``None`` shows it for 10+ batches.

        Returns:
            ``float32`` array, one score per pair.

        Example:
            >>> rr.predict([("q", "a document"), ("q", "another")]).shape  # doctest: +SKIP
            (2,)
        """
        checked = check_pairs(pairs)
        out = np.empty(len(checked), dtype=np.float32)
        pending: dict[tuple[str, str, str], list[int]] = {}
        for i, (q, d) in enumerate(checked):
            key = (self._cache_model_key, q, doc_hash(d))
            cached = None if key in pending else self._cache.get(key)
            if cached is not None:
                out[i] = cached
            else:
                pending.setdefault(key, []).append(i)
        if not pending:
            return out
        keys = list(pending)
        todo = [checked[pending[k][0]] for k in keys]
        scores = self._score(todo, show_progress_bar)
        for key, score in zip(keys, scores, strict=True):
            self._cache.put(key, float(score))
            out[pending[key]] = score
        return out

    def rank(
        self,
        query: str,
        docs: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = True,
        show_progress_bar: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Rank documents for one query, like ``CrossEncoder.rank``; ties keep input order.

        Args:
            query: the query.
            docs: candidate documents.
            top_k: keep only the best ``top_k`` (``None`` keeps all).
            return_documents: include each document's ``text``.
            show_progress_bar: see :meth:`predict`.

        Returns:
            ``[{"corpus_id": index, "score": float, "text": str}, ...]`` sorted by ``(-score, index)``.

        Example:
            >>> rr.rank("q", ["doc a", "doc b"], top_k=1)[0]["corpus_id"]  # doctest: +SKIP
            1
        """
        if top_k is not None and top_k < 0:
            raise ConfigError(f"top_k={top_k} must be >= 0 or None")
        docs = list(docs)
        scores = self.predict([(query, d) for d in docs], show_progress_bar=show_progress_bar)
        order = sorted(range(len(docs)), key=lambda i: (-float(scores[i]), i))
        if top_k is not None:
            order = order[:top_k]
        return [{"corpus_id": i, "score": float(scores[i]), **({"text": docs[i]} if return_documents else {})}
                for i in order]

    def windows(self, query: str, document: str) -> list[str]:
        """The document texts that ``long_documents="window"`` scores for this query.

        ``[document]`` when the pair fits ``max_length`` (or the query leaves fewer than
        ``MIN_WINDOW_TOKENS`` tokens for the document, in which case the pair is truncated);
        otherwise overlapping slices of ``document`` that each fit next to the query.

        Example:
            >>> len(rr.windows("q", "word " * 2000)) > 1  # doctest: +SKIP
            True
        """
        query = self._cut_queries([(query, document)])[0][0]
        total = self._pair_lengths([(query, document)])[0]
        if total <= self.max_length:
            return [document]
        return self._make_windows(query, document) or [document]

    def cache_info(self) -> CacheInfo:
        """Hits, misses and size of the score cache."""
        return self._cache.info()

    def clear_cache(self) -> None:
        """Empty the score cache and reset its counters."""
        self._cache.clear()

    # ------------------------------------------------------------------ internals
    def _pair_lengths(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        return pair_lengths(self._tokenizer, pairs)

    def _cut_queries(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        cut = {q: truncate_query(self._tokenizer, q, self.max_query_tokens) for q in {q for q, _ in pairs}}
        return [(cut[q], d) for q, d in pairs]

    def _make_windows(self, query: str, document: str) -> list[str] | None:
        return make_windows(self._tokenizer, self.max_length, query, document, self.config.window_stride)

    def _score(self, pairs: list[tuple[str, str]], show_progress_bar: bool | None) -> np.ndarray:
        """Score unique, uncached pairs: expand long ones to windows, bucket by length, forward. Truncate mode
        tokenises once, as ``predict`` does (buckets by characters, counts the pairs that fill ``max_length``): a
        length pass cost as much as the forward on an H200 (``pipelines/results/bench_rerank_h200_gpu_ab.json``)."""
        from tqdm.auto import tqdm

        pairs = self._cut_queries(pairs)
        cut = self.config.long_documents == "truncate"
        units: list[tuple[int, str, str, int]] = (  # (owner, query, text, tokens; characters in truncate mode)
            [(i, q, d, len(q) + len(d)) for i, (q, d) in enumerate(pairs)] if cut else [])
        truncated = 0
        for owner, ((q, d), n_tok) in [] if cut else enumerate(zip(pairs, self._pair_lengths(pairs), strict=True)):
            if n_tok <= self.max_length:
                units.append((owner, q, d, n_tok))
                continue
            wins = self._make_windows(q, d)
            if wins is None:
                truncated += 1
                units.append((owner, q, d, self.max_length))
            else:
                units.extend((owner, q, w, self.max_length) for w in wins)
        order = sorted(range(len(units)), key=lambda u: (-units[u][3], u))
        bs = self.config.batch_size
        batches = [order[i : i + bs] for i in range(0, len(order), bs)]
        unit_scores = np.empty(len(units), dtype=np.float32)
        disable = len(batches) < 10 if show_progress_bar is None else not show_progress_bar
        with self._backend.threads():
            for batch in tqdm(batches, desc="Reranking", unit="batch", disable=disable):
                features = self._ce.preprocess([(units[u][1], units[u][2]) for u in batch])
                mask = features.get("attention_mask") if cut else None
                truncated += 0 if mask is None else int((mask.sum(dim=1) >= self.max_length).sum())
                unit_scores[batch] = self._activate(self._backend.logits(features))
        if truncated:
            why = ("long_documents='truncate'; counted as the pairs that fill max_length" if cut
                   else f"the query leaves fewer than {MIN_WINDOW_TOKENS} tokens for document windows")
            logger.warning(
                "truncated %d of %d pairs to max_length=%d tokens (%s); scores ignore the cut text. "
                "Use long_documents='window' or a larger max_length to score all of it.",
                truncated, len(pairs), self.max_length, why,
            )
        best = np.full(len(pairs), -np.inf, dtype=np.float32)
        np.maximum.at(best, np.array([u[0] for u in units], dtype=np.int64), unit_scores)
        return best

    def _activate(self, logits: np.ndarray) -> np.ndarray:
        if self.config.activation == "sigmoid":
            return sigmoid(logits).astype(np.float32)
        return logits.astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function in float64: ``CrossEncoder.predict``'s default activation for one-label models.

    Example:
        >>> sigmoid(np.array([0.0])).tolist()
        [0.5]
    """
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))
