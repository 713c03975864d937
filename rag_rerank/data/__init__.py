"""Data shipped inside the package: ``sample_docs/``, 12 Wikipedia articles rebuilt from SQuAD v1.1 dev (CC BY-SA
4.0; see ``sample_docs/ATTRIBUTION``), what ``rag-rerank demo`` and the notebook run on after a plain
``pip install rag-rerank``."""

from pathlib import Path

SAMPLE_DOCS: Path = Path(__file__).resolve().parent / "sample_docs"
"""The folder of sample documents (inside the installed package)."""
