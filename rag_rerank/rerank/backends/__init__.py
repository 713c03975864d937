"""The backend registry: every inference backend of :class:`rag_rerank.rerank.Reranker`, named once.

| name | module | runs on |
|---|---|---|
| ``torch`` | :mod:`.torch_backend` | any device (CUDA autocast) |
| ``torch-bf16`` | :mod:`.torch_backend` | CUDA, or a CPU with native bf16 (AVX512_BF16 or AMX) |
| ``onnx``, ``onnx-int8`` | :mod:`.onnx` | CPU, extra ``rag-rerank[onnx]`` |
| ``openvino``, ``openvino-bf16``, ``openvino-int8`` | :mod:`.openvino` | CPU, extra ``rag-rerank[openvino]`` |

The CLI's choices, the postprocessor's validation and the benchmarks all read :data:`BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rag_rerank.rerank.backends.base import Backend, BackendNotAvailableError

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

__all__ = ["BACKENDS", "Backend", "BackendNotAvailableError", "check_installed", "create_backend", "is_exported"]

BACKENDS: tuple[str, ...] = ("torch", "torch-bf16", "onnx", "onnx-int8", "openvino", "openvino-bf16", "openvino-int8")
_OPENVINO_PRECISION = {"openvino": "fp32", "openvino-bf16": "bf16", "openvino-int8": "int8"}


def _check_name(name: str) -> None:
    if name not in BACKENDS:
        raise BackendNotAvailableError(f"backend={name!r} is not available.\nFix: use one of {list(BACKENDS)}.")


def is_exported(name: str) -> bool:
    """Whether ``name`` runs an exported copy of a saved model folder on CPU (everything but the torch backends)."""
    _check_name(name)
    return not name.startswith("torch")


def check_installed(name: str) -> None:
    """Raise an ``ImportError`` naming the extra to install when backend ``name`` cannot run here.

    Raises:
        BackendNotAvailableError: for an unknown name.
        ImportError: naming ``rag-rerank[onnx]`` or ``rag-rerank[openvino]``.
    """
    _check_name(name)
    if name.startswith("openvino"):
        from rag_rerank.rerank.backends.openvino import check_openvino_installed

        check_openvino_installed(_OPENVINO_PRECISION[name])
    elif name.startswith("onnx"):
        from rag_rerank.rerank.backends.onnx import check_onnx_installed

        check_onnx_installed()


def create_backend(
    name: str, ce: CrossEncoder, model_dir: Path | None, *, num_threads: int | None, autocast: bool,
    trust_remote_code: bool, calibration_pairs: Sequence[tuple[str, str]] | None = None,
) -> Backend:
    """Build backend ``name`` for a loaded ``CrossEncoder`` (``model_dir``: its folder, for the exported ones)."""
    check_installed(name)
    if name.startswith("torch"):
        from rag_rerank.rerank.backends.torch_backend import TorchBackend

        return TorchBackend(ce, num_threads=num_threads, autocast=autocast, bf16=name == "torch-bf16")
    if model_dir is None:
        raise BackendNotAvailableError(f"backend={name!r} exports a saved model; pass its folder, not a CrossEncoder")
    if name.startswith("openvino"):
        from rag_rerank.rerank.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(ce, model_dir, precision=_OPENVINO_PRECISION[name], num_threads=num_threads,
                               trust_remote_code=trust_remote_code, calibration_pairs=calibration_pairs)
    from rag_rerank.rerank.backends.onnx import OnnxBackend

    return OnnxBackend(ce, model_dir, quantize=name == "onnx-int8", num_threads=num_threads,
                       trust_remote_code=trust_remote_code)
