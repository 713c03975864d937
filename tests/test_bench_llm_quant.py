"""The requantisation behind pipelines/bench_llm_quant.py: metadata kept, other tensors copied, values close."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import quants  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "pipelines" / "bench_llm_quant.py"


def _script():
    spec = importlib.util.spec_from_file_location("bench_llm_quant", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_q4_1_gguf(path: Path, rows: int = 8, cols: int = 64) -> None:
    weights = (np.random.default_rng(0).standard_normal((rows, cols)) * 0.05 + 0.01).astype(np.float32)
    kinds = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(path, "llama")
    w.add_string("general.name", "tiny")
    w.add_uint32("llama.block_count", 2)
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    w.add_tensor("blk.0.attn_q.weight", quants.quantize(weights, kinds.Q4_1), raw_dtype=kinds.Q4_1)
    w.add_tensor("output_norm.weight", np.linspace(0.5, 1.5, cols, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_q8_0_copy_keeps_metadata_and_values(tmp_path: Path) -> None:
    src, dst = tmp_path / "tiny.Q4_1.gguf", tmp_path / "work" / "tiny.Q8_0.gguf"
    _tiny_q4_1_gguf(src)
    assert _script().requantise_q8_0(src, dst) == dst
    assert [p.name for p in dst.parent.iterdir()] == [dst.name]  # no temporary file left behind
    before, after = gguf.GGUFReader(src), gguf.GGUFReader(dst)
    for key in ("general.name", "llama.block_count", "tokenizer.ggml.tokens", "general.architecture"):
        assert after.fields[key].contents() == before.fields[key].contents(), key
    kinds = gguf.GGMLQuantizationType
    (bq, bn), (aq, an) = before.tensors, after.tensors
    assert (aq.tensor_type, an.tensor_type) == (kinds.Q8_0, kinds.F32)
    assert np.array_equal(an.data, bn.data)  # other tensors are copied unchanged
    q4, q8 = quants.dequantize(bq.data, bq.tensor_type), quants.dequantize(aq.data, aq.tensor_type)
    assert q8.shape == q4.shape
    block_max = np.abs(q4.reshape(-1, 32)).max(axis=1, keepdims=True)
    # Q8_0's rounding: half a step (max/127) per block, plus its fp16 scale's own rounding (127 * 2^-11 of a step)
    assert np.all(np.abs((q8 - q4).reshape(-1, 32)) <= block_max / 127 * 0.6)
    assert np.abs(q8 - q4).max() > 0  # a real requantisation, not a copy
