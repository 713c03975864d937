"""Parse an LLM's answer into questions, and keep only real, specific ones.

Small LLMs wrap questions in numbering, "Question 1:" labels, quotes, preambles ("Here are two
questions:"), answers and commentary, and they copy few-shot examples or ask generic questions
that would fit any passage. :func:`parse_questions` extracts candidate questions defensively;
:func:`filter_questions` keeps the good ones and counts every drop by reason.

Example:
    >>> parse_questions("Here are 2 questions:\\n1. What is X?\\nAnswer: Y\\n2) Who made Z?")
    ['What is X?', 'Who made Z?']
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

WH_WORDS = (
    "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "in what", "in which", "to what",
    "on what", "at what", "for what", "from what", "by what", "during which", "name", "list",
)
_AUX = ("is", "are", "was", "were", "do", "does", "did", "can", "could", "has", "have", "had", "will", "would",
        "should", "may", "might")

# leading numbering, bullets and labels: "1.", "2)", "-", "*", "Q1:", "Question 2:", "**Question:**"
_LABEL = re.compile(
    r"^\s*(?:[-*•·>#]+\s*)?(?:\*\*)?(?:\(?\d{1,2}[.):]\s*|\(?[a-e][.)]\s+)?(?:\*\*)?"
    r"(?:(?:q|question|query)\s*\d{0,2}\s*[:.)-]\s*)?(?:\*\*)?\s*",
    re.IGNORECASE,
)
_ANSWER_LINE = re.compile(r"^\s*(?:[-*]\s*)?(?:\*\*)?(?:a|answer|ans|response|explanation|options?)\s*\d*\s*[:.)]",
                          re.IGNORECASE)
_PREAMBLE = re.compile(
    r"^\s*(?:sure|okay|ok|certainly|of course|here (?:are|is)|below (?:are|is)|the following|questions?\s*:?\s*$)",
    re.IGNORECASE,
)
_REFERS_TO_TEXT = re.compile(
    r"^(?:according to|based on|in|from)\s+(?:the|this)\s+(?:passage|text|article|document|paragraph|excerpt)"
    r"\s*,\s*",
    re.IGNORECASE,
)
GENERIC_PATTERNS = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\b(?:main|central|key|primary|overall)\s+(?:idea|topic|point|theme|message|argument|focus|purpose)",
        r"\bwhat\s+(?:is|was)\s+(?:this|the)\s+(?:passage|text|article|document|paragraph|excerpt|section)\s+about",
        r"\b(?:passage|text|article|document|paragraph|excerpt|author)\s+(?:say|says|said|discuss|describe|mention"
        r"|suggest|argue|explain)",
        r"\bsummar(?:y|ise|ize)\b",
        r"\bwhat\s+can\s+(?:we|you|one)\s+(?:learn|infer|conclude)",
        r"\b(?:edit|rewrite|improve)\b.*\b(?:passage|text)\b",
        r"\bpurpose\s+of\s+(?:this|the)\s+(?:passage|text|article)",
        r"\btitle\s+of\s+(?:this|the)\s+(?:passage|text|article)",
    )
)
_STOP = frozenset(
    "the a an of in on at to for from by with and or but is are was were be been being this that these those it its "
    "what which who whom whose when where why how did does do has have had can could would should will may might "
    "about into over after before during than then there their they them his her he she as not no yes also many much "
    "most more some any all one two three first second other such".split()
)


@dataclass(frozen=True)
class FilterConfig:
    """Bounds for :func:`filter_questions`.

    Attributes:
        min_words / max_words / max_chars: length bounds.
        max_verbatim_words: drop a question that copies a run of more than this many consecutive
            words of the chunk (it paraphrases nothing; a reranker learns string matching).
        min_content_overlap: the question must share at least this many content words with the
            chunk (it is about this chunk, not a few-shot example or a hallucination).
    """

    min_words: int = 4
    max_words: int = 40
    max_chars: int = 300
    max_verbatim_words: int = 9
    min_content_overlap: int = 2


def normalize_question(text: str) -> str:
    """Case-, accent-, punctuation- and space-insensitive key for near-duplicate detection.

    Example:
        >>> normalize_question("  What is  the CAPITAL of France ?")
        'what is the capital of france'
    """
    t = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode() or text
    t = re.sub(r"[^\w\s]", " ", t.lower())
    return " ".join(t.split())


def _clean(line: str) -> str:
    q = _LABEL.sub("", line, count=1).strip()
    q = q.replace("**", "").strip()
    q = q.strip("\"'“”‘’`").strip()
    q = _REFERS_TO_TEXT.sub("", q)
    if q and q[0].islower():
        q = q[0].upper() + q[1:]
    return " ".join(q.split())


def parse_questions(text: str) -> list[str]:
    """Extract candidate questions from an LLM answer, in order (not yet filtered or deduplicated).

    Numbering, bullets, labels, quotes, preambles, answer lines and trailing answers on the same
    line ("What is X? X is ...") are removed; several questions on one line are split.

    Example:
        >>> parse_questions('Question 1: "Who built it?" 2. Why did it fall? It fell.')
        ['Who built it?', 'Why did it fall?']
    """
    out: list[str] = []
    for raw in text.replace("\r", "\n").split("\n"):
        line = raw.strip()
        if not line or _ANSWER_LINE.match(line):
            continue
        if _PREAMBLE.match(line) and (line.endswith(":") or "question" in line.lower()):
            continue
        line = re.split(r"\s(?:answer|ans)\s*[:.]\s", line, maxsplit=1, flags=re.IGNORECASE)[0]
        pieces = re.findall(r"[^?]*\?", line)
        for piece in pieces or [line]:  # text after the last '?' is commentary or an answer
            # "... 2. When?" -> split inline numbering
            for sub in re.split(r"\s(?=\(?\d{1,2}[.)]\s)", piece):
                q = _clean(sub)
                if q:
                    out.append(q)
    return out


def _is_question(q: str) -> bool:
    low = q.lower()
    if q.endswith("?"):
        return True
    return low.startswith(WH_WORDS) or low.split(" ", 1)[0] in _AUX


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _longest_common_run(q: Sequence[str], c: Sequence[str]) -> int:
    """Length of the longest run of consecutive words shared by ``q`` and ``c`` (n-gram lookup)."""
    best, grams = 0, {}
    for n in range(1, len(q) + 1):
        grams = {tuple(c[i:i + n]) for i in range(len(c) - n + 1)}
        if not any(tuple(q[i:i + n]) in grams for i in range(len(q) - n + 1)):
            break
        best = n
    return best


def _latin_ratio(text: str) -> float:
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 1.0
    return sum(1 for ch in letters if ord(ch) < 0x250) / len(letters)


def question_problem(question: str, chunk_text: str, config: FilterConfig | None = None) -> str | None:
    """The reason to drop ``question`` for ``chunk_text``, or ``None`` to keep it.

    Reasons: ``not_a_question``, ``too_short``, ``too_long``, ``generic``, ``wrong_language``,
    ``off_topic`` (no content word of the chunk), ``verbatim_span``.

    Example:
        >>> question_problem("What is the main idea of the passage?", "Rome was founded in 753 BC.")
        'generic'
    """
    cfg = config or FilterConfig()
    words = _words(question)
    if not _is_question(question):
        return "not_a_question"
    if _latin_ratio(chunk_text) > 0.9 and _latin_ratio(question) < 0.6:
        return "wrong_language"
    if len(words) < cfg.min_words:
        return "too_short"
    if len(words) > cfg.max_words or len(question) > cfg.max_chars:
        return "too_long"
    if any(p.search(question) for p in GENERIC_PATTERNS):
        return "generic"
    chunk_words = _words(chunk_text)
    content = {w for w in words if w not in _STOP and len(w) > 2}
    if len(content & set(chunk_words)) < cfg.min_content_overlap:
        return "off_topic"
    if _longest_common_run(words, chunk_words) > cfg.max_verbatim_words:
        return "verbatim_span"
    return None


def filter_questions(
    questions: Iterable[str],
    chunk_text: str,
    *,
    limit: int | None = None,
    config: FilterConfig | None = None,
    seen: set[str] | None = None,
) -> tuple[list[str], Counter[str]]:
    """Keep real, specific, distinct questions; count the others by reason.

    Args:
        questions: candidates from :func:`parse_questions`.
        chunk_text: the chunk they were written from.
        limit: keep at most this many (the rest count as ``over_limit``).
        config: length and overlap bounds.
        seen: normalised questions already kept elsewhere (dataset-wide exact dedupe); updated
            only with this call's kept questions when given (a new set is used otherwise).

    Returns:
        ``(kept, dropped_by_reason)``; duplicates within the chunk count as ``duplicate``, those
        already in ``seen`` as ``duplicate_across``.

    Example:
        >>> filter_questions(["Who founded the city of Rome?", "who founded the city of rome"], "Romulus founded Rome.")
        (['Who founded the city of Rome?'], Counter({'duplicate': 1}))
    """
    cfg = config or FilterConfig()
    global_seen = seen if seen is not None else set()
    local: set[str] = set()
    kept: list[str] = []
    dropped: Counter[str] = Counter()
    for q in questions:
        reason = question_problem(q, chunk_text, cfg)
        key = normalize_question(q)
        if reason is None and key in local:
            reason = "duplicate"
        elif reason is None and key in global_seen:
            reason = "duplicate_across"
        elif reason is None and limit is not None and len(kept) >= limit:
            reason = "over_limit"
        if reason:
            dropped[reason] += 1
            continue
        local.add(key)
        kept.append(q)
    global_seen.update(local)
    return kept, dropped
