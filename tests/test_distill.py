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
def teacher(make_sharp_cross_encoder) -> Path:
    """A 2-layer tiny reranker whose scores vary with the words (a fixed teacher to copy)."""
    pairs = [(g["query"], g["positive"]) for g in _groups()]
    return make_sharp_cross_encoder(pairs)


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
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification

    from rag_rerank.models import load_cross_encoder

    groups = _groups()
    pairs = [(g["query"], d) for g in groups for d in [g["positive"], *g["negatives"]]]
    t_model = load_cross_encoder(str(teacher), device="cpu")
    t_scores = t_model.predict(pairs, activation_fn=None, convert_to_numpy=True)
    untrained, _ = shrink_layers(t_model, 1)
    before = float(np.mean((untrained.predict(pairs, convert_to_numpy=True) - t_scores) ** 2))

    res = distill_reranker(teacher, tmp_path / "student", groups=groups,
                           config=DistillConfig(layers=1, epochs=10, batch_size=16, learning_rate=1e-4))
    student = CrossEncoder(str(tmp_path / "student"), device="cpu")
    after = float(np.mean((student.predict(pairs, convert_to_numpy=True) - t_scores) ** 2))
    assert after < 0.8 * before, (before, after)
    assert res.kept_layers == [1] and res.teacher_layers == 2 and res.pairs == len(set(pairs))
    assert res.student_params < res.teacher_params
    hf = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "student"))
    assert hf.config.num_hidden_layers == 1 and hf.config.num_labels == 1


def test_compare_on_validation_keeps_a_student_at_parity_only(teacher: Path, tmp_path: Path,
                                                              tiny_cross_encoder_dir: Path) -> None:
    groups = _groups()
    queries = {f"q{i}": g["query"] for i, g in enumerate(groups[:10])}
    corpus = {f"d{i}": {"text": g["positive"]} for i, g in enumerate(groups[:10])}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(10)}
    run = {q: {d: 1.0 / (1 + j) for j, d in enumerate(sorted(corpus))} for q in queries}
    same = compare_on_validation(teacher, teacher, queries, qrels, corpus, run, alpha=1.0, top_k=10)
    assert same["loss"] == 0 and same["kept"] and same["queries"] == 10
    worse = compare_on_validation(teacher, tiny_cross_encoder_dir, queries, qrels, corpus, run, alpha=1.0, top_k=10)
    assert worse["kept"] == (worse["loss"] <= 0.005)
    assert worse["teacher_mrr@10"] > worse["student_mrr@10"]  # an untrained model does not rank like the teacher


def test_cli_distill_and_missing_groups(teacher: Path, tmp_path: Path) -> None:
    groups = tmp_path / "groups.jsonl"
    groups.write_text("\n".join(json.dumps(g) for g in _groups()), encoding="utf-8")
    r = CliRunner().invoke(main, ["distill", str(teacher), "--layers", "1", "--groups", str(groups), "--out",
                                  str(tmp_path / "s"), "--max-steps", "2"])
    assert r.exit_code == 0, r.output
    assert "layers [1] of 2" in r.output and (tmp_path / "s" / "config.json").is_file()
    with pytest.raises(DataError, match="train_groups.jsonl"):
        distill_reranker(teacher, tmp_path / "s2")
