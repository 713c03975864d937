"""OpenVINO backends of :class:`rag_rerank.rerank.Reranker`: fp32, bf16 and int8 on CPU.

Why a third runtime: on the reference CPU (2 cores with AVX-512 VNNI and BF16), OpenVINO's CPU plugin ran
a fine-tuned MiniLM-L6 at 1.5x ``CrossEncoder.predict`` in fp32, 2.6x in bf16 and 3.3x in int8, where
onnxruntime's best (dynamic int8) reached 2.2x (``pipelines/bench_rerank.py``; the README has the table).

- ``"openvino"``: the model converted once to OpenVINO IR (fp32 weights) and run at fp32 inference
  precision. OpenVINO would otherwise pick bf16 by itself on CPUs with native bf16, so the precision is
  pinned. The converted model is checked against torch on a probe batch (1e-3 on the logits).
- ``"openvino-bf16"``: the same IR at bf16 inference precision: native on CPUs with AVX512_BF16 or AMX;
  elsewhere OpenVINO runs fp32 (the effective precision is logged). Scores move by about 1e-2, rankings
  barely (measure it on your data, as the benchmark does).
- ``"openvino-int8"``: NNCF post-training static quantisation (``ModelType.TRANSFORMER``, which keeps
  the numerically sensitive ops in floating point), calibrated on (query, passage) pairs from your own
  data: ``calibration_pairs``, or by default the model folder's ``train_groups.jsonl`` that
  ``rag-rerank train`` writes. Two kinds of layer stay in floating point: the head (pooler, classifier),
  which sets the final score, and each layer's FFN down-projection, whose post-GELU inputs have the widest
  range. On a fine-tuned MiniLM that lifted the per-query Spearman against fp32 from 0.990 to 0.993, and
  top-1 agreement from 92% to 95%, for about 5% of the speed. What is not quantised runs in bf16 where the
  CPU has native bf16 (the same parity as fp32 there, and 20% faster), else in fp32.

The IR is cached in ``<model_dir>/openvino/<variant>-<key>/`` (or under ``rag_rerank.models.cache_dir()``
when the model folder is read-only). The key hashes the weights, the recipe, the OpenVINO/NNCF versions and
the calibration pairs, so a retrained model is converted again. A conversion is written to a temporary
folder and renamed into place, so an interrupted or concurrent run never sees a partial model.

Needs ``pip install 'rag-rerank[openvino]'``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag_rerank.errors import ConfigError, RagRerankError, missing_extra
from rag_rerank.rerank.backends.base import (
    INPUT_ORDER,
    BackendNotAvailableError,
    artifact_dir,
    available_cores,
    quiet_exporter,
    to_int64,
    weights_fingerprint,
)

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

logger = logging.getLogger(__name__)

RECIPE_VERSION = "2"  # bump when the conversion / quantisation recipe changes
CALIBRATION_PAIRS = 256  # pairs taken from train_groups.jsonl when none are given
_CHECK_ATOL = 1e-3
_PROBE = [("a short question", "a short answer"), ("another, longer question", "a longer document with more words")]
# layers int8 leaves in floating point (names from the torch conversion of BERT/RoBERTa/XLM-R models): the head,
# and each layer's FFN down-projection ("...layer.N.output.dense", not "attention.output.dense")
_FLOAT_LAYERS = [r".*pooler.*", r".*classifier.*", r".*\.score\b.*", r".*layer\.\d+\.output\.dense.*"]


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError as err:
        raise missing_extra(err.name or "openvino", "openvino") from err
    return openvino


def check_openvino_installed(precision: str) -> None:
    """Raise an ``ImportError`` naming ``rag-rerank[openvino]`` when the OpenVINO backends cannot run."""
    _import_openvino()
    if precision == "int8":
        try:
            import nncf  # noqa: F401
        except ImportError as err:
            raise missing_extra(err.name or "nncf", "openvino") from err


@functools.lru_cache(maxsize=1)
def _ov_core() -> Any:
    return _import_openvino().Core()


def calibration_from_model_dir(model_dir: Path, limit: int = CALIBRATION_PAIRS) -> list[tuple[str, str]]:
    """Up to ``limit`` (query, passage) pairs from ``model_dir/train_groups.jsonl``: positives and negatives.

    Raises:
        BackendNotAvailableError: when the folder has no such file (a model not trained by rag-rerank).
    """
    path = model_dir / "train_groups.jsonl"
    if not path.is_file():
        raise BackendNotAvailableError(
            f"backend='openvino-int8' calibrates on (query, passage) pairs from your data, and {model_dir} has no "
            "train_groups.jsonl (rag-rerank train writes one).\n"
            "Fix: pass calibration_pairs=[(query, passage), ...] (100-300 pairs like the ones you will rerank), "
            "or use backend='openvino-bf16'."
        )
    pairs: list[tuple[str, str]] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if len(pairs) >= limit:
                break
            row = json.loads(line)
            pairs.append((row["query"], row["positive"]))
            pairs.extend((row["query"], n) for n in (row.get("negatives") or [])[:3])
    return pairs[:limit]


def _features(ce: CrossEncoder, pairs: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
    feats = ce.preprocess(list(pairs))
    return {k: to_int64(feats[k]) for k in INPUT_ORDER if k in feats}


def _key(model_dir: Path, precision: str, calibration: Sequence[tuple[str, str]] | None) -> str:
    ov = _import_openvino()
    recipe: dict[str, Any] = {"version": RECIPE_VERSION, "ir": "int8" if precision == "int8" else "fp32",
                              "openvino": ov.__version__, "files": weights_fingerprint(model_dir)}
    if precision == "int8":
        import nncf

        recipe["nncf"] = nncf.__version__
        recipe["calibration"] = hashlib.sha256(json.dumps(list(calibration or [])).encode()).hexdigest()
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (AVX512_BF16 or AMX)."""
    return "BF16" in _ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _compile(model: Any, precision: str, num_threads: int | None) -> Any:
    # pinned: on CPUs with native bf16 OpenVINO would choose bf16 by itself; int8's float layers use it if native
    floats = "bf16" if precision == "bf16" or (precision == "int8" and native_bf16()) else "f32"
    config = {
        "INFERENCE_NUM_THREADS": int(num_threads or available_cores()),
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": floats,
    }
    return _ov_core().compile_model(model, "CPU", config)


