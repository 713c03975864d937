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
    r"^\s*(?:[-*•·>#]+\s*)?(?:\*\*)?(?:\(?\d{1,2}[.):]\s*|\[\d{1,2}\]\s*|\(?[a-e][.)]\s+)?(?:\*\*)?"
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
# style mode only (no WH-word to lean on): a real search query never talks about "the passage"
STYLE_GENERIC = re.compile(r"\b(?:this|the|above|following)\s+(?:passage|text|article|excerpt|paragraph)s?\b",
                           re.IGNORECASE)
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
        require_question: the text must read as a question (a WH-word, an auxiliary verb first, or ``?``); style
            mode (:mod:`rag_rerank.generate.style`) turns it off, so claims, keyword queries and arguments pass.
        max_verbatim_share: when set, a shared run of words may also be up to this share of the query's words
            (long queries quote more; a query that is mostly a copy of its chunk is still dropped).
        min_content_share: the share of the query's content words that must come from the chunk (long queries).
        avoid: texts a query must not copy (the prompt's examples): a shared run of words longer than half of the
            shorter of the two drops it as ``copies_example``.
        max_ngram_repeats: when set, a query in which some run of 3 words occurs more often than this is dropped
            as ``repetitive`` (a small LLM's loops: "It was a game of ... It was a game of ...").
    """

    min_words: int = 4
    max_words: int = 40
    max_chars: int = 300
    max_verbatim_words: int = 9
    min_content_overlap: int = 2
    require_question: bool = True
    max_verbatim_share: float | None = None
    min_content_share: float = 0.0
    avoid: tuple[str, ...] = ()
    max_ngram_repeats: int | None = None

    def verbatim_limit(self, n_words: int) -> int:
        """The longest run of words a query of ``n_words`` words may share with its chunk."""
        share = int(self.max_verbatim_share * n_words) if self.max_verbatim_share else 0
        return max(self.max_verbatim_words, share)


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


def parse_questions(text: str, *, by_line: bool = False) -> list[str]:
    """Extract candidate questions from an LLM answer, in order (not yet filtered or deduplicated).

    Numbering, bullets, labels, quotes, preambles, answer lines and trailing answers on the same
    line ("What is X? X is ...") are removed; several questions on one line are split. With ``by_line`` (style
    mode: claims, arguments) each line is one query, whatever its punctuation.

    Example:
        >>> parse_questions('Question 1: "Who built it?" 2. Why did it fall? It fell.')
        ['Who built it?', 'Why did it fall?']
        >>> parse_questions("1. Zoos protect species. Why close them?", by_line=True)
        ['Zoos protect species. Why close them?']
    """
    out: list[str] = []
    for raw in text.replace("\r", "\n").split("\n"):
        line = raw.strip()
        if not line or _ANSWER_LINE.match(line):
            continue
        if _PREAMBLE.match(line) and (line.endswith(":") or "question" in line.lower() or "quer" in line.lower()):
            continue
        if by_line:
            q = _clean(line)
            if q:
                out.append(q)
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


def reads_as_question(text: str) -> bool:
    """Whether ``text`` reads as a question: it ends with ``?``, or starts with a WH-word or an auxiliary verb.

    The question filter keeps only such texts (without query examples), and the query guard
    (:mod:`rag_rerank.rerank.fusion`) serves a query that fails it by the first stage alone when the reranker was
    trained and validated on questions only.

    Example:
        >>> reads_as_question("who founded Rome"), reads_as_question("Rome was founded by twins.")
        (True, False)
    """
    q = " ".join(text.split())
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


def _max_trigram_count(words: Sequence[str]) -> int:
    grams = Counter(tuple(words[i:i + 3]) for i in range(len(words) - 2))
    return max(grams.values(), default=0)


def _latin_ratio(text: str) -> float:
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 1.0
    return sum(1 for ch in letters if ord(ch) < 0x250) / len(letters)


def question_problem(question: str, chunk_text: str, config: FilterConfig | None = None) -> str | None:
    """The reason to drop ``question`` for ``chunk_text``, or ``None`` to keep it.

    Reasons: ``not_a_question``, ``too_short``, ``too_long``, ``generic``, ``wrong_language``,
    ``off_topic`` (too few content words of the chunk), ``verbatim_span`` (copies the chunk), ``copies_example``,
    ``repetitive``.

    Example:
        >>> question_problem("What is the main idea of the passage?", "Rome was founded in 753 BC.")
        'generic'
    """
    cfg = config or FilterConfig()
    words = _words(question)
    if cfg.require_question and not reads_as_question(question):
        return "not_a_question"
    if _latin_ratio(chunk_text) > 0.9 and _latin_ratio(question) < 0.6:
        return "wrong_language"
    if len(words) < cfg.min_words:
        return "too_short"
    if len(words) > cfg.max_words or len(question) > cfg.max_chars:
        return "too_long"
    if cfg.max_ngram_repeats is not None and _max_trigram_count(words) > cfg.max_ngram_repeats:
        return "repetitive"
    if any(p.search(question) for p in GENERIC_PATTERNS):
        return "generic"
    if not cfg.require_question and STYLE_GENERIC.search(question):
        return "generic"
    chunk_words = _words(chunk_text)
    content = {w for w in words if w not in _STOP and len(w) > 2}
    shared = len(content & set(chunk_words))
    if shared < cfg.min_content_overlap or shared < cfg.min_content_share * len(content):
        return "off_topic"
    limit = cfg.verbatim_limit(len(words))
    if _longest_common_run(words, chunk_words) > limit:
        return "verbatim_span"
    for example in map(_words, cfg.avoid):  # more than half of the shorter one is a shared run: a copy
        if _longest_common_run(words, example) > max(3, min(len(words), len(example)) // 2):
            return "copies_example"
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
