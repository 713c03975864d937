"""Token budgets of a pair: long queries are cut, long documents are scored in windows, within ``max_length``.

The query budget (the policy for long queries, e.g. whole arguments as queries): a query keeps at most
``max_query_tokens`` tokens, half of ``max_length`` by default, cut at a token boundary of the reranker's tokenizer.
Training (:func:`rag_rerank.train.reranker_trainer.train_reranker`), evaluation and serving
(:class:`rag_rerank.rerank.Reranker`) apply the same cut, so the model never sees a longer query served than it
was trained on, and a document always keeps at least half the pair. The first stage keeps whole queries for BM25;
the bi-encoder cuts at its own ``max_seq_length`` (256 word pieces for MiniLM).

A pair longer than ``max_length`` tokens is scored as the maximum over windows of the document
(``Reranker(long_documents="window")``): each window starts on a word boundary, windows are ``window_stride``
tokens apart (half a window by default), and every window is re-tokenised with the query to check it fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MIN_WINDOW_TOKENS = 16  # below this many document tokens per window, windowing is pointless: truncate


def query_budget(max_length: int, max_query_tokens: int | None = None) -> int:
    """The tokens a query keeps: ``max_query_tokens``, by default half of ``max_length``.

    Example:
        >>> query_budget(256)
        128
    """
    return max_query_tokens or max(1, max_length // 2)


def truncate_query(tok: Any, query: str, max_tokens: int) -> str:
    """``query`` cut to its first ``max_tokens`` tokens (the text up to the end of the last kept token)."""
    enc = tok(query, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = enc["offset_mapping"]
    if len(offsets) <= max_tokens:
        return query
    return query[: offsets[max_tokens - 1][1]]


def pair_lengths(tok: Any, pairs: Sequence[tuple[str, str]]) -> list[int]:
    """Tokens of each ``(query, document)`` pair with special tokens, untruncated."""
    if not pairs:
        return []
    enc = tok([q for q, _ in pairs], [d for _, d in pairs], add_special_tokens=True, truncation=False, verbose=False)
    return [len(ids) for ids in enc["input_ids"]]


def make_windows(tok: Any, max_length: int, query: str, document: str, window_stride: int | None = None
                 ) -> list[str] | None:
    """Overlapping document slices that fit next to ``query``; None when the query is too long."""
    q_len = len(tok(query, add_special_tokens=False, verbose=False)["input_ids"])
    budget = max_length - tok.num_special_tokens_to_add(pair=True) - q_len
    if budget < MIN_WINDOW_TOKENS:
        return None
    enc = tok(document, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = enc["offset_mapping"]
    word_ids = enc.word_ids()
    n = len(offsets)
    stride = min(window_stride or max(1, budget // 2), budget)
    starts = list(range(0, max(n - budget, 0) + 1, stride))
    if starts[-1] + budget < n:
        starts.append(n - budget)
    spans = []
    for s in starts:
        while s > 0 and word_ids[s] is not None and word_ids[s] == word_ids[s - 1]:
            s -= 1  # start on a word boundary, so no window begins with a '##' piece
        spans.append((s, min(s + budget, n)))
    texts = [document[offsets[s][0] : offsets[e - 1][1]] for s, e in spans]
    # re-tokenised slices can differ by a token or two at the edges: shrink until each one fits
    lengths = pair_lengths(tok, [(query, t) for t in texts])
    for j, (s, e) in enumerate(spans):
        while lengths[j] > max_length and e - s > 1:
            e -= 1
            texts[j] = document[offsets[s][0] : offsets[e - 1][1]]
            lengths[j] = pair_lengths(tok, [(query, texts[j])])[0]
    return list(dict.fromkeys(texts))  # drop duplicate windows, keep order
