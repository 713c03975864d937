"""A bounded, thread-safe LRU cache of reranker scores, keyed by (model settings, query, document hash).

Used by :class:`rag_rerank.rerank.Reranker` (and so by the LlamaIndex postprocessor): a node that comes
back for the same query is not scored twice. Keys hash the document text with sha256, so the cache never
holds passages.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class CacheInfo:
    """Score-cache counters, like ``functools.lru_cache``'s ``cache_info()``."""

    hits: int
    misses: int
    size: int
    maxsize: int


class ScoreCache:
    """A thread-safe bounded LRU mapping ``key -> score``."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str, str]) -> float | None:
        if self.maxsize <= 0:
            return None
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple[str, str, str], value: float) -> None:
        if self.maxsize <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0

    def info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self.hits, self.misses, len(self._data), self.maxsize)


def doc_hash(text: str) -> str:
    """sha256 hex digest of a document text (the cache key's document part)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
