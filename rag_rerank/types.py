"""The data contract shared by every stage (BEIR-shaped).

- ``Corpus``: ``{doc_id: {"title": str, "text": str}}``
- ``Queries``: ``{query_id: text}``
- ``Qrels``: ``{query_id: {doc_id: relevance}}``
- ``Run``: ``{query_id: {doc_id: score}}``; rankings always sort by ``(-score, doc_id)``.

Ids are strings derived from content hashes, so a rerun gives the same ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

Corpus = dict[str, dict[str, str]]
Queries = dict[str, str]
Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def content_id(*parts: str, prefix: str = "", length: int = 16) -> str:
    """A stable id from text content (sha256, hex, truncated).

    Example:
        >>> content_id("hello", prefix="c")
        'c59f0b2b1911b8022'
    """
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x1f")
    return prefix + h.hexdigest()[:length]


def ranked(scores: dict[str, float], top_k: int | None = None) -> list[tuple[str, float]]:
    """Sort ``{doc_id: score}`` by ``(-score, doc_id)``: deterministic tie-breaks everywhere."""
    items = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return items if top_k is None else items[:top_k]


@dataclass(frozen=True)
class Chunk:
    """A piece of a document, at most N tokens of the reranker's tokenizer.

    Attributes:
        id: content hash of (doc_id, text); stable across runs.
        text: the chunk text.
        doc_id: id of the source document (hash of its relative path).
        source: the source file path, relative to the documents folder.
        title: document title.
        position: index of the chunk within its document (0-based).
        start_char: offset of the chunk in the document text, or -1 when unknown.
    """

    id: str
    text: str
    doc_id: str
    source: str
    title: str = ""
    position: int = 0
    start_char: int = -1
    metadata: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class QAExample:
    """One synthetic question and the chunk it was written from."""

    query_id: str
    question: str
    chunk_id: str
    doc_id: str
    split: str = "train"
