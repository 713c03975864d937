"""generate -> index -> mine -> train through the CLI, on a stub LLM and tiny models (seconds, not minutes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag_rerank.cli import main
from rag_rerank.generate.dataset import create_qa_dataset
from rag_rerank.generate.store import load_qa_dataset

sys.path.insert(0, str(Path(__file__).parent))
from openai_stub_server import StubOpenAIServer  # noqa: E402

from rag_rerank.data import SAMPLE_DOCS  # noqa: E402

DOCS = ("Geology.md", "Black_Death.txt", "Packet_switching.md", "Construction.md", "Amazon_rainforest.md")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A real generated dataset: 5 documents, questions from the scripted stub server (openai SDK path)."""
    root = tmp_path_factory.mktemp("ft")
    docs = root / "docs"
    docs.mkdir()
    for name in DOCS:
        (docs / name).write_text((SAMPLE_DOCS / name).read_text(encoding="utf-8")[:4000], encoding="utf-8")
    out = root / "data"
    with StubOpenAIServer() as srv:
        summary = create_qa_dataset(
            docs, out, llm="openai:stub", base_url=srv.base_url, chunk_tokens=128, tokenizer=str(minilm_dir),
            split_ratios=(0.6, 0.2, 0.2), show_progress_bar=False,
        )
    assert summary.ok and summary.n_questions > 20
    return out


@pytest.fixture(scope="module")
def index_dir(dataset: Path, tiny_bi_encoder_dir: Path) -> Path:
    idx = dataset.parent / "idx"
    result = CliRunner().invoke(main, ["index", str(dataset), "--out", str(idx), "--bi-encoder",
                                       str(tiny_bi_encoder_dir)])
    assert result.exit_code == 0, result.output
    return idx


def test_mine_writes_groups_without_positives(dataset, index_dir, tiny_bi_encoder_dir, tmp_path):
    out = tmp_path / "groups.jsonl"
    result = CliRunner().invoke(main, [
        "mine", str(dataset), "--index", str(index_dir), "--bi-encoder", str(tiny_bi_encoder_dir),
        "--out", str(out), "--group-size", "4", "--num-negatives", "2", "--num-random", "1",
    ])
    assert result.exit_code == 0, result.output
    assert "removed" in result.output  # the guard report is shown
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ds = load_qa_dataset(dataset)
    _, queries, _ = ds.split("train")
    assert len(rows) == len(queries)
    for row in rows:
        assert len(row["negatives"]) == 3
        assert row["positive"] not in row["negatives"]
        assert len(set(row["negatives"])) == 3


def test_mine_split_mines_an_earlier_search_again_as_a_fresh_search_would(dataset, index_dir):
    import dataclasses

    from rag_rerank.errors import ConfigError
    from rag_rerank.retrieval.store import load_index
    from rag_rerank.train.finetune import mine_split
    from rag_rerank.train.mining import MiningConfig

    ds, index = load_qa_dataset(dataset), load_index(index_dir)
    first = mine_split(ds, index, "train", mining=MiningConfig(), group_size=4)
    assert first.margin_run is not None  # the dense run the margin guard used, kept for a later mining
    other = dataclasses.replace(MiningConfig(), rank_min=3, num_negatives=2, sampling_strategy="random")
    fresh = mine_split(ds, index, "train", mining=other, group_size=4)
    again = mine_split(ds, index, "train", mining=other, group_size=4, searched=first)
    assert again.run is first.run and again.groups == fresh.groups and again.groups != first.groups
    assert again.mining.report == fresh.mining.report
    with pytest.raises(ConfigError, match="other questions"):
        mine_split(ds, index, "validation", mining=other, searched=first)
    assert first.depth == again.depth == 30  # the window ends at rank 30: the search went 30 deep
    with pytest.raises(ConfigError, match="searched 30 deep and this mining needs 50"):
        mine_split(ds, index, "train", mining=dataclasses.replace(other, rank_max=50), searched=first)


def test_train_cli_saves_a_model_that_loads_everywhere(dataset, index_dir, tiny_bi_encoder_dir,
                                                       tiny_cross_encoder_dir, tmp_path):
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "model"
    result = CliRunner().invoke(main, [
        "train", str(dataset), "--index", str(index_dir), "--bi-encoder", str(tiny_bi_encoder_dir),
        "--base-model", str(tiny_cross_encoder_dir), "--out", str(out), "--max-steps", "4",
        "--batch-size", "4", "--group-size", "3", "--max-length", "96", "--sanity-gate", "off",
    ])
    assert result.exit_code == 0, result.output
    assert "model saved to" in result.output
    card = (out / "README.md").read_text()
    assert str(tiny_cross_encoder_dir) in card  # the card names the base model
    scores = CrossEncoder(str(out), device="cpu").predict([("a question", "a passage")], show_progress_bar=False)
    assert scores.shape == (1,)
    assert AutoModelForSequenceClassification.from_pretrained(str(out)).config.num_labels == 1
    assert (out / "train_groups.jsonl").is_file()
    # the fusion alpha was chosen on the validation split, saved, and reported
    from rag_rerank.rerank.fusion import load_fusion

    fusion = load_fusion(out)
    assert fusion is not None and fusion.chosen_on == "synthetic validation split"
    assert fusion.by_alpha[f"{fusion.best_alpha:g}"] == max(fusion.by_alpha.values())
    from rag_rerank.train.recipes import get_recipe

    assert fusion.rule == (get_recipe("default").alpha_rule or "best")  # the recipe's rule picked it
    # 15 validation questions are too few to trust a reranker: the shipped weight falls back to the first stage
    assert fusion.queries < 50 and fusion.status == "not_enough_data" and fusion.alpha == 0.0
    assert f"fusion alpha {fusion.alpha:g} chosen" in result.output


