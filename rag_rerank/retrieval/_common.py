"""Reading the config of an index folder (or of its bm25/ or dense/ part), shared by every retriever's ``load``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rag_rerank.errors import DataError
from rag_rerank.io import read_json

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
    """Raise ``ValueError`` naming the overrides ``owner.load`` cannot apply to a built index."""
    unknown = set(overrides) - set(allowed)
    if unknown:
        raise ValueError(f"{owner}: cannot override {sorted(unknown)}; rebuild the index instead")
