"""What every reranker backend shares: the ``Backend`` protocol, threads, exported-model caches and a quiet export.

A backend does one thing: turn a batch of already tokenised features (the ``dict`` that
``CrossEncoder.preprocess`` returns) into raw logits, one ``float32`` per pair. Tokenisation, length
bucketing, long-document windows, the activation and the score cache live in
:class:`rag_rerank.rerank.Reranker` and are shared by every backend.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rag_rerank.errors import RagRerankError
from rag_rerank.models import cache_dir

logger = logging.getLogger(__name__)

INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "config.json")


class Backend(Protocol):
    """A forward pass: tokenised features in, one raw logit per pair out."""

    name: str
    effective_precision: str

    def threads(self) -> contextlib.AbstractContextManager[None]:
        """A context in which to run a batch of :meth:`logits` calls (thread settings)."""

    def logits(self, features: dict[str, Any]) -> np.ndarray:
        """Raw logits, ``float32``, one per pair."""


class BackendNotAvailableError(RagRerankError, NotImplementedError):
    """The requested inference backend does not exist or cannot serve this model."""


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run with ``num_threads`` torch intra-op threads, restoring the previous count afterwards."""
    import torch

    if num_threads is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@functools.lru_cache(maxsize=1)
def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX), from ``/proc/cpuinfo`` (Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def to_int64(value: Any) -> np.ndarray:
    """A tensor or array as a contiguous ``int64`` numpy array (what ONNX Runtime and OpenVINO take)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value, dtype=np.int64)


def artifact_dir(model_dir: Path, kind: str) -> Path:
    """``<model_dir>/<kind>`` when writable, else ``cache_dir()/<kind>/<sha256 of the model dir path>``."""
    local = model_dir / kind
    try:
        local.mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=local, prefix=".probe-"):
            pass
        return local
    except OSError:
        digest = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:16]
        fallback = cache_dir() / kind / digest
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file; ``size`` and ``mtime_ns`` are part of the key, so an edited file is hashed again."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def weights_fingerprint(model_dir: Path) -> dict[str, str]:
    """sha256 of each weights and config file of ``model_dir`` (what an exported model was made from)."""
    files = sorted({p for name in WEIGHT_FILES for p in [model_dir / name] if p.is_file()})
    files += sorted(model_dir.glob("model-*.safetensors")) + sorted(model_dir.glob("pytorch_model-*.bin"))
    if not any(f.name != "config.json" for f in files):
        raise BackendNotAvailableError(f"{model_dir} has no weights file (model.safetensors or pytorch_model.bin)")
    return {f.name: _file_sha256(f) for f in files}


class _ThreadFilter(logging.Filter):
    """Drops records below ERROR that this one thread logs; other threads' records pass untouched."""

    def __init__(self, thread: int) -> None:
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread or record.levelno >= logging.ERROR


class _ThreadStdout(io.TextIOBase):
    """A ``sys.stdout`` stand-in that swallows what one thread prints and passes the others' output through."""

    def __init__(self, target: Any, thread: int) -> None:
        self.target, self.thread = target, thread

    def write(self, text: str) -> int:
        if threading.get_ident() == self.thread:
            return len(text)
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Keep torch.onnx's, onnxruntime's and NNCF's progress chatter of a one-off export out of the user's output.

    Only the exporting thread is silenced: a logging filter on the exporters' loggers (and on the root logger,
    which onnxruntime's quantizer logs through) drops that thread's records below ERROR, and a thread-aware
    ``sys.stdout`` drops what it prints. No logger level changes, and other threads log and print as before.
    """
    import warnings

    thread = threading.get_ident()
    names = ("", "torch.onnx", "torch.export", "onnxscript", "onnx_ir", "onnxruntime", "torch._dynamo", "nncf")
    loggers = [logging.getLogger(n) for n in names]
    flt = _ThreadFilter(thread)
    for lg in loggers:
        lg.addFilter(flt)
    previous = sys.stdout
    sys.stdout = _ThreadStdout(previous, thread)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if isinstance(sys.stdout, _ThreadStdout) and sys.stdout.thread == thread:
            sys.stdout = previous
        for lg in loggers:
            lg.removeFilter(flt)
