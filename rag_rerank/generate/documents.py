"""Documents: load a folder of .txt, .md, .html and .pdf files (chunking is :mod:`rag_rerank.generate.chunking`).

Loading is recursive, skips hidden files and folders, never follows symlinked folders (no loops),
and never stops on one bad file: binary content, 0-byte files, unreadable or oversized files are
skipped with a warning and counted in :class:`LoadReport`; text that is not UTF-8 is decoded as
Latin-1 (logged). Files without a supported extension are counted and logged once.

Example:
    >>> docs, report = load_documents("sample_docs")  # doctest: +SKIP
    >>> report.loaded, docs[0].title  # doctest: +SKIP
"""

from __future__ import annotations

import html.parser
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag_rerank.errors import DataError
from rag_rerank.types import content_id

logger = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")


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