def _convert(ce: CrossEncoder, model_dir: Path, trust_remote_code: bool) -> Any:
    """Convert the Hugging Face model to an OpenVINO model and check it against torch on a probe batch."""
    import torch
    from transformers import AutoModelForSequenceClassification

    ov = _import_openvino()
    logger.info("converting %s to OpenVINO (one-off; later loads reuse it)", model_dir)
    hf = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), local_files_only=True, trust_remote_code=trust_remote_code
    ).eval()
    probe = _features(ce, _PROBE)
    if list(probe)[:2] != ["input_ids", "attention_mask"]:
        raise BackendNotAvailableError(f"cannot convert {model_dir}: tokenizer inputs {sorted(probe)} unsupported")
    tensors = {k: torch.from_numpy(v) for k, v in probe.items()}
    with torch.inference_mode():
        expected = hf(**tensors).logits.float().numpy().reshape(-1)
    with torch.no_grad(), quiet_exporter():
        model = ov.convert_model(hf, example_input=tensors)
    got = _infer(_compile(model, "fp32", None), probe)
    err = float(np.max(np.abs(got - expected)))
    if not np.isfinite(err) or err > _CHECK_ATOL:
        raise RagRerankError(f"the OpenVINO model of {model_dir} differs from torch by {err:.2e} on a probe batch")
    return model


def _infer(compiled: Any, feed: dict[str, np.ndarray]) -> np.ndarray:
    out = compiled(feed)
    return np.asarray(out[compiled.outputs[0]], dtype=np.float32).reshape(-1)


