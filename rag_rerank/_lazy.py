"""Lazy package faces: a package's ``__init__`` names its public pieces without importing them.

``import rag_rerank`` (or ``rag_rerank.rerank``) then stays fast: torch, transformers and faiss load only when a
name that needs them is first used. The pattern is PEP 562's module ``__getattr__``, as transformers and scipy use.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def attach(
    package: str, modules: Mapping[str, tuple[str, ...]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``: each name is looked up in its module on first use.

    Args:
        package: the package's ``__name__``.
        modules: ``{module: (public names it defines, ...)}``.

    Example:
        >>> face = attach("rag_rerank.rerank", {"rag_rerank.rerank.reranker": ("Reranker",)})  # doctest: +SKIP
    """
    mapping = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = mapping.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(sys.modules[package].__dict__) | set(mapping))

    __getattr__.lazy_names = dict(mapping)  # type: ignore[attr-defined]  # where each name lives (for tools)

    return __getattr__, __dir__, sorted(mapping)
