"""What every retriever shares: the text it indexes, deterministic tie ranks, progress bars, index configs."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rag_rerank.errors import ConfigError, DataError
from rag_rerank.io import read_json

logger = logging.getLogger("rag_rerank.retrieval")


def doc_text(doc: Mapping[str, str], include_title: bool = True) -> str:
    """The text a retriever sees for a corpus record: ``title + " " + text`` (title optional).

    Example:
        >>> doc_text({"title": "Paris", "text": "is in France."})
        'Paris is in France.'
    """
    title = (doc.get("title") or "").strip() if include_title else ""
    text = doc.get("text") or ""
    return f"{title} {text}" if title else text


def tie_ranks(doc_ids: Sequence[str]) -> np.ndarray:
    """``rank[i]`` = position of ``doc_ids[i]`` in sorted order, so ties sort by doc id with numpy.

    Example:
        >>> tie_ranks(["b", "a", "c"]).tolist()
        [1, 0, 2]
    """
    order = sorted(range(len(doc_ids)), key=doc_ids.__getitem__)
    rank = np.empty(len(doc_ids), dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(len(doc_ids), dtype=np.int64)
    return rank


def progress_disabled(show_progress_bar: bool | None, n: int) -> bool:
    """``disable`` for tqdm: shown when asked, or by default when the job is large and logging is at INFO."""
    if show_progress_bar is None:
        return n < 1000 or not logger.isEnabledFor(logging.INFO)
    return not show_progress_bar

MISSING = "{folder}: no {what} here (config.json missing); build one with `rag-rerank index`"


def read_index_config(
    path: str | os.PathLike, *, fmt: str, what: str, subdir: str | None = None, missing: str = MISSING
) -> tuple[Path, dict[str, Any]]:
    """``(folder, config)`` of an index part, checking its ``format``.

    Args:
        path: the part's folder, or (with ``subdir``) a full index folder holding it.
        fmt: the expected ``format`` value.
        what: what the folder should hold, for messages (``"BM25 index"``).
        subdir: the part's folder name inside a full index folder.
        missing: the message when there is no config (``{folder}`` and ``{what}`` are filled in).

    Raises:
        DataError: when there is no ``config.json`` or it holds another format.
    """
    folder = Path(path)
    if subdir is not None and (folder / subdir / "config.json").is_file():  # a full index folder
        folder = folder / subdir
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise DataError(missing.format(folder=folder, what=what))
    cfg = read_json(cfg_path)
    if cfg.get("format") != fmt:
        raise DataError(f"{cfg_path}: not a {what} (format={cfg.get('format')!r})")
    return folder, cfg


def reject_unknown_overrides(owner: str, overrides: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Raise :class:`ConfigError` naming the overrides ``owner.load`` cannot apply to a built index."""
    unknown = set(overrides) - set(allowed)
    if unknown:
        raise ConfigError(f"{owner}: cannot override {sorted(unknown)}; rebuild the index instead")


def replaceable_index(path: Path) -> bool:
    """Whether ``path`` holds a rag-rerank index (full, bm25 or dense) that a new build may overwrite."""
    try:
        fmt = json.loads((path / "config.json").read_text(encoding="utf-8")).get("format", "")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(fmt, str) and fmt.startswith("rag-rerank-")
