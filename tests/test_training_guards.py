"""Training guards (issue: reliability): preflight, a NaN loss stops the run, resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

from rag_rerank.errors import DataError, RagRerankError
from rag_rerank.train.config import RerankerTrainingConfig
from rag_rerank.train.guards import TrainingDivergedError, checkpoint_bytes, preflight
from rag_rerank.train.reranker_trainer import train_reranker

GROUPS = [{"query": f"q{i} alpha", "positive": f"alpha text {i}", "negatives": [f"beta {i}", f"gamma {i}"]}
          for i in range(16)]


def test_preflight_checks(tmp_path: Path) -> None:
    ok = preflight(tmp_path / "new" / "model", model_bytes=1000, rows=5)
    assert Path(ok["out_dir"]).is_dir() and ok["need_bytes"] == checkpoint_bytes(1000)
    with pytest.raises(DataError, match="no training rows"):
        preflight(tmp_path / "m", model_bytes=1000, rows=0)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(RagRerankError, match=r"a-file/model cannot be written[\s\S]*Fix: pass --out"):
        preflight(blocker / "model", model_bytes=1000, rows=5)
    with pytest.raises(RagRerankError, match=r"GB free; training needs about [\s\S]*Fix: free disk space"):
        preflight(tmp_path / "m", model_bytes=10**16, rows=5)


def _nan_copy(src: Path, dst: Path, attr: str) -> Path:
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    cls = AutoModelForSequenceClassification if attr == "classifier" else AutoModel
    model = cls.from_pretrained(str(src), local_files_only=True)
    with torch.no_grad():
        (model.classifier.weight if attr == "classifier" else model.embeddings.word_embeddings.weight).fill_(
            float("nan"))
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(str(src), local_files_only=True).save_pretrained(dst)
    return dst


def test_nan_loss_stops_reranker_training(tiny_cross_encoder_dir: Path, tmp_path: Path) -> None:
    base = _nan_copy(tiny_cross_encoder_dir, tmp_path / "nan-ce", "classifier")
    cfg = RerankerTrainingConfig(max_steps=20, batch_size=4, max_length=32, logging_steps=1, sanity_gate="off",
                                 show_progress_bar=False, train_group_size=3)
    with pytest.raises(TrainingDivergedError, match=r"loss was nan at step 1[\s\S]*Fix: lower --lr"):
        train_reranker(str(base), GROUPS, out_dir=tmp_path / "out", config=cfg)
    assert not (tmp_path / "out" / "model.safetensors").exists()  # nothing that looks like a model is left


def test_nan_loss_stops_bi_encoder_training(tiny_bi_encoder_dir: Path, tmp_path: Path) -> None:
    import shutil

    from rag_rerank.train.bi_encoder import BiEncoderTrainingConfig, train_bi_encoder

    base = tmp_path / "nan-bi"
    shutil.copytree(tiny_bi_encoder_dir, base)
    _nan_copy(tiny_bi_encoder_dir, base, "encoder")  # overwrite the transformer weights (module 0 at the root)
    rows = [{"query": g["query"], "positive": g["positive"]} for g in GROUPS]
    with pytest.raises(TrainingDivergedError, match="bi-encoder training"):
        train_bi_encoder(str(base), rows, out_dir=tmp_path / "bi",
                         config=BiEncoderTrainingConfig(max_steps=3, batch_size=4, show_progress_bar=False))


def test_resume_skips_an_incomplete_checkpoint(tmp_path: Path) -> None:
    from rag_rerank.train.reranker_trainer import _resume_point

    ck = tmp_path / "checkpoints"
    assert _resume_point(True, ck) is None and _resume_point(None, ck) is None
    for step, complete in ((3, True), (12, True), (15, False)):
        (ck / f"checkpoint-{step}").mkdir(parents=True)
        (ck / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"x")
        if complete:
            (ck / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert _resume_point(True, ck) == str(ck / "checkpoint-12")  # 15 was killed mid-save; 12 sorts after 3
    assert _resume_point("explicit/path", ck) == "explicit/path"


class _FirstStep(TrainerCallback):
    """Records the global step of the first optimiser step this run takes (1 fresh, N+1 after a resume at N)."""

    def __init__(self) -> None:
        self.first: int | None = None

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
        self.first = self.first or state.global_step


def test_resume_continues_after_the_last_checkpoint_and_starts_fresh_without_one(
    tiny_cross_encoder_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = dict(batch_size=4, max_length=32, sanity_gate="off", show_progress_bar=False, train_group_size=3,
                eval_steps=2, keep_checkpoints=True, resume_from_checkpoint=True)
    fresh = _FirstStep()
    with caplog.at_level("INFO", logger="rag_rerank"):
        res = train_reranker(str(tiny_cross_encoder_dir), GROUPS, out_dir=tmp_path / "m",
                             config=RerankerTrainingConfig(max_steps=2, **base), callbacks=[fresh])
    assert res.steps == 2 and fresh.first == 1 and "no complete checkpoint" in caplog.text
    assert (tmp_path / "m" / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    resumed = _FirstStep()
    res = train_reranker(str(tiny_cross_encoder_dir), GROUPS, out_dir=tmp_path / "m",
                         config=RerankerTrainingConfig(max_steps=4, **base), callbacks=[resumed])
    assert res.steps == 4 and resumed.first == 3  # continued from checkpoint-2, not from step 1


TRAIN_SCRIPT = textwrap.dedent("""
    import sys, time, json
    from transformers import TrainerCallback
    from rag_rerank.train.config import RerankerTrainingConfig
    from rag_rerank.train.reranker_trainer import train_reranker

    class Slow(TrainerCallback):
        first = None
        def on_step_end(self, args, state, control, **kw):
            Slow.first = Slow.first or state.global_step
            time.sleep(float(sys.argv[3]))

    groups = [{"query": f"q{i} alpha", "positive": f"alpha text {i}", "negatives": [f"beta {i}", f"gamma {i}"]}
              for i in range(16)]
    cfg = RerankerTrainingConfig(max_steps=12, batch_size=4, max_length=32, eval_steps=3, sanity_gate="off",
                                 show_progress_bar=False, train_group_size=3, keep_checkpoints=True,
                                 resume_from_checkpoint=True)
    res = train_reranker(sys.argv[1], groups, out_dir=sys.argv[2], config=cfg, callbacks=[Slow()])
    print(json.dumps({"steps": res.steps, "first_step": Slow.first}))
""")


@pytest.mark.slow
def test_training_resumes_after_sigkill(tiny_cross_encoder_dir: Path, tmp_path: Path) -> None:
    import json

    script, out = tmp_path / "train.py", tmp_path / "model"
    script.write_text(TRAIN_SCRIPT)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_cross_encoder_dir), str(out), "0.5"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "checkpoints").glob("checkpoint-6")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "model.safetensors").exists()
    done = subprocess.run([sys.executable, str(script), str(tiny_cross_encoder_dir), str(out), "0"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads(done.stdout.strip().splitlines()[-1])
    # resumed past the last complete checkpoint (6, or 3 when the kill hit the save of 6), not from step 1
    assert res["steps"] == 12 and res["first_step"] > 3
    from sentence_transformers import CrossEncoder

    assert CrossEncoder(str(out)).predict([("q", "d")]).shape == (1,)
