"""Input checks of :class:`rag_rerank.rerank.Reranker`: settings that must be positive integers, and the pairs."""

from __future__ import annotations

from collections.abc import Sequence

from rag_rerank.errors import ConfigError

__all__ = ["check_pairs", "check_positive"]


def check_positive(name: str, value: int) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a positive integer (``True`` is not one)."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive integer")


def check_pairs(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs as a list of ``(query, document)`` string tuples, or an error naming the first bad one."""
    if isinstance(pairs, (str, bytes)):
        raise TypeError("pairs must be a sequence of (query, document) tuples, not a string")
    checked = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or len(pair) != 2:
            raise ConfigError(f"pairs[{i}] must be a (query, document) pair, got {pair!r:.80}")
        q, d = pair
        if not isinstance(q, str) or not isinstance(d, str):
            raise TypeError(f"pairs[{i}] must hold two strings, got ({type(q).__name__}, {type(d).__name__})")
        checked.append((q, d))
    return checked
