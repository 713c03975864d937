"""Training rows from mined negatives: listwise groups (:func:`build_groups`), pointwise pairs (:func:`to_pairs`),
and the chunk metadata the mining guards read (:func:`load_chunk_meta`).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from typing import Any

from rag_rerank.errors import ConfigError, DataError
from rag_rerank.io import iter_jsonl
from rag_rerank.types import Corpus, Qrels, Queries

logger = logging.getLogger(__name__)

__all__ = ["add_prior_scores", "add_teacher_scores", "build_groups", "fit_prior_weight", "load_chunk_meta",
           "prior_scores", "to_pairs"]


def load_chunk_meta(corpus_jsonl_path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read ``{chunk_id: {"doc_id", "position", "text", "title", "source"}}`` from a corpus.jsonl.

    ``doc_id``/``position``/``source`` are read from top-level fields, else from a ``metadata``
    object; absent ones are ``None`` (the neighbor guard then skips that chunk).

    Raises:
        DataError: naming the file and line of a record without ``_id`` or with a non-integer position.

    Example:
        >>> meta = load_chunk_meta("dataset/corpus.jsonl")  # doctest: +SKIP
        >>> meta["c3f1..."]["position"]  # doctest: +SKIP
        2
    """
    meta: dict[str, dict[str, Any]] = {}
    for i, rec in enumerate(iter_jsonl(corpus_jsonl_path), 1):
        if "_id" not in rec:
            raise DataError(f"{corpus_jsonl_path}: line {i}: missing '_id'; corpus records need _id and text")
        extra = rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {}
        position = rec.get("position", extra.get("position"))
        if position is not None:
            try:
                position = int(position)
            except (TypeError, ValueError) as e:
                raise DataError(
                    f"{corpus_jsonl_path}: line {i}: position {position!r} is not an integer; fix or drop it"
                ) from e
        doc_id = rec.get("doc_id", extra.get("doc_id"))
        meta[str(rec["_id"])] = {
            "doc_id": None if doc_id is None else str(doc_id), "position": position,
            "text": str(rec.get("text") or ""), "title": str(rec.get("title") or ""),
            "source": rec.get("source", extra.get("source")),
        }
    return meta


def _text(corpus: Corpus, cid: str, what: str) -> str:
    if cid not in corpus:
        raise DataError(f"{what} chunk {cid!r} is not in the corpus; mine and train on the same corpus.jsonl")
    return corpus[cid]["text"]


def _pad(corpus_ids: list[str], k: int, exclude: set[str], seed: int, *key: str) -> list[str]:
    rng = random.Random("\x1f".join([str(seed), *key]))
    pool = [d for d in corpus_ids if d not in exclude] if len(corpus_ids) <= 4 * (k + len(exclude)) else None
    if pool is not None:
        return rng.sample(pool, min(k, len(pool)))
    out: list[str] = []
    while len(out) < k:  # large corpus: rejection sampling terminates quickly
        d = corpus_ids[rng.randrange(len(corpus_ids))]
        if d not in exclude and d not in out:
            out.append(d)
    return out