def _quantize(model: Any, ce: CrossEncoder, calibration: Sequence[tuple[str, str]]) -> Any:
    import nncf

    batches = [_features(ce, calibration[i:i + 8]) for i in range(0, len(calibration), 8)]
    logger.info("quantising to int8 with NNCF on %d calibration pairs (one-off)", len(calibration))
    keep_float = nncf.IgnoredScope(patterns=_FLOAT_LAYERS, validate=False)
    with quiet_exporter():
        return nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches),
                             model_type=nncf.ModelType.TRANSFORMER, ignored_scope=keep_float)


def openvino_model_dir(model_dir: Path, precision: str, key: str) -> Path:
    """The cached IR folder of one variant (``fp32`` serves both ``openvino`` and ``openvino-bf16``)."""
    variant = "int8" if precision == "int8" else "fp32"
    return artifact_dir(model_dir, "openvino") / f"{variant}-{key[:16]}"


def export_openvino(ce: CrossEncoder, model_dir: Path, precision: str, *, trust_remote_code: bool = False,
                    calibration: Sequence[tuple[str, str]] | None = None) -> Path:
    """Convert (and for int8 quantise) ``model_dir`` once; returns the cached ``openvino_model.xml``."""
    ov = _import_openvino()
    key = _key(model_dir, precision, calibration)
    target = openvino_model_dir(model_dir, precision, key)
    xml = target / "openvino_model.xml"
    if xml.is_file() and (target / "key.txt").is_file() and (target / "key.txt").read_text() == key:
        return xml
    if precision == "int8":
        model = _ov_core().read_model(str(export_openvino(ce, model_dir, "fp32", trust_remote_code=trust_remote_code)))
        model = _quantize(model, ce, calibration or [])
    else:
        model = _convert(ce, model_dir, trust_remote_code)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".export-"))
    try:
        ov.save_model(model, str(tmp / "openvino_model.xml"), compress_to_fp16=False)
        (tmp / "key.txt").write_text(key)
        # one variant per kind: drop those of older weights, recipes or calibration pairs
        for old in target.parent.glob(f"{target.name.split('-')[0]}-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(OSError):  # OSError: a concurrent run renamed its own copy first; keep that one
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("cached OpenVINO %s model in %s", "int8" if precision == "int8" else "fp32", target)
    return xml


class OpenVinoBackend:
    """An OpenVINO ``CompiledModel`` on CPU (fp32, bf16 or int8); calls are serialised by a lock."""

    def __init__(self, ce: CrossEncoder, model_dir: Path, *, precision: str, num_threads: int | None,
                 trust_remote_code: bool, calibration_pairs: Sequence[tuple[str, str]] | None = None) -> None:
        if precision not in ("fp32", "bf16", "int8"):
            raise ConfigError(f"precision={precision!r}: use 'fp32', 'bf16' or 'int8'")
        check_openvino_installed(precision)
        self.name = "openvino" if precision == "fp32" else f"openvino-{precision}"
        if not model_dir.is_dir() or len(list(ce.children())) != 1:
            raise BackendNotAvailableError(
                f"the OpenVINO backends convert a plain Hugging Face sequence-classification model folder; "
                f"{model_dir} is not one.\nFix: use backend='torch'."
            )
        calibration = None
        if precision == "int8":
            calibration = [(str(q), str(d)) for q, d in calibration_pairs] if calibration_pairs is not None \
                else calibration_from_model_dir(model_dir)
            if not calibration:
                raise ConfigError("calibration_pairs is empty; pass 100-300 (query, passage) pairs from your data")
        xml = export_openvino(ce, model_dir, precision, trust_remote_code=trust_remote_code, calibration=calibration)
        self.path = xml
        self._compiled = _compile(_ov_core().read_model(str(xml)), precision, num_threads)
        self._inputs = [p.get_any_name() for p in self._compiled.inputs]
        self._lock = threading.Lock()
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        self.effective_precision: str = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        if precision == "bf16" and "bf16" not in self.effective_precision:
            logger.warning("this CPU has no native bf16: OpenVINO runs %s at %s", model_dir, self.effective_precision)

    def threads(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def logits(self, features: dict[str, Any]) -> np.ndarray:
        feed = {name: to_int64(features[name]) for name in self._inputs}
        with self._lock:
            return _infer(self._compiled, feed)
