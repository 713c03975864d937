"""The small error family. Each message names the value at fault and says what to do."""

from __future__ import annotations


class RagRerankError(Exception):
    """Base class of rag-rerank's user-facing errors (the CLI prints them as one clean line)."""


class ModelUnavailableError(RagRerankError):
    """A model was asked for and cannot be had (offline, not cached, missing package)."""


class DataError(RagRerankError, ValueError):
    """Bad input data: a malformed file, an empty folder, an unknown split."""


class ConfigError(RagRerankError, ValueError):
    """An invalid setting: a value out of range, an unknown name, options that do not go together.

    A ``ValueError`` too, so ``except ValueError`` keeps working; the CLI prints it as one clean line.
    """


class LLMError(RagRerankError):
    """The LLM server could not be started or reached."""


def missing_extra(package: str, extra: str) -> ImportError:
    """An ImportError that names the extra to install."""
    return ImportError(f"{package} is required for this feature: pip install 'rag-rerank[{extra}]'")
