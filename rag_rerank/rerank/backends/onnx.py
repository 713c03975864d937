"""ONNX Runtime backends of :class:`rag_rerank.rerank.Reranker`: fp32 and dynamic int8, on CPU.

ONNX export (``backend="onnx"`` / ``"onnx-int8"``, extra ``rag-rerank[onnx]``):

1. the model is loaded with ``AutoModelForSequenceClassification`` (eager attention) and exported
   with ``torch.onnx.export(dynamo=True)`` at opset 18, with dynamic batch and sequence axes;
2. for BERT/RoBERTa/XLM-R models onnxruntime's transformer optimizer fuses attention, GELU and
   layer norms (``Attention``, ``BiasGelu``, ``SkipLayerNormalization``); the fused graph is checked
   against torch on a probe batch and dropped (with a warning) if it disagrees;
3. ``onnx-int8`` applies ``onnxruntime.quantization.quantize_dynamic`` to that graph: int8 weights,
   per output channel, int8 activations quantised on the fly; the classification head stays fp32.

The graphs are cached in ``<model_dir>/onnx/`` (``model.onnx``, ``model_int8.onnx``) when the model
folder is writable, else in ``rag_rerank.models.cache_dir()/onnx/<hash of the model dir>/``
(:func:`rag_rerank.rerank.backends.base.artifact_dir`). Each file
carries a key in its ONNX metadata (sha256 of the weights and config files and of the export recipe);
a retrained model has a new key and is exported again. Files are written to a temporary name and
renamed into place, so concurrent or interrupted runs never see a partial graph.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag_rerank.errors import RagRerankError, missing_extra
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

EXPORT_VERSION = "1"  # bump when the export / optimise / quantise recipe changes
OPSET = 18
_FUSABLE = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert"}  # config.model_type -> ORT optimizer type
_FUSION_ATOL = 1e-3
_KEY_FIELD = "rag_rerank_key"


class OnnxBackend:
    """An onnxruntime ``InferenceSession`` (CPU) over the exported fp32 or int8 graph."""

    def __init__(
        self, ce: CrossEncoder, model_dir: Path, *, quantize: bool, num_threads: int | None, trust_remote_code: bool
    ) -> None:
        ort = _import_onnxruntime()
        self.name = "onnx-int8" if quantize else "onnx"
        self.effective_precision = "int8" if quantize else "fp32"
        _check_exportable(ce, model_dir)
        self.path = onnx_model_path(model_dir, quantize=quantize)
        key = export_key(model_dir, quantize=quantize)
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or available_cores()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = None
        if self.path.is_file():
            session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            if session.get_modelmeta().custom_metadata_map.get(_KEY_FIELD) != key:
                logger.info("cached %s is stale (weights or recipe changed); exporting again", self.path)
                session = None
        if session is None:
            export_onnx(ce, model_dir, quantize=quantize, trust_remote_code=trust_remote_code)
            session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self._session = session
        self._inputs = [i.name for i in session.get_inputs()]

    def threads(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def logits(self, features: dict[str, Any]) -> np.ndarray:
        feed = {name: to_int64(features[name]) for name in self._inputs}
        return self._session.run(None, feed)[0].astype(np.float32).reshape(-1)


def _import_onnxruntime() -> Any:
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as err:
        raise missing_extra(err.name or "onnxruntime", "onnx") from err
    if importlib.util.find_spec("onnxscript") is None:  # torch.onnx.export(dynamo=True) needs it
        raise missing_extra("onnxscript", "onnx")
    return onnxruntime


def check_onnx_installed() -> None:
    """Raise an ``ImportError`` naming ``rag-rerank[onnx]`` when the ONNX backends cannot run."""
    _import_onnxruntime()


def _check_exportable(ce: CrossEncoder, model_dir: Path) -> None:
    children = list(ce.children())
    if len(children) != 1 or not model_dir.is_dir():
        raise BackendNotAvailableError(
            f"the ONNX backends export a plain Hugging Face sequence-classification model; {model_dir} is "
            f"a {len(children)}-module sentence-transformers pipeline.\nFix: use backend='torch'."
        )


# --------------------------------------------------------------------------- cache location and key
def onnx_dir(model_dir: Path) -> Path:
    """Where the ONNX graphs of ``model_dir`` are cached (see :func:`artifact_dir`)."""
    return artifact_dir(model_dir, "onnx")


def onnx_model_path(model_dir: Path, *, quantize: bool) -> Path:
    """Where the exported fp32 (``model.onnx``) or int8 (``model_int8.onnx``) graph lives."""
    return onnx_dir(model_dir) / ("model_int8.onnx" if quantize else "model.onnx")


def export_key(model_dir: Path, *, quantize: bool) -> str:
    """sha256 of the weights and config files plus the export recipe: a new key means a new export."""
    import torch

    recipe = {
        "version": EXPORT_VERSION,
        "opset": OPSET,
        "int8": quantize,
        "torch": torch.__version__.split("+")[0],
        "files": weights_fingerprint(model_dir),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- export, fuse, quantise
def export_onnx(ce: CrossEncoder, model_dir: Path, *, quantize: bool, trust_remote_code: bool = False) -> Path:
    """Export (and for ``quantize`` also quantise) the model; returns the cached graph's path.

    Example:
        >>> export_onnx(ce, Path("my-reranker"), quantize=False)  # doctest: +SKIP
        PosixPath('my-reranker/onnx/model.onnx')
    """
    ort = _import_onnxruntime()
    target = onnx_model_path(model_dir, quantize=quantize)
    key = export_key(model_dir, quantize=quantize)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as tmp:
        work = Path(tmp)
        if quantize:
            fp32 = onnx_model_path(model_dir, quantize=False)
            fp32_key = export_key(model_dir, quantize=False)
            if not fp32.is_file() or _file_key(fp32) != fp32_key:
                export_onnx(ce, model_dir, quantize=False, trust_remote_code=trust_remote_code)
            _quantize(fp32, work / "model.onnx")
        else:
            _export_fp32(ce, model_dir, work, trust_remote_code, ort)
        _stamp_and_move(work / "model.onnx", target, key)
    logger.info("exported %s", target)
    return target


def _file_key(path: Path) -> str | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}.get(_KEY_FIELD)


def _export_fp32(ce: CrossEncoder, model_dir: Path, work: Path, trust_remote_code: bool, ort: Any) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    logger.info("exporting %s to ONNX (one-off; later loads reuse it)", model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), attn_implementation="eager", local_files_only=True, trust_remote_code=trust_remote_code
    ).eval()
    # a padded probe batch with batch and sequence > 1, so neither axis is specialised to a constant
    probe = ce.preprocess(
        [("a short question", "a short answer"), ("another, longer question", "a longer document with more words")]
    )
    names = [n for n in INPUT_ORDER if n in probe]
    if names[:2] != ["input_ids", "attention_mask"]:
        raise BackendNotAvailableError(f"cannot export {model_dir}: tokenizer inputs {sorted(probe)} are not supported")
    args = tuple(probe[n].cpu() for n in names)
    wrapper = _logits_module(model, len(names))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    raw = work / "raw.onnx"
    with torch.inference_mode():
        expected = wrapper(*args).float().numpy().reshape(-1)
    with quiet_exporter():
        torch.onnx.export(
            wrapper,
            args,
            str(raw),
            dynamo=True,
            input_names=names,
            output_names=["logits"],
            dynamic_shapes=tuple({0: batch, 1: seq} for _ in names),
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
    feed = {n: to_int64(a) for n, a in zip(names, args, strict=True)}
    out = work / "model.onnx"
    os.replace(raw, out)
    _check_graph(out, feed, expected, atol=1e-4, ort=ort, what="exported ONNX graph")
    model_type = getattr(model.config, "model_type", "")
    if model_type in _FUSABLE:
        fused = work / "fused.onnx"
        try:
            from onnxruntime.transformers.optimizer import optimize_model

            with quiet_exporter():
                optimize_model(
                    str(out),
                    model_type=_FUSABLE[model_type],
                    num_heads=int(model.config.num_attention_heads),
                    hidden_size=int(model.config.hidden_size),
                ).save_model_to_file(str(fused))
            _check_graph(fused, feed, expected, atol=_FUSION_ATOL, ort=ort, what="fused ONNX graph")
            os.replace(fused, out)
        except (RagRerankError, RuntimeError, ValueError, KeyError) as err:  # keep the plain graph
            logger.warning("onnxruntime graph fusion skipped for %s: %s", model_dir, err)


def _logits_module(model: Any, n_inputs: int) -> Any:
    """Wrap a HF model so that it takes positional input tensors and returns the logits tensor."""
    import torch

    class Logits3(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    class Logits2(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    return Logits3() if n_inputs == 3 else Logits2()


def _check_graph(
    path: Path, feed: dict[str, np.ndarray], expected: np.ndarray, *, atol: float, ort: Any, what: str
) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})[0].reshape(-1)
    err = float(np.max(np.abs(got - expected)))
    if not np.isfinite(err) or err > atol:
        raise RagRerankError(f"{what} differs from torch by {err:.2e} (> {atol:g}) on a probe batch")
    logger.debug("%s matches torch to %.1e", what, err)


def _quantize(fp32: Path, out: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32))
    # the classification head is tiny and sets the final score: keep it fp32
    head = [
        n.name
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm") and any(s in n.name.lower() for s in ("classifier", "pooler", "score"))
    ]
    del model
    with quiet_exporter():
        quantize_dynamic(
            str(fp32),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=head,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def _stamp_and_move(path: Path, target: Path, key: str) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = _KEY_FIELD, key
    stamped = path.with_name("stamped.onnx")
    onnx.save(model, str(stamped))
    os.replace(stamped, target)


