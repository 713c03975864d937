"""BM25 with rank_bm25's ``BM25Okapi`` scoring, served from a precomputed sparse term-document matrix.

Scoring is exactly ``rank_bm25.BM25Okapi``'s, so on the same tokens the scores are equal:

- ``idf(t) = log(N - df + 0.5) - log(df + 0.5)``; terms with a negative idf (in more than half the docs)
  get ``epsilon * mean(idf over the vocabulary)`` instead;
- ``score(q, d) = sum over query tokens t (repeats count) of
  idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * len(d) / avgdl))``.

Each document's term weights are computed once at index time into a ``terms x docs`` CSR matrix, so a batch
of queries is one sparse product (``query counts @ W``) plus a top-k per row. Only documents that share a
term with non-zero weight with the query appear in the run (no zero padding).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from rag_rerank.errors import ConfigError, DataError
from rag_rerank.io import atomic_dir, read_json, write_json
from rag_rerank.retrieval.common import (
    doc_text,
    progress_disabled,
    read_index_config,
    reject_unknown_overrides,
    replaceable_index,
    tie_ranks,
)
from rag_rerank.retrieval.tokenize import Tokenizer
from rag_rerank.types import Corpus, Queries, Run

logger = logging.getLogger(__name__)

_FORMAT = "rag-rerank-bm25"
_MAX_BATCH_NNZ = 20_000_000  # bound on the (queries x docs) product's size per batch


class BM25Retriever:
    """Okapi BM25 (rank_bm25 semantics) on a scipy sparse matrix.

    Args:
        k1: term-frequency saturation (rank_bm25's default 1.5).
        b: length normalisation (0.75).
        epsilon: idf floor factor for terms in more than half the documents (0.25).
        tokenizer: a :class:`Tokenizer` (default: lowercase ``\\w+``).
        include_title: index ``title + text`` rather than ``text`` alone.

    Example:
        >>> r = BM25Retriever().index({"d1": {"title": "", "text": "the cat sat"},
        ...                            "d2": {"title": "", "text": "a dog barked"},
        ...                            "d3": {"title": "", "text": "the end"}})
        >>> list(r.search({"q": "cat"}, top_k=5)["q"])
        ['d1']
    """

    def __init__(
        self,
        k1: float = 1.5,
        b: float = 0.75,
        epsilon: float = 0.25,
        tokenizer: Tokenizer | None = None,
        include_title: bool = True,
    ) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise ConfigError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b, self.epsilon = float(k1), float(b), float(epsilon)
        self.tokenizer = tokenizer or Tokenizer()
        self.include_title = include_title
        self.doc_ids: list[str] = []
        self.vocab: dict[str, int] = {}
        self.idf: np.ndarray = np.zeros(0)
        self.doc_len: np.ndarray = np.zeros(0)
        self.avgdl: float = 0.0
        self.average_idf: float = 0.0
        self.weights: sp.csr_matrix | None = None  # terms x docs
        self._tie_rank: np.ndarray = np.zeros(0, dtype=np.int64)
        self._id_array: np.ndarray = np.zeros(0, dtype=object)

    # ------------------------------------------------------------------ indexing
    def index(self, corpus: Corpus, show_progress_bar: bool | None = None) -> BM25Retriever:
        """Tokenize ``corpus`` and precompute the BM25 weight matrix. Returns ``self``.

        Raises:
            DataError: when the corpus is empty.
        """
        if not corpus:
            raise DataError("cannot index an empty corpus; give at least one document")
        doc_ids = list(corpus)
        texts = (doc_text(corpus[d], self.include_title) for d in doc_ids)
        quiet = progress_disabled(show_progress_bar, len(doc_ids))
        bar = tqdm(texts, total=len(doc_ids), desc="BM25 tokenize", disable=quiet)
        tokens = [self.tokenizer(t) for t in bar]
        return self.index_tokens(tokens, doc_ids)

    def index_tokens(self, tokenized: Sequence[Sequence[str]], doc_ids: Sequence[str]) -> BM25Retriever:
        """Index pre-tokenized documents (the tokenizer is then used for queries only). Returns ``self``.

        Example:
            >>> r = BM25Retriever().index_tokens([["a", "b"], ["b"], ["c"]], ["x", "y", "z"])
            >>> [round(s, 3) for s in r.get_scores(["a"]).tolist()]
            [0.417, 0.0, 0.0]
        """
        if len(tokenized) != len(doc_ids):
            raise ConfigError(f"{len(tokenized)} token lists but {len(doc_ids)} doc ids")
        if not doc_ids:
            raise DataError("cannot index an empty corpus; give at least one document")
        if len(set(doc_ids)) != len(doc_ids):
            raise DataError("duplicate doc ids in the corpus; ids must be unique")
        vocab: dict[str, int] = {}
        cols: list[int] = []
        lengths = np.fromiter((len(t) for t in tokenized), dtype=np.int64, count=len(tokenized))
        for toks in tokenized:
            cols.extend(vocab.setdefault(t, len(vocab)) for t in toks)
        n_docs, n_terms = len(doc_ids), max(len(vocab), 1)
        rows = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
        tf = sp.csr_matrix(
            (np.ones(len(cols), dtype=np.float64), (rows, np.asarray(cols, dtype=np.int64))), shape=(n_docs, n_terms)
        )
        tf.sum_duplicates()
        df = np.bincount(tf.indices, minlength=n_terms).astype(np.float64)
        idf = np.log(n_docs - df + 0.5) - np.log(df + 0.5)
        self.average_idf = float(idf[: len(vocab)].mean()) if vocab else 0.0
        idf[idf < 0] = self.epsilon * self.average_idf
        avgdl = float(lengths.sum()) / n_docs
        norm = self.k1 * (1 - self.b + self.b * lengths / avgdl) if avgdl > 0 else np.full(n_docs, self.k1)
        row_of = np.repeat(np.arange(n_docs), np.diff(tf.indptr))
        freq = tf.data
        tf.data = idf[tf.indices] * freq * (self.k1 + 1) / (freq + norm[row_of])
        self.weights = tf.T.tocsr()
        self.weights.sort_indices()
        self.doc_ids, self.vocab, self.idf = list(doc_ids), vocab, idf[: len(vocab)]
        self.doc_len, self.avgdl = lengths, avgdl
        self._set_ids(self.doc_ids)
        logger.info("BM25 indexed %d docs, %d terms, %d postings", n_docs, len(vocab), self.weights.nnz)
        return self

    # ------------------------------------------------------------------ querying
    def get_scores(self, query_tokens: Sequence[str]) -> np.ndarray:
        """Scores of every document for one tokenized query (``rank_bm25``'s ``get_scores``).

        Example:
            >>> r = BM25Retriever().index_tokens([["a", "b"], ["b"], ["c"]], ["x", "y", "z"])
            >>> r.get_scores(["zzz"]).tolist()
            [0.0, 0.0, 0.0]
        """
        self._check_indexed()
        q = self._query_matrix([list(query_tokens)])
        return np.asarray((q @ self.weights).todense()).ravel()

    def search(self, queries: Queries, top_k: int = 100, show_progress_bar: bool | None = None) -> Run:
        """Top ``top_k`` documents per query, ranked by ``(-score, doc_id)``.

        A query that matches no document gets an empty ranking (``run[qid] == {}``).

        Example:
            >>> r = BM25Retriever().index({"a": {"text": "red fox"}, "b": {"text": "red hen"}, "c": {"text": "owl"}})
            >>> list(r.search({"q": "red fox"}, top_k=2)["q"])
            ['a', 'b']
        """
        self._check_indexed()
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        qids = list(queries)
        run: Run = {}
        if not qids:
            return run
        # Bound the product's size: a common term can match most documents.
        batch = max(1, min(1024, _MAX_BATCH_NNZ // max(1, len(self.doc_ids))))
        bar = tqdm(total=len(qids), desc="BM25 search", disable=progress_disabled(show_progress_bar, len(qids)))
        for start in range(0, len(qids), batch):
            chunk = qids[start : start + batch]
            q = self._query_matrix([self.tokenizer(queries[qid]) for qid in chunk])
            scores = (q @ self.weights).tocsr()
            for i, qid in enumerate(chunk):
                lo, hi = scores.indptr[i], scores.indptr[i + 1]
                run[qid] = self._top_k(scores.data[lo:hi], scores.indices[lo:hi], top_k)
            bar.update(len(chunk))
        bar.close()
        return run

    def _query_matrix(self, tokenized: list[list[str]]) -> sp.csr_matrix:
        rows, cols = [], []
        for i, toks in enumerate(tokenized):
            for t in toks:
                j = self.vocab.get(t)
                if j is not None:  # unknown terms score 0, as in rank_bm25
                    rows.append(i)
                    cols.append(j)
        data = np.ones(len(cols), dtype=np.float64)  # repeated query terms add up, as in rank_bm25
        q = sp.csr_matrix((data, (rows, cols)), shape=(len(tokenized), self.weights.shape[0]))
        q.sum_duplicates()
        return q

    def _top_k(self, data: np.ndarray, idx: np.ndarray, k: int) -> dict[str, float]:
        keep = data != 0
        if not keep.all():
            data, idx = data[keep], idx[keep]
        if len(data) > k:  # keep every doc tied with the k-th score so ties resolve by doc id below
            kth = np.partition(data, len(data) - k)[len(data) - k]
            sel = data >= kth
            data, idx = data[sel], idx[sel]
        order = np.lexsort((self._tie_rank[idx], -data))[:k]
        return dict(zip(self._id_array[idx[order]].tolist(), data[order].tolist(), strict=False))

    def _set_ids(self, doc_ids: list[str]) -> None:
        self._tie_rank = tie_ranks(doc_ids)
        self._id_array = np.empty(len(doc_ids), dtype=object)
        self._id_array[:] = doc_ids

    def _check_indexed(self) -> None:
        if self.weights is None:
            raise RuntimeError("BM25Retriever has no index; call .index(corpus) or BM25Retriever.load(dir) first")

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """The settings needed to rebuild this retriever (JSON-serialisable)."""
        return {
            "format": _FORMAT, "version": 1, "k1": self.k1, "b": self.b, "epsilon": self.epsilon,
            "include_title": self.include_title, "tokenizer": self.tokenizer.to_config(),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to folder ``path`` atomically (temp folder + rename).

        Example:
            >>> BM25Retriever().index({"a": {"text": "x"}}).save("idx-bm25")  # doctest: +SKIP
        """
        self._check_indexed()
        with atomic_dir(path, replaceable=replaceable_index, what="rag-rerank index") as tmp:
            self.write(tmp)

    def write(self, folder: Path) -> None:
        """Write the index files into an existing folder (non-atomic; :meth:`save` wraps it)."""
        self._check_indexed()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        sp.save_npz(folder / "weights.npz", self.weights, compressed=False)
        np.save(folder / "doc_len.npy", self.doc_len)
        terms = [""] * len(self.vocab)
        for t, j in self.vocab.items():
            terms[j] = t
        write_json(folder / "vocab.json", terms)
        write_json(folder / "doc_ids.json", self.doc_ids)
        write_json(
            folder / "config.json",
            {**self.config(), "n_docs": len(self.doc_ids), "avgdl": self.avgdl, "average_idf": self.average_idf},
        )
        np.save(folder / "idf.npy", self.idf)

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides: Any) -> BM25Retriever:
        """Load a BM25 index written by :meth:`save` (or the ``bm25/`` part of a full index folder).

        ``overrides`` may change query-time settings only: ``tokenizer`` (use with care: it must match the
        one the documents were tokenized with).

        Raises:
            DataError: when ``path`` holds no BM25 index.
        """
        folder, cfg = read_index_config(path, fmt=_FORMAT, what="BM25 index", subdir="bm25")
        reject_unknown_overrides("BM25Retriever.load", overrides, {"tokenizer"})
        r = cls(
            k1=cfg["k1"], b=cfg["b"], epsilon=cfg["epsilon"], include_title=cfg.get("include_title", True),
            tokenizer=overrides.get("tokenizer") or Tokenizer.from_config(cfg["tokenizer"]),
        )
        try:
            r.weights = sp.load_npz(folder / "weights.npz").tocsr()
            r.doc_len = np.load(folder / "doc_len.npy")
            r.idf = np.load(folder / "idf.npy")
            r.vocab = {t: j for j, t in enumerate(read_json(folder / "vocab.json"))}
            r.doc_ids = list(read_json(folder / "doc_ids.json"))
        except FileNotFoundError as e:
            raise DataError(f"{folder}: BM25 index is incomplete ({e.filename} missing); rebuild it") from e
        r.avgdl, r.average_idf = float(cfg["avgdl"]), float(cfg["average_idf"])
        if r.weights.shape != (max(len(r.vocab), 1), len(r.doc_ids)):
            raise DataError(f"{folder}: weights.npz does not match vocab.json / doc_ids.json; rebuild the index")
        r._set_ids(r.doc_ids)
        return r
