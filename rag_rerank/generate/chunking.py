"""Chunking: pack whole sentences into chunks of at most N tokens of the reranker's tokenizer.

Chunking packs whole sentences (and paragraphs) greedily up to ``chunk_tokens`` tokens of the
reranker's tokenizer, counted without special tokens; a sentence longer than the limit is cut at
token boundaries. Every chunk is re-encoded and checked, so no chunk ever exceeds the limit.

Example:
    >>> chunks, report = load_chunks("sample_docs", chunk_tokens=256)  # doctest: +SKIP
    >>> chunks[0].doc_id, chunks[0].position, chunks[0].metadata["n_tokens"] <= 256  # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

from rag_rerank.errors import ConfigError, DataError
from rag_rerank.generate.documents import Document, LoadReport, load_documents
from rag_rerank.types import Chunk, content_id

logger = logging.getLogger(__name__)

DEFAULT_TOKENIZER = "embedded:minilm-ce"
DEFAULT_CHUNK_TOKENS = 256

_UNIT_BREAK = re.compile(r"\n\s*\n|\n(?=\s*(?:#|[-*+] |\d+[.)] ))|(?<=[.!?…])[\"')\]]*\s+")


def _units(text: str) -> list[tuple[int, int]]:
    """Sentence/paragraph spans ``(start, end)`` of ``text``, trimmed of surrounding whitespace."""
    spans, pos = [], 0
    for m in _UNIT_BREAK.finditer(text):
        spans.append((pos, m.start()))
        pos = m.end()
    spans.append((pos, len(text)))
    out = []
    for s, e in spans:
        seg = text[s:e]
        stripped = seg.strip()
        if stripped:
            s2 = s + (len(seg) - len(seg.lstrip()))
            out.append((s2, s2 + len(stripped)))
    return out


class _Counter:
    """Token counts of text spans from one offset-mapped encoding of the whole text."""

    def __init__(self, tokenizer: Any, text: str) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                f"chunking needs a fast (Rust) tokenizer with offsets; {type(tokenizer).__name__} is not "
                "one. "
                "Use a model with a tokenizer.json (e.g. embedded:minilm-ce)"
            )
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offs = [(s, e) for s, e in enc["offset_mapping"] if e > s]
        self.starts = [s for s, _ in offs]
        self.ends = [e for _, e in offs]

    def index(self, char: int) -> int:
        """Index of the first token starting at or after ``char``."""
        return bisect.bisect_left(self.starts, char)

    def count(self, s: int, e: int) -> int:
        return bisect.bisect_left(self.starts, e) - bisect.bisect_left(self.starts, s)


def _n_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def chunk_text(
    text: str, tokenizer: Any, chunk_tokens: int = DEFAULT_CHUNK_TOKENS, chunk_overlap: int = 0
) -> list[tuple[int, int, int]]:
    """Split ``text`` into ``(start_char, end_char, n_tokens)`` spans of at most ``chunk_tokens`` tokens.

    Sentences are packed whole; one longer than the limit is cut at token boundaries. Consecutive
    chunks share up to ``chunk_overlap`` tokens of whole sentences. Tokens are counted without
    special tokens, and each span is re-encoded to guarantee the limit.

    Example:
        >>> tok = load_chunk_tokenizer()  # doctest: +SKIP
        >>> chunk_text("One. Two. Three.", tok, chunk_tokens=4)  # doctest: +SKIP
        [(0, 9, 4), (10, 16, 2)]
    """
    if chunk_tokens < 8:
        raise ConfigError(f"chunk_tokens={chunk_tokens} is too small; use at least 8 (default 256)")
    if not 0 <= chunk_overlap < chunk_tokens // 2:
        raise ConfigError(
            f"chunk_overlap={chunk_overlap} must be >= 0 and < chunk_tokens/2 ({chunk_tokens // 2})"
        )
    counter = _Counter(tokenizer, text)
    units: list[tuple[int, int]] = []
    for s, e in _units(text):  # cut over-long sentences at token boundaries
        i, j = counter.index(s), counter.index(e)
        while j - i > chunk_tokens:
            cut = counter.ends[i + chunk_tokens - 1]
            units.append((s, cut))
            i += chunk_tokens
            s = counter.starts[i]
        if j > i:
            units.append((s, e))
    chunks: list[tuple[int, int, int]] = []
    k = 0
    while k < len(units):
        first, end_k = k, k
        while end_k + 1 < len(units) and counter.count(units[first][0], units[end_k + 1][1]) <= chunk_tokens:
            end_k += 1
        s, e = units[first][0], units[end_k][1]
        n = _n_tokens(tokenizer, text[s:e])
        while n > chunk_tokens:  # tokenisation in context differed: shrink until it fits
            if end_k > first:
                end_k -= 1
                e = units[end_k][1]
            else:
                i = counter.index(s)
                keep = max(1, min(chunk_tokens - (n - chunk_tokens), len(counter.ends) - i - 1))
                e, rest = counter.ends[i + keep - 1], counter.starts[i + keep]
                units[first:first + 1] = [(s, e), (rest, units[first][1])]
            n = _n_tokens(tokenizer, text[s:e])
        chunks.append((s, e, n))
        nxt = end_k + 1
        if chunk_overlap and nxt < len(units):
            b = end_k
            while b > first and counter.count(units[b][0], e) <= chunk_overlap:
                b -= 1
            if b < end_k and counter.count(units[b + 1][0], units[nxt][1]) <= chunk_tokens:
                nxt = b + 1
        k = nxt
    return chunks


def load_chunk_tokenizer(name: str = DEFAULT_TOKENIZER) -> Any:
    """The tokenizer that counts chunk tokens (the reranker's), via ``models.load_tokenizer``."""
    from rag_rerank.models import load_tokenizer

    return load_tokenizer(name)


def chunk_documents(
    documents: Sequence[Document],
    *,
    tokenizer: str | Any = DEFAULT_TOKENIZER,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    chunk_overlap: int = 0,
    show_progress_bar: bool | None = None,
) -> list[Chunk]:
    """Chunk documents; ids are content hashes of ``(doc_id, text)``, so reruns give the same ids.

    Each chunk's ``metadata`` holds ``n_tokens``. A chunk repeated verbatim inside one document
    (boilerplate) is kept once.

    Example:
        >>> docs, _ = load_documents("sample_docs")  # doctest: +SKIP
        >>> chunks = chunk_documents(docs, chunk_tokens=256)  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    tok = load_chunk_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    out: list[Chunk] = []
    seen: set[str] = set()
    disable = len(documents) < 50 if show_progress_bar is None else not show_progress_bar
    for doc in tqdm(documents, desc="chunking", unit="doc", disable=disable):
        position = 0
        for s, e, n in chunk_text(doc.text, tok, chunk_tokens, chunk_overlap):
            body = doc.text[s:e]
            cid = content_id(doc.doc_id, body, prefix="c")
            if cid in seen:
                continue
            seen.add(cid)
            out.append(
                Chunk(id=cid, text=body, doc_id=doc.doc_id, source=doc.source, title=doc.title,
                      position=position, start_char=s, metadata={"n_tokens": n})
            )
            position += 1
    return out


def load_chunks(
    docs_dir: str | os.PathLike,
    *,
    tokenizer: str | Any = DEFAULT_TOKENIZER,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    chunk_overlap: int = 0,
    show_progress_bar: bool | None = None,
) -> tuple[list[Chunk], LoadReport]:
    """Load a folder and chunk it: :func:`load_documents` then :func:`chunk_documents`.

    Example:
        >>> chunks, report = load_chunks("sample_docs")  # doctest: +SKIP
    """
    docs, report = load_documents(docs_dir)
    chunks = chunk_documents(
        docs, tokenizer=tokenizer, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap,
        show_progress_bar=show_progress_bar,
    )
    if not chunks:
        raise DataError(f"{docs_dir}: the documents produced no chunks (no tokens); check their content")
    return chunks, report
