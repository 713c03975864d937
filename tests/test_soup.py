"""Checkpoint soup (rag_rerank.train.soup): the exact mean of the weights, loads like any model, refuses mixtures."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rag_rerank.errors import ConfigError, DataError
from rag_rerank.train.soup import average_checkpoints

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "pipelines" / "average_checkpoints.py"


def _checkpoint(src: Path, dst: Path, seed: int) -> Path:
    """A copy of ``src`` with its float weights moved by seeded noise, plus trainer files a checkpoint has."""
    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    state = {k: (v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v).contiguous()
             for k, v in state.items()}
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "optimizer.pt").write_bytes(b"not a model file")
    (dst / "fusion.json").write_text('{"alpha": 0.5}')  # a fine-tuned model's files that belong to its own weights
    (dst / "openvino" / "fp32-0123").mkdir(parents=True)
    return dst


def test_average_is_the_mean_and_loads_in_both_libraries(tiny_cross_encoder_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification

    cks = [_checkpoint(tiny_cross_encoder_dir, tmp_path / f"checkpoint-{i}", seed=i) for i in (1, 2, 3)]
    out = average_checkpoints(cks, tmp_path / "soup")
    states = [load_file(str(c / "model.safetensors")) for c in cks]
    soup = load_file(str(out / "model.safetensors"))
    assert set(soup) == set(states[0])
    for k, v in soup.items():
        want = sum(s[k].double() for s in states) / 3 if v.is_floating_point() else states[0][k]
        np.testing.assert_allclose(v.double().numpy(), want.numpy(), atol=1e-6)
    assert not (out / "optimizer.pt").exists() and not (out / "fusion.json").exists()
    assert not (out / "openvino").exists()
    ce = CrossEncoder(str(out), device="cpu")
    assert np.isfinite(ce.predict([("a question", "a passage")])).all()
    assert AutoModelForSequenceClassification.from_pretrained(str(out)).config.num_labels == 1


def test_refuses_checkpoints_of_different_models(tiny_cross_encoder_dir: Path, tmp_path: Path) -> None:
    a = _checkpoint(tiny_cross_encoder_dir, tmp_path / "a", seed=1)
    b = _checkpoint(tiny_cross_encoder_dir, tmp_path / "b", seed=2)
    state = load_file(str(b / "model.safetensors"))
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(b / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(DataError, match="different tensors"):
        average_checkpoints([a, b], tmp_path / "soup")
    assert not (tmp_path / "soup").exists() and not list(tmp_path.glob(".soup*"))
    with pytest.raises(ConfigError, match="at least two"):
        average_checkpoints([a], tmp_path / "soup")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing to overwrite"):  # never replaces a folder that is not a soup
        average_checkpoints([a, a], tmp_path / "notes")


@pytest.mark.slow
def test_pipeline_script_writes_the_soup(tiny_cross_encoder_dir: Path, tmp_path: Path) -> None:
    cks = [_checkpoint(tiny_cross_encoder_dir, tmp_path / f"checkpoint-{i}", seed=i) for i in (1, 2)]
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, cks), "--out", str(tmp_path / "soup")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "soup" / "averaged_from.json").is_file()
