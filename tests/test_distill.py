"""The distilled student: fewer layers, trained on the teacher's scores, loadable everywhere, kept only at parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rag_rerank.cli import main
from rag_rerank.errors import ConfigError, DataError
from rag_rerank.train.distill import DistillConfig, compare_on_validation, distill_reranker, shrink_layers

WORDS = ["river", "castle", "engine", "violin", "glacier", "harbor", "orchid", "comet", "lantern", "meadow"]


def _groups() -> list[dict]:
    return [{"query": f"where is the {w}", "positive": f"the {w} is near the {WORDS[(i + 1) % 10]}",
             "negatives": [f"a {WORDS[(i + j) % 10]} story number {j}" for j in range(2, 6)]}
            for i, w in enumerate(WORDS * 3)]


@pytest.fixture(scope="module")
def teacher(tiny_cross_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer tiny reranker trained briefly on the groups, so its scores vary (a fixed teacher to copy).

    Trained rather than head-rescaled: a head multiplied by 1000 makes every encoder update a thousandfold score
    change, and no learning rate distils such a model.
    """
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from rag_rerank.models import load_cross_encoder

    model = load_cross_encoder(str(tiny_cross_encoder_dir), device="cpu")
    rows = [(g["query"], d, float(j == 0)) for g in _groups() for j, d in enumerate([g["positive"], *g["negatives"]])]
    data = Dataset.from_dict({"query": [r[0] for r in rows], "passage": [r[1] for r in rows],
                              "label": [r[2] for r in rows]})
    out = tmp_path_factory.mktemp("distill-teacher")
    args = CrossEncoderTrainingArguments(output_dir=str(out / "ckpt"), num_train_epochs=20,
                                         per_device_train_batch_size=16, learning_rate=2e-3, seed=0,
                                         save_strategy="no", report_to="none", disable_tqdm=True,
                                         dataloader_pin_memory=False)
    CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=BinaryCrossEntropyLoss(model)).train()
    model.save_pretrained(str(out))
    return out


def test_shrink_keeps_evenly_spaced_layers_and_refuses_bad_counts(teacher: Path) -> None:
    from rag_rerank.models import load_cross_encoder

    model = load_cross_encoder(str(teacher), device="cpu")
    student, keep = shrink_layers(model, 1)
    assert keep == [1] and student.model.config.num_hidden_layers == 1
    assert sum(p.numel() for p in student.model.parameters()) < sum(p.numel() for p in model.model.parameters())
    assert len(model.model.bert.encoder.layer) == 2  # the teacher is untouched
    for bad in (0, 2, 5):
        with pytest.raises(ConfigError, match="between 1 and 1"):
            shrink_layers(model, bad)


def test_the_student_learns_the_teachers_scores_and_loads_everywhere(teacher: Path, tmp_path: Path) -> None:
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification

    from rag_rerank.models import load_cross_encoder

    identity = torch.nn.Identity()  # logits (ST's activation_fn=None means the model's default, a sigmoid)
    groups = _groups()
    pairs = [(g["query"], d) for g in groups for d in [g["positive"], *g["negatives"]]]
    t_model = load_cross_encoder(str(teacher), device="cpu")
    t_scores = t_model.predict(pairs, activation_fn=identity, convert_to_numpy=True)

    res = distill_reranker(teacher, tmp_path / "student", groups=groups,
                           config=DistillConfig(layers=1, epochs=10, batch_size=16, learning_rate=1e-4))
    student = CrossEncoder(str(tmp_path / "student"), device="cpu")
    after = float(np.mean((student.predict(pairs, activation_fn=identity, convert_to_numpy=True) - t_scores) ** 2))
    # the student keeps the teacher's logit scale (labels are logits, not sigmoids) and its ranking
    assert t_scores.std() > 1.0 and after < 0.01 * t_scores.var(), (t_scores.var(), after)
    assert res.kept_layers == [1] and res.teacher_layers == 2 and res.pairs == len(set(pairs))
    assert res.student_params < res.teacher_params
    hf = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "student"))
    assert hf.config.num_hidden_layers == 1 and hf.config.num_labels == 1


def _negated(model_dir: Path, out: Path) -> Path:
    """The same model with its head's sign flipped: it ranks every list in reverse."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
    model.classifier.weight.data.mul_(-1.0)
    model.classifier.bias.data.mul_(-1.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(out)
    return out


def test_compare_on_validation_keeps_a_student_at_parity_only(teacher: Path, tmp_path: Path) -> None:
    from rag_rerank.rerank.reranker import Reranker

    groups = _groups()
    queries = {f"q{i}": g["query"] for i, g in enumerate(groups[:10])}
    corpus = {f"d{i}": {"text": g["positive"]} for i, g in enumerate(groups[:10])}
    ids = sorted(corpus)
    run = {q: {d: 1.0 / (1 + j) for j, d in enumerate(ids)} for q in queries}
    scorer = Reranker(str(teacher), backend="torch", cache_size=0)
    qrels = {}  # the teacher's own first choice is relevant, so the teacher ranks it first and its reverse last
    for q, text in queries.items():
        scores = scorer.predict([(text, corpus[d]["text"]) for d in ids])
        qrels[q] = {ids[int(np.argmax(scores))]: 1}
    same = compare_on_validation(teacher, teacher, queries, qrels, corpus, run, alpha=1.0, top_k=10)
    assert same["loss"] == 0 and same["kept"] and same["queries"] == 10 and same["teacher_mrr@10"] == 1.0
    worse = compare_on_validation(teacher, _negated(teacher, tmp_path / "neg"), queries, qrels, corpus, run,
                                  alpha=1.0, top_k=10)
    assert worse["student_mrr@10"] < 0.5 and worse["loss"] > 0.005 and not worse["kept"]


def test_cli_distill_and_missing_groups(teacher: Path, tmp_path: Path) -> None:
    groups = tmp_path / "groups.jsonl"
    groups.write_text("\n".join(json.dumps(g) for g in _groups()), encoding="utf-8")
    r = CliRunner().invoke(main, ["distill", str(teacher), "--layers", "1", "--groups", str(groups), "--out",
                                  str(tmp_path / "s"), "--max-steps", "2"])
    assert r.exit_code == 0, r.output
    assert "layers [1] of 2" in r.output and (tmp_path / "s" / "config.json").is_file()
    with pytest.raises(DataError, match="train_groups.jsonl"):
        distill_reranker(teacher, tmp_path / "s2")
