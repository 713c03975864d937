"""Dense retrieval: a sentence-transformers bi-encoder, normalised embeddings, a FAISS inner-product index.

Embeddings are cached by (model fingerprint, hash of the exact text encoded), so re-indexing a corpus
whose chunks did not change encodes nothing: the cache lives in memory on the retriever, in a saved
index (``rag-rerank index`` reuses the one it overwrites), and optionally in ``cache_dir``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag_rerank.errors import ConfigError, DataError, ModelUnavailableError, RagRerankError
from rag_rerank.io import atomic_dir, atomic_write, read_json, write_json
from rag_rerank.models import load_bi_encoder, resolve_model_path
from rag_rerank.retrieval.common import (
    doc_text,
    progress_disabled,
    read_index_config,
    reject_unknown_overrides,
    replaceable_index,
    tie_ranks,
)
from rag_rerank.types import Corpus, Queries, Run, content_id

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

_FORMAT = "rag-rerank-dense"
_WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".pt")


class BiEncoderMismatchError(RagRerankError):
    """The bi-encoder asked for is not the one an index was built with."""


def model_fingerprint(name: str) -> str:
    """A hash of a bi-encoder's weights and config files (names and bytes), stable across machines.

    Example:
        >>> len(model_fingerprint("embedded:minilm"))  # doctest: +SKIP
        16
    """
    path = resolve_model_path(name, role="bi-encoder")
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and p.suffix in _WEIGHT_SUFFIXES
            and not any(part.startswith(".") or part in ("onnx", "openvino") for part in p.relative_to(path).parts)
        )
    else:
        files = [path]
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _hash_files(str(path), path.is_dir(), key)


@functools.lru_cache(maxsize=64)
def _hash_files(root: str, is_dir: bool, key: tuple[tuple[str, int, int], ...]) -> str:
    """blake2b of the files' relative names and bytes; ``key`` (path, size, mtime) makes an edit a cache miss."""
    h = hashlib.blake2b(digest_size=16)
    for name, _, _ in key:
        p = Path(name)
        h.update((p.relative_to(root).as_posix() if is_dir else p.name).encode())
        with p.open("rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()[:16]


class DenseRetriever:
    """Bi-encoder + FAISS retrieval with normalised embeddings (inner product = cosine).

    Args:
        model: a bi-encoder name ``embedded:minilm`` (default), a local folder, or a hub id.
        faiss_index: ``"flat"`` (exact ``IndexFlatIP``) or ``"hnsw"`` (``IndexHNSWFlat``, approximate).
        hnsw_m, ef_construction, ef_search: HNSW graph settings.
        batch_size: encoding batch size.
        device: torch device (default: cuda/mps when present, else cpu).
        include_title: encode ``title + text``.
        query_prefix, doc_prefix: instruction prefixes some models need (``"query: "`` for E5).
        cache_dir: optional folder for a persistent embedding cache shared across indexes.

    Example:
        >>> r = DenseRetriever("embedded:minilm").index({"d1": {"title": "", "text": "Paris is in France"}})
        >>> list(r.search({"q": "capital of France"}, top_k=1)["q"])  # doctest: +SKIP
        ['d1']
    """

    def __init__(
        self,
        model: str | os.PathLike = "embedded:minilm",
        *,
        faiss_index: str = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        batch_size: int = 64,
        device: str | None = None,
        include_title: bool = True,
        query_prefix: str = "",
        doc_prefix: str = "",
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if faiss_index not in ("flat", "hnsw"):
            raise ConfigError(f"faiss_index={faiss_index!r}: use 'flat' (exact) or 'hnsw' (approximate, large corpora)")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name = str(model)
        self.faiss_index, self.hnsw_m = faiss_index, hnsw_m
        self.ef_construction, self.ef_search = ef_construction, ef_search
        self.batch_size, self.device = batch_size, device
        self.include_title, self.query_prefix, self.doc_prefix = include_title, query_prefix, doc_prefix
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.doc_ids: list[str] = []
        self.text_keys: list[str] = []
        self.index_: Any = None
        self._model: SentenceTransformer | None = None
        self._fingerprint: str | None = None
        self._expected_fingerprint: str | None = None  # set by load(): checked when the model is loaded
        self._cache: dict[str, np.ndarray] = {}
        self._tie_rank = np.zeros(0, dtype=np.int64)
        self._id_array = np.zeros(0, dtype=object)

    # ------------------------------------------------------------------ model
    @property
    def fingerprint(self) -> str:
        """Hash of the bi-encoder's weights/config files (see :func:`model_fingerprint`)."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model_name)
        return self._fingerprint

    @property
    def model(self) -> SentenceTransformer:
        """The sentence-transformers model, loaded on first use."""
        if self._model is None:
            if self._expected_fingerprint and self.fingerprint != self._expected_fingerprint:
                raise BiEncoderMismatchError(
                    f"bi-encoder {self.model_name!r} has changed since the index was built (weights hash "
                    f"{self.fingerprint} != {self._expected_fingerprint}); rebuild the index with `rag-rerank index`"
                )
            self._model = load_bi_encoder(self.model_name, device=self.device)
        return self._model

    def encode(self, texts: list[str], show_progress_bar: bool | None = None) -> np.ndarray:
        """Normalised float32 embeddings, one row per text.

        Example:
            >>> DenseRetriever().encode(["hello"]).shape  # doctest: +SKIP
            (1, 384)
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=not progress_disabled(show_progress_bar, len(texts)),
        )
        return np.ascontiguousarray(emb, dtype=np.float32)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        if self.index_ is not None:
            return int(self.index_.d)
        return int(self.model.get_embedding_dimension())

    # ------------------------------------------------------------------ indexing
    def index(self, corpus: Corpus, show_progress_bar: bool | None = None) -> DenseRetriever:
        """Embed ``corpus`` (reusing cached embeddings of unchanged texts) and build the FAISS index.

        Raises:
            DataError: when the corpus is empty.
        """
        if not corpus:
            raise DataError("cannot index an empty corpus; give at least one document")
        doc_ids = list(corpus)
        texts = [self.doc_prefix + doc_text(corpus[d], self.include_title) for d in doc_ids]
        keys = [content_id(t, length=32) for t in texts]
        self._load_disk_cache()
        missing = {k: t for k, t in zip(keys, texts, strict=False) if k not in self._cache}
        logger.info("dense: %d docs, %d cached, %d to encode", len(keys), len(keys) - len(missing), len(missing))
        if missing:
            emb = self.encode(list(missing.values()), show_progress_bar)
            self._cache.update(zip(missing, emb, strict=False))
        vectors = np.stack([self._cache[k] for k in keys]).astype(np.float32, copy=False)
        self._cache = {k: self._cache[k] for k in keys}  # keep the cache to the current corpus
        if missing:
            self._save_disk_cache()
        self.doc_ids, self.text_keys = doc_ids, keys
        self.index_ = self._build_faiss(vectors)
        self._set_ids(doc_ids)
        return self

    def _build_faiss(self, vectors: np.ndarray) -> Any:
        faiss = _import_faiss()
        dim = vectors.shape[1]
        if self.faiss_index == "hnsw":
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
        else:
            index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index

    def vectors(self) -> np.ndarray:
        """The indexed embeddings, in ``doc_ids`` order."""
        self._check_indexed()
        return self.index_.reconstruct_n(0, self.index_.ntotal)

    # ------------------------------------------------------------------ querying
    def search(self, queries: Queries, top_k: int = 100, show_progress_bar: bool | None = None) -> Run:
        """Top ``top_k`` documents per query by cosine similarity, ranked by ``(-score, doc_id)``."""
        self._check_indexed()
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        qids = list(queries)
        if not qids:
            return {}
        q = self.encode([self.query_prefix + (queries[i] or "") for i in qids], show_progress_bar)
        k = min(top_k, self.index_.ntotal)
        scores, idx = self.index_.search(q, k)
        ids = self._id_array
        run: Run = {}
        for qid, s, ix in zip(qids, scores, idx, strict=False):
            ok = ix >= 0  # HNSW may return -1 when it finds fewer than k
            s, ix = s[ok], ix[ok]
            order = np.lexsort((self._tie_rank[ix], -s))
            run[qid] = dict(zip(ids[ix[order]].tolist(), s[order].astype(np.float64).tolist(), strict=False))
        return run

    def _set_ids(self, doc_ids: list[str]) -> None:
        self._tie_rank = tie_ranks(doc_ids)
        self._id_array = np.empty(len(doc_ids), dtype=object)
        self._id_array[:] = doc_ids

    def _check_indexed(self) -> None:
        if self.index_ is None:
            raise RuntimeError("DenseRetriever has no index; call .index(corpus) or DenseRetriever.load(dir) first")

    # ------------------------------------------------------------------ cache
    def seed_cache(self, other: DenseRetriever) -> int:
        """Reuse another (e.g. previously saved) index's embeddings if it used the same model. Returns the count."""
        if other.index_ is None or (other._expected_fingerprint or other.fingerprint) != self.fingerprint:
            return 0
        self._cache.update(zip(other.text_keys, other.vectors(), strict=False))
        return len(other.text_keys)

    def _cache_folder(self) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / self.fingerprint

    def _load_disk_cache(self) -> None:
        folder = self._cache_folder()
        if folder is None or not (folder / "keys.json").is_file():
            return
        try:
            keys, vecs = read_json(folder / "keys.json"), np.load(folder / "vectors.npy")
        except (OSError, ValueError, DataError) as e:
            logger.warning("ignoring unreadable embedding cache %s (%s)", folder, e)
            return
        if len(keys) == len(vecs):
            for k, v in zip(keys, vecs, strict=False):
                self._cache.setdefault(k, v)

    def _save_disk_cache(self) -> None:
        folder = self._cache_folder()
        if folder is None:
            return
        merged: dict[str, np.ndarray] = {}
        if (folder / "keys.json").is_file():
            try:
                merged.update(zip(read_json(folder / "keys.json"), np.load(folder / "vectors.npy"), strict=False))
            except (OSError, ValueError, DataError):
                merged = {}
        merged.update(self._cache)
        with atomic_write(folder / "vectors.npy", "wb") as f:
            np.save(f, np.stack(list(merged.values())).astype(np.float32))
        write_json(folder / "keys.json", list(merged))

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """The settings needed to rebuild this retriever (JSON-serialisable)."""
        return {
            "format": _FORMAT, "version": 1, "model": self.model_name, "model_hash": self.fingerprint,
            "faiss_index": self.faiss_index, "hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction,
            "ef_search": self.ef_search, "batch_size": self.batch_size, "include_title": self.include_title,
            "query_prefix": self.query_prefix, "doc_prefix": self.doc_prefix,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to folder ``path`` atomically (temp folder + rename)."""
        self._check_indexed()
        with atomic_dir(path, replaceable=replaceable_index, what="rag-rerank index") as tmp:
            self.write(tmp)

    def write(self, folder: Path) -> None:
        """Write the index files into a folder (non-atomic; :meth:`save` wraps it)."""
        self._check_indexed()
        faiss = _import_faiss()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index_, str(folder / "faiss.index"))
        write_json(folder / "doc_ids.json", self.doc_ids)
        write_json(folder / "text_keys.json", self.text_keys)
        write_json(folder / "config.json", {**self.config(), "dim": self.dim, "n_docs": len(self.doc_ids)})

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides: Any) -> DenseRetriever:
        """Load a dense index written by :meth:`save` (or the ``dense/`` part of a full index folder).

        Args:
            path: the folder.
            **overrides: ``model`` (must be the same bi-encoder: checked by weights hash), ``device``,
                ``batch_size``, ``ef_search``, ``cache_dir``.

        Raises:
            BiEncoderMismatchError: when ``model`` differs from the index's bi-encoder.
            DataError: when ``path`` holds no dense index.
        """
        folder, cfg = read_index_config(path, fmt=_FORMAT, what="dense index", subdir="dense")
        reject_unknown_overrides(
            "DenseRetriever.load", overrides, {"model", "device", "batch_size", "ef_search", "cache_dir"}
        )
        asked = overrides.get("model")
        if asked is not None and str(asked) != cfg["model"] and _fingerprint_or_none(str(asked)) != cfg["model_hash"]:
            raise BiEncoderMismatchError(
                f"{folder.parent if folder.name == 'dense' else folder}: the index was built with bi-encoder "
                f"{cfg['model']!r} (weights hash {cfg['model_hash']}), but {str(asked)!r} was asked for.\n"
                f"Fix: omit --bi-encoder to use the index's model, or rebuild the index with --bi-encoder {asked}"
            )
        r = cls(
            str(asked) if asked is not None else cfg["model"], faiss_index=cfg["faiss_index"], hnsw_m=cfg["hnsw_m"],
            ef_construction=cfg["ef_construction"], ef_search=overrides.get("ef_search", cfg["ef_search"]),
            batch_size=overrides.get("batch_size", cfg["batch_size"]), device=overrides.get("device"),
            include_title=cfg["include_title"], query_prefix=cfg["query_prefix"], doc_prefix=cfg["doc_prefix"],
            cache_dir=overrides.get("cache_dir"),
        )
        r._expected_fingerprint = cfg["model_hash"]
        faiss = _import_faiss()
        try:
            r.index_ = faiss.read_index(str(folder / "faiss.index"))
            r.doc_ids = list(read_json(folder / "doc_ids.json"))
            r.text_keys = list(read_json(folder / "text_keys.json"))
        except (FileNotFoundError, RuntimeError) as e:
            raise DataError(f"{folder}: dense index is incomplete or unreadable ({e}); rebuild it") from e
        if r.index_.ntotal != len(r.doc_ids):
            raise DataError(f"{folder}: faiss.index has {r.index_.ntotal} vectors for {len(r.doc_ids)} ids; rebuild")
        if r.faiss_index == "hnsw":
            r.index_.hnsw.efSearch = r.ef_search
        r._set_ids(r.doc_ids)
        return r


def _fingerprint_or_none(name: str) -> str | None:
    try:
        return model_fingerprint(name)
    except ModelUnavailableError:
        return None


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise ImportError("faiss is required for dense retrieval: pip install faiss-cpu (or faiss-gpu)") from e
    return faiss