def build_groups(
    queries: Queries, qrels: Qrels, negatives: Mapping[str, list[str]], corpus: Corpus, group_size: int = 8,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Listwise training rows ``{"query", "positive", "negatives": [group_size - 1 texts]}``, with the ids they
    come from (``query_id``, ``positive_id``, ``negative_ids``).

    One row per (query, positive), in qrels order; the mined negatives come first, and a short list
    is padded with random corpus chunks (not positives; seeded per query and positive). Queries
    without text in ``queries`` are skipped; if the corpus cannot fill a group, the row is skipped
    with a warning.

    Raises:
        ValueError: ``group_size < 2``.
        DataError: a positive or negative id missing from ``corpus``.

    Example:
        >>> corpus = {i: {"title": "", "text": f"t{i}"} for i in "pabc"}
        >>> build_groups({"q": "why?"}, {"q": {"p": 1}}, {"q": ["a"]}, corpus, group_size=3)[0]["negatives"][0]
        'ta'
    """
    if group_size < 2:
        raise ConfigError(f"group_size must be >= 2 (1 positive + negatives), got {group_size}")
    corpus_ids = sorted(corpus)
    rows, short = [], 0
    for q, judged in qrels.items():
        positives = [d for d, r in sorted(judged.items(), key=lambda kv: (-kv[1], kv[0])) if r > 0]
        if q not in queries or not positives:
            continue
        for pos in positives:
            mined = dict.fromkeys(negatives.get(q, []))
            negs = [d for d in mined if judged.get(d, 0) <= 0][: group_size - 1]
            need = group_size - 1 - len(negs)
            if need:
                negs += _pad(corpus_ids, need, set(positives) | set(negs), seed, q, pos)
            if len(negs) < group_size - 1:
                short += 1
                continue
            rows.append({"query": queries[q], "positive": _text(corpus, pos, "positive"),
                         "negatives": [_text(corpus, d, "negative") for d in negs],
                         "query_id": q, "positive_id": pos, "negative_ids": list(negs)})
    if short:
        logger.warning("skipped %d groups: the corpus has too few chunks for group_size=%d", short, group_size)
    return rows


def to_pairs(
    queries: Queries, qrels: Qrels, negatives: Mapping[str, list[str]], corpus: Corpus,
    max_negatives: int | None = None,
) -> list[dict[str, Any]]:
    """Pointwise rows ``{"query", "text", "label"}`` (1.0 positive, 0.0 negative) for BCE training.

    Per query (qrels order): its positives sorted by ``(-relevance, id)``, then its negatives in
    mined order (at most ``max_negatives``; positives among them are dropped).

    Example:
        >>> corpus = {i: {"title": "", "text": f"t{i}"} for i in "pa"}
        >>> to_pairs({"q": "why?"}, {"q": {"p": 1}}, {"q": ["a"]}, corpus)
        [{'query': 'why?', 'text': 'tp', 'label': 1.0}, {'query': 'why?', 'text': 'ta', 'label': 0.0}]
    """
    rows = []
    for q, judged in qrels.items():
        positives = [d for d, r in sorted(judged.items(), key=lambda kv: (-kv[1], kv[0])) if r > 0]
        if q not in queries or not positives:
            continue
        negs = [d for d in dict.fromkeys(negatives.get(q, [])) if judged.get(d, 0) <= 0][:max_negatives]
        rows += [{"query": queries[q], "text": _text(corpus, d, "positive"), "label": 1.0} for d in positives]
        rows += [{"query": queries[q], "text": _text(corpus, d, "negative"), "label": 0.0} for d in negs]
    return rows


def add_teacher_scores(rows: list[dict[str, Any]], dense: Any, batch_size: int = 64) -> int:
    """Add ``teacher``: the bi-encoder's cosine of the query with ``[positive, *negatives]``, to each row in place.

    ``dense`` is the first stage's :class:`~rag_rerank.retrieval.dense.DenseRetriever` (its indexed vectors are the
    documents'; the queries are encoded here). Rows without ids (written before ids were recorded) are left as
    they are. Returns the number of rows scored.

    Example:
        >>> add_teacher_scores(rows, load_index("idx").dense)  # doctest: +SKIP
    """
    import numpy as np

    todo = [r for r in rows if "query_id" in r and "positive_id" in r and "negative_ids" in r]
    if not todo:
        return 0
    row_of = {d: i for i, d in enumerate(dense.doc_ids)}
    vectors = dense.vectors()
    queries = dense.encode([r["query"] for r in todo], show_progress_bar=False)
    for r, qv in zip(todo, queries, strict=True):
        ids = [r["positive_id"], *r["negative_ids"]]
        r["teacher"] = [float(np.dot(qv, vectors[row_of[d]])) for d in ids]
    return len(todo)


def prior_scores(ranking: Mapping[str, float], doc_ids: list[str], top_k: int = 20) -> list[float]:
    """The first stage's scores of ``doc_ids`` z-scored as the served fusion z-scores them: with the mean and
    standard deviation of the query's top ``top_k`` (:func:`rag_rerank.retrieval.fusion.interpolate_scores`). A
    document missing from ``ranking`` gets the lowest value of the ranking (it ranks at best last).

    Example:
        >>> prior_scores({"a": 3.0, "b": 1.0}, ["a", "b", "x"])
        [1.0, -1.0, -1.0]
    """
    import numpy as np

    from rag_rerank.types import ranked

    top = [s for _, s in ranked(dict(ranking), top_k)]
    if not top:
        return [0.0] * len(doc_ids)
    mean, std = float(np.mean(top)), float(np.std(top))
    z = {d: (float(s) - mean) / std if std > 0 else 0.0 for d, s in ranking.items()}
    floor = min(z.values())
    return [z.get(d, floor) for d in doc_ids]


def add_prior_scores(rows: list[dict[str, Any]], run: Mapping[str, Mapping[str, float]], top_k: int = 20) -> int:
    """Add ``prior``: the first stage's z-scored scores of ``[positive, *negatives]`` (:func:`prior_scores`), to
    each row in place, for residual training (``RerankerTrainingConfig.prior_weight``).

    ``run`` is the first stage's run of the rows' questions (deeper than ``top_k``, as mining retrieves). Rows
    without ids are left as they are. Returns the number of rows scored.

    Example:
        >>> rows = [{"query_id": "q", "positive_id": "a", "negative_ids": ["b"]}]
        >>> add_prior_scores(rows, {"q": {"a": 3.0, "b": 1.0}}), rows[0]["prior"]
        (1, [1.0, -1.0])
    """
    n = 0
    for r in rows:
        if {"query_id", "positive_id", "negative_ids"} <= r.keys():
            r["prior"] = prior_scores(run.get(r["query_id"], {}), [r["positive_id"], *r["negative_ids"]], top_k)
            n += 1
    return n


def fit_prior_weight(rows: list[dict[str, Any]], grid: tuple[float, ...] = tuple(0.25 * i for i in range(1, 41))
                     ) -> float:
    """The weight ``w`` of ``grid`` at which ``softmax(w * prior)`` best explains the training groups (lowest mean
    listwise loss, positive first): how far the first stage alone is to be trusted, fitted without labels beyond
    the synthetic ones. Rows are cut to the shortest row's candidates.

    Raises:
        DataError: when no row has ``prior`` scores.

    Example:
        >>> fit_prior_weight([{"prior": [1.0, -1.0]}, {"prior": [-1.0, 1.0]}])
        0.25
    """
    import numpy as np

    priors = [r["prior"] for r in rows if len(r.get("prior") or []) > 1]
    if not priors:
        raise DataError("no training group has prior scores; add them with add_prior_scores")
    width = min(len(p) for p in priors)
    z = np.asarray([p[:width] for p in priors], dtype=np.float64)

    def loss(w: float) -> float:
        logits = w * z
        top = logits.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0] - logits[:, 0]))

    best = min(grid, key=lambda w: (loss(w), w))
    logger.info("prior weight %.2f: the first stage alone explains %d training groups at listwise loss %.3f "
                "(uniform %.3f)", best, len(z), loss(best), float(np.log(width)))
    return float(best)