def test_index_over_another_corpus_is_refused(dataset, tiny_bi_encoder_dir, tmp_path):
    from rag_rerank.io import write_jsonl

    other = tmp_path / "other.jsonl"
    write_jsonl(other, [{"_id": "x1", "title": "", "text": "unrelated text"}, {"_id": "x2", "text": "more"}])
    idx = tmp_path / "other-idx"
    assert CliRunner().invoke(main, ["index", str(other), "--out", str(idx), "--no-dense"]).exit_code == 0
    result = CliRunner().invoke(main, ["mine", str(dataset), "--index", str(idx), "--out", str(tmp_path / "g.jsonl")])
    assert result.exit_code != 0
    assert "different corpus" in result.output


def test_new_head_detection(tiny_cross_encoder_dir, tiny_bi_encoder_dir):
    from rag_rerank.train.config import has_new_head

    assert has_new_head("embedded:minilm-ce")  # seeded random head
    assert not has_new_head(str(tiny_cross_encoder_dir))  # a checkpoint with classifier weights
    # a plain encoder (no classifier weights, e.g. the bi-encoder's BertModel) gets a new head as a cross-encoder
    assert (tiny_bi_encoder_dir / "model.safetensors").is_file()
    assert has_new_head(str(tiny_bi_encoder_dir))


@pytest.mark.slow
def test_torchrun_two_processes_train_the_same_model(dataset, index_dir, tiny_bi_encoder_dir, tiny_cross_encoder_dir,
                                                     tmp_path):
    """Scale-out: `torchrun --nproc_per_node 2 -m rag_rerank train ...` (gloo on CPU) runs the training of one process
    (same global batch, steps and schedule: each process takes half of every batch; the warm start too) to a model
    close to the one-process model, and only the main process writes (one model, one CSV row per evaluation, one
    fusion.json)."""
    import csv
    import os
    import shutil
    import subprocess

    from rag_rerank.rerank.fusion import load_fusion

    base = tmp_path / "base"  # the tiny cross-encoder without dropout, so the two runs can be compared exactly
    shutil.copytree(tiny_cross_encoder_dir, base)
    config = json.loads((base / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (base / "config.json").write_text(json.dumps(config))
    args = ["train", str(dataset), "--index", str(index_dir), "--bi-encoder", str(tiny_bi_encoder_dir),
            "--base-model", str(base), "--max-steps", "6", "--batch-size", "4",
            "--group-size", "3", "--max-length", "96", "--sanity-gate", "off", "--precision", "no",
            "--head-lr", "0.001"]  # a head learning rate: the warm start runs too (its own trainer, under DDP)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # fp32 both: bf16 autocast is for one process on CPU
    one = subprocess.run([sys.executable, "-m", "rag_rerank", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=900, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = Path(sys.executable).with_name("torchrun")
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "rag_rerank", *args,
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=900, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("model saved to") == 1  # the main process reports
    for run in ("one", "two"):
        with (tmp_path / run / "eval" / "reranking_evaluation_val_results@10.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert [r["steps"] for r in rows] == sorted({r["steps"] for r in rows}, key=int)  # no row twice
    assert load_fusion(tmp_path / "two") is not None
    from safetensors.torch import load_file

    w0, w1, w2 = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("base", "one", "two"))

    def dist(a: dict, b: dict) -> float:
        return float(sum(((a[k].float() - b[k].float()) ** 2).sum() for k in a if k in b) ** 0.5)

    trained = dist(w1, w0)
    print(f"weights: |one-base| {trained:.4f}  |two-base| {dist(w2, w0):.4f}  |two-one| {dist(w2, w1):.4f}")
    assert trained > 0 and dist(w2, w0) > 0.5 * trained  # both trained
    # the same training: the two-process model is far closer to the one-process model than to where both started
    # (measured 0.38 of the training's own distance; not bit-identical)
    assert dist(w2, w1) < 0.5 * trained


def test_finetune_residual_training_scores_groups_with_the_first_stage(dataset, index_dir, tiny_bi_encoder_dir,
                                                                       tiny_cross_encoder_dir, tmp_path):
    """``prior_weight`` (residual training, measured in pipelines/residual_training.py and off by default): finetune
    adds each group's first-stage z-scores from the index, and the weight is fitted on them."""
    from rag_rerank.io import iter_jsonl
    from rag_rerank.train.finetune import finetune

    out = tmp_path / "residual"
    res = finetune(dataset, out, index_dir=index_dir, bi_encoder=str(tiny_bi_encoder_dir),
                   base_model=str(tiny_cross_encoder_dir), max_steps=2, batch_size=4, train_group_size=3,
                   max_length=96, warm_start_steps=0, sanity_gate="off", prior_weight="auto")
    rows = list(iter_jsonl(out / "train_groups.jsonl"))
    assert rows and all(len(r["prior"]) == 1 + len(r["negative_ids"]) for r in rows)
    assert all(max(r["prior"]) > min(r["prior"]) for r in rows)  # real first-stage scores, not a constant
    assert res.data_summary["prior_weight"] > 0
    assert res.eval_after and res.first_stage  # evaluated on validation, as logit + weight * prior
