"""Query style from examples: the user's own queries steer the prompt and the filters (Promptagator's few-shot idea).

A user whose system receives claims, keyword queries or whole arguments gives 5-50 example queries, with no
labels (``--query-examples FILE``: one query per line in a ``.txt`` file, or ``{"text": ...}`` / ``{"query": ...}``
rows in a ``.jsonl`` file). Then:

- the prompt shows a few of them (:data:`PROMPT_EXAMPLES`, each cut to :data:`EXAMPLE_WORDS` words) in place of the
  built-in question examples, and asks for queries *in that style* (:mod:`rag_rerank.generate.prompts`);
- the filters judge by style, not by WH-words (:meth:`QueryStyle.filter_config`): a query need not be a question;
  its length must fall within bounds taken from the examples; it is dropped when it is generic (it talks about "the
  passage"), a copy of its chunk (a shared run of words longer than a share of the query) or of an example, off topic
  (too few content words of the chunk), or repetitive (a small LLM's loops);
- answers get room for queries as long as the examples (:meth:`QueryStyle.max_tokens`).

Without examples nothing changes: WH-questions, the built-in examples and the question filters.

Example:
    >>> style = QueryStyle(("vaccines should be mandatory for school children",) * 5)
    >>> style.filter_config().require_question
    False
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from rag_rerank.errors import ConfigError
from rag_rerank.generate.questions import FilterConfig
from rag_rerank.types import content_id

__all__ = ["EXAMPLE_WORDS", "MAX_EXAMPLES", "MIN_EXAMPLES", "PROMPT_EXAMPLES", "QueryStyle", "load_query_examples"]

MIN_EXAMPLES, MAX_EXAMPLES = 5, 50
PROMPT_EXAMPLES = 3  # examples shown in each prompt (a 135M model copies long prompts; more cost prompt time)
# each shown example is cut to this many words (ArguAna's arguments average about 190): the reranker reads only
# half its max_length of a query (about 70 words at 192 tokens), and every word the LLM writes costs time
EXAMPLE_WORDS = 60
_TOKENS_PER_WORD = 1.4


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


@dataclass(frozen=True)
class QueryStyle:
    """Example queries that set the style of the synthetic ones.

    Attributes:
        examples: the example queries, whitespace-normalised, in file order.
        source: where they came from (a file path, or ``"python"``), for the manifest.
    """

    examples: tuple[str, ...]
    source: str = "python"

    def __post_init__(self) -> None:
        if not MIN_EXAMPLES <= len(self.examples) <= MAX_EXAMPLES:
            raise ConfigError(
                f"{self.source}: {len(self.examples)} example queries; give {MIN_EXAMPLES}-{MAX_EXAMPLES} queries of "
                "the kind your system receives, one per line"
            )

    @property
    def fingerprint(self) -> str:
        """A short hash of the examples (part of the generation cache key)."""
        return content_id(*self.examples, length=16)

    def prompt_examples(self) -> list[str]:
        """The examples shown in the prompt: the first :data:`PROMPT_EXAMPLES`, each cut to :data:`EXAMPLE_WORDS`."""
        shown = []
        for text in self.examples[:PROMPT_EXAMPLES]:
            words = text.split()
            shown.append(" ".join(words[:EXAMPLE_WORDS]) + (" ..." if len(words) > EXAMPLE_WORDS else ""))
        return shown

    def word_bounds(self) -> tuple[int, int]:
        """``(min_words, max_words)`` a generated query may have: half the shortest example, 1.5x the longest.

        The lower bound counts each example as the LLM sees it, cut to :data:`EXAMPLE_WORDS` words: with ArguAna's
        arguments (100-300 words) it was 52 words, above the 60-word examples the prompt shows, and 2,017 of
        2,411 candidates of the embedded SmolLM2 were dropped as too short (``pipelines/style_yield.py``).
        """
        lengths = [len(_words(e)) for e in self.examples]
        low = max(2, math.floor(0.5 * min(min(lengths), EXAMPLE_WORDS)))
        high = max(low + 4, math.ceil(1.5 * min(max(lengths), EXAMPLE_WORDS * 2)))
        return low, high

    def filter_config(self, base: FilterConfig | None = None) -> FilterConfig:
        """The style filters: no WH-word needed, length bounds from the examples, a relative copy check."""
        low, high = self.word_bounds()
        b = base or FilterConfig()
        return FilterConfig(
            min_words=low, max_words=high, max_chars=high * 12, max_verbatim_words=b.max_verbatim_words,
            min_content_overlap=b.min_content_overlap, require_question=False, max_verbatim_share=0.4,
            min_content_share=0.25, avoid=tuple(self.prompt_examples()), max_ngram_repeats=2,
        )

    def max_tokens(self, n: int) -> int:
        """Completion tokens for ``n`` queries as long as the shown examples, plus slack."""
        shown = [len(e.split()) for e in self.prompt_examples()]
        per_query = math.ceil(_TOKENS_PER_WORD * max(shown)) + 8
        return max(40 * n + 40, n * per_query + 40)


def load_query_examples(path: str | os.PathLike) -> QueryStyle:
    """Read 5-50 example queries: a ``.txt`` file (one per line) or ``.jsonl`` (``text`` or ``query`` per row).

    Blank lines and exact duplicates are skipped.

    Raises:
        ConfigError: a missing or unreadable file, a bad row, or fewer than 5 / more than 50 queries, naming the file.

    Example:
        >>> style = load_query_examples("my_queries.txt")  # doctest: +SKIP
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--query-examples {p}: no such file; give a .txt file with one example query per line")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--query-examples {p}: cannot read it as UTF-8 text ({e})") from e
    texts: list[str] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            try:
                row = json.loads(line)
                text = row.get("text") or row.get("query") if isinstance(row, dict) else None
            except json.JSONDecodeError:
                text = None
            if not isinstance(text, str):
                raise ConfigError(f"--query-examples {p}:{i}: each line must be a JSON object with a 'text' string")
        else:
            text = line
        text = " ".join(text.split())
        if text and text not in texts:
            texts.append(text)
    return QueryStyle(tuple(texts), source=str(p))
