"""Documents: load a folder (.txt, .md, .html, .pdf) and chunk it to N tokens of a named tokenizer.

Loading is recursive, skips hidden files and folders, never follows symlinked folders (no loops),
and never stops on one bad file: binary content, 0-byte files, unreadable or oversized files are
skipped with a warning and counted in :class:`LoadReport`; text that is not UTF-8 is decoded as
Latin-1 (logged). Files without a supported extension are counted and logged once.

Chunking packs whole sentences (and paragraphs) greedily up to ``chunk_tokens`` tokens of the
reranker's tokenizer, counted without special tokens; a sentence longer than the limit is cut at
token boundaries. Every chunk is re-encoded and checked, so no chunk ever exceeds the limit.

Example:
    >>> chunks, report = load_chunks("sample_docs", chunk_tokens=256)  # doctest: +SKIP
    >>> chunks[0].doc_id, chunks[0].position, chunks[0].metadata["n_tokens"] <= 256  # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import html.parser
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag_rerank.errors import DataError
from rag_rerank.types import Chunk, content_id

logger = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")
DEFAULT_TOKENIZER = "embedded:minilm-ce"
DEFAULT_CHUNK_TOKENS = 256


@dataclass(frozen=True)
class Document:
    """One loaded file: ``doc_id`` is the content id of its relative path."""

    doc_id: str
    source: str
    title: str
    text: str


@dataclass(frozen=True)
class LoadReport:
    """What happened to each file of a folder.

    Attributes:
        loaded: number of documents loaded.
        unsupported: files skipped because of their extension (e.g. ``ATTRIBUTION``).
        skipped: ``(relative path, reason)`` of files skipped with a warning (binary, empty, ...).
        latin1: relative paths decoded as Latin-1 because they were not valid UTF-8.
    """

    loaded: int
    unsupported: int = 0
    skipped: tuple[tuple[str, str], ...] = ()
    latin1: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "loaded": self.loaded,
            "unsupported": self.unsupported,
            "skipped": [{"source": s, "reason": r} for s, r in self.skipped],
            "latin1": list(self.latin1),
        }


class _HTMLText(html.parser.HTMLParser):
    _BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "pre"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style", "noscript"):
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "noscript"):
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> tuple[str, str]:
    """Strip tags from HTML; return ``(title, text)``. Scripts and styles are dropped.

    Example:
        >>> html_to_text("<title>T</title><p>Hello <b>world</b></p>")
        ('T', 'Hello world')
    """
    p = _HTMLText()
    p.feed(markup)
    p.close()
    text = "".join(p.parts)
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    text = re.sub(r"\s*\n\s*\n\s*", "\n\n", text)
    return " ".join(p.title.split()), text.strip()


def _looks_binary(raw: bytes) -> bool:
    head = raw[:8192]
    if b"\x00" in head:
        return True
    ctrl = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13))
    return bool(head) and ctrl / len(head) > 0.1


def _decode(raw: bytes, rel: str, latin1: list[str]) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        logger.info("%s is not valid UTF-8; decoded as Latin-1", rel)
        latin1.append(rel)
        return raw.decode("latin-1")


def _pdf_text(path: Path) -> str:
    try:
        import pypdf
    except ImportError as e:  # pragma: no cover - pypdf ships with the readers extra
        from rag_rerank.errors import missing_extra

        raise missing_extra("pypdf", "readers") from e
    reader = pypdf.PdfReader(str(path))
    return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()


def _title(text: str, suffix: str, stem: str) -> str:
    if suffix in (".md", ".markdown"):
        m = re.search(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE)
        if m:
            return m.group(1).strip()
    return stem.replace("_", " ")


def _iter_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def load_documents(
    docs_dir: str | os.PathLike, *, max_file_mb: float = 64.0
) -> tuple[list[Document], LoadReport]:
    """Load every supported file under ``docs_dir`` (recursively), in path order.

    Args:
        docs_dir: the folder.
        max_file_mb: larger files are skipped with a warning (split them first).

    Returns:
        ``(documents, report)``; bad files are skipped with a warning and listed in the report.

    Raises:
        DataError: when the folder does not exist or yields no usable document.

    Example:
        >>> docs, report = load_documents("sample_docs")  # doctest: +SKIP
        >>> report.unsupported  # ATTRIBUTION  # doctest: +SKIP
        1
    """
    root = Path(docs_dir)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; pass a folder of .txt/.md/.html/.pdf documents")
    docs: list[Document] = []
    skipped: list[tuple[str, str]] = []
    latin1: list[str] = []
    unsupported: dict[str, int] = {}
    for path in _iter_files(root):
        rel = path.relative_to(root).as_posix()
        suffix = path.suffix.lower()
        if suffix not in SUPPORTED_EXTENSIONS:
            unsupported[suffix or "(none)"] = unsupported.get(suffix or "(none)", 0) + 1
            continue
        reason, doc = _load_one(path, rel, suffix, max_file_mb, latin1)
        if doc is None:
            logger.warning("skipping %s: %s", rel, reason)
            skipped.append((rel, reason))
        else:
            docs.append(doc)
    if unsupported:
        logger.info(
            "skipped %d file(s) with unsupported extensions (%s); supported: %s",
            sum(unsupported.values()), ", ".join(f"{k}: {v}" for k, v in sorted(unsupported.items())),
            " ".join(SUPPORTED_EXTENSIONS),
        )
    report = LoadReport(len(docs), sum(unsupported.values()), tuple(skipped), tuple(latin1))
    if not docs:
        why = f"{len(skipped)} skipped as unusable, {report.unsupported} with unsupported extensions"
        raise DataError(
            f"{root}: no usable documents ({why}); add .txt, .md, .html or .pdf files with text in them"
        )
    return docs, report


def _load_one(
    path: Path, rel: str, suffix: str, max_file_mb: float, latin1: list[str]
) -> tuple[str, Document | None]:
    try:
        size = path.stat().st_size
    except OSError as e:
        return f"unreadable ({type(e).__name__})", None
    if size == 0:
        return "empty file (0 bytes)", None
    if size > max_file_mb * 1e6:
        return f"too large ({size / 1e6:.0f} MB > {max_file_mb:.0f} MB); split it into smaller files", None
    try:
        if suffix == ".pdf":
            text, title = _pdf_text(path), ""
        else:
            raw = path.read_bytes()
            if _looks_binary(raw):
                return "binary content", None
            text = _decode(raw, rel, latin1)
            title = ""
            if suffix in (".html", ".htm"):
                title, text = html_to_text(text)
    except Exception as e:  # noqa: BLE001 - one bad file never stops the folder
        return f"unreadable ({type(e).__name__}: {str(e)[:80]})", None
    if not text.strip():
        return "no text", None
    title = title or _title(text, suffix, path.stem)
    return "", Document(doc_id=content_id(rel, prefix="d"), source=rel, title=title, text=text)


# --------------------------------------------------------------------------------------------- chunking

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
            raise ValueError(
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
        raise ValueError(f"chunk_tokens={chunk_tokens} is too small; use at least 8 (default 256)")
    if not 0 <= chunk_overlap < chunk_tokens // 2:
        raise ValueError(
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
