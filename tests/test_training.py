"""Reranker and bi-encoder training: tiny models end to end, the sanity gate, the seeds' legacy fit path."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from rag_rerank.errors import DataError
from rag_rerank.train.bi_encoder import BiEncoderTrainingConfig, train_bi_encoder
from rag_rerank.train.config import RerankerTrainingConfig
from rag_rerank.train.evaluators import MSEEvaluator
from rag_rerank.train.guards import TrainingCollapsedError
from rag_rerank.train.legacy import legacy_fit
from rag_rerank.train.reranker_trainer import train_reranker

WORDS = ("apple banana cherry delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango").split()


def synthetic_groups(n: int, seed: int) -> list[dict]:
    """The positive shares the query's words; the negatives share none."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ws = rng.sample(WORDS, 3)
        other = [w for w in WORDS if w not in ws]
        rows.append({"query": " ".join(ws), "positive": f"the {ws[0]} and {ws[1]} with {ws[2]}",
                     "negatives": [" ".join(rng.sample(other, 4)) for _ in range(4)]})
    return rows


def eval_samples(groups: list[dict]) -> list[dict]:
    """First stage puts the positive third of five."""
    return [{"query": g["query"], "positive": [g["positive"]],
             "documents": g["negatives"][:2] + [g["positive"]] + g["negatives"][2:]} for g in groups]


FAST = dict(batch_size=8, max_length=32, learning_rate=3e-3, head_learning_rate=1e-2, eval_steps=10,
            show_progress_bar=False, seed=0)
FAST_NO_HEAD = {k: v for k, v in FAST.items() if k != "head_learning_rate"}


@pytest.fixture(scope="module")
def trained(tiny_cross_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("reranker")
    cfg = RerankerTrainingConfig(max_steps=30, **FAST)
    res = train_reranker(str(tiny_cross_encoder_dir), synthetic_groups(64, 0), out_dir=out, config=cfg,
                         eval_samples=eval_samples(synthetic_groups(12, 1)), command="pytest tiny")
    return res


def test_tiny_listwise_training_learns(trained) -> None:
    losses = [loss for _, loss in trained.train_loss]
    assert trained.steps == 30
    assert losses[0] == pytest.approx(math.log(5), abs=0.05)  # starts at the uniform level
    assert np.mean(losses[-5:]) < 0.5 * losses[0]
    assert trained.eval_after["val_mrr@10"] > trained.first_stage["val_base_mrr@10"]
    assert not trained.collapsed and trained.improved and trained.verdict.startswith("IMPROVED")


def test_step_seconds_count_the_optimiser_steps_without_the_evaluations(trained) -> None:
    """adapt's plan learns a step's cost from step_seconds: evaluations (3 here) and saving are left out."""
    assert trained.step_seconds is not None and 0 < trained.step_seconds < trained.wall_time_s / trained.steps


def test_saved_dir_reloads_in_both_libraries_and_scores_agree(trained) -> None:
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = str(trained.out_dir)
    pairs = [("apple banana cherry", "the apple and banana with cherry"), ("apple banana cherry", "kilo lima mike")]
    ce_scores = CrossEncoder(path, device="cpu").predict(pairs, show_progress_bar=False)
    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        logits = hf(**tok([p[0] for p in pairs], [p[1] for p in pairs], padding=True, truncation=True,
                          max_length=32, return_tensors="pt")).logits.view(-1)
    np.testing.assert_allclose(ce_scores, torch.sigmoid(logits).numpy(), atol=1e-5)  # CE = sigmoid(logit)
    assert ce_scores[0] > ce_scores[1]
    assert not (trained.out_dir / "checkpoints").exists()  # cleaned after a good run
    assert (trained.out_dir / "eval" / "reranking_evaluation_val_results@10.csv").is_file()


def test_model_card_records_run(trained) -> None:
    card = (trained.out_dir / "README.md").read_text()
    assert "**Verdict: IMPROVED" in card
    assert "| val_mrr@10 |" in card and "first stage" in card
    assert "pytest tiny" in card and '"head_learning_rate": 0.01' in card


def test_sanity_gate_fires_on_a_broken_setup(tiny_cross_encoder_dir: Path, tmp_path: Path) -> None:
    cfg = RerankerTrainingConfig(max_steps=20, **{**FAST, "learning_rate": 0.0, "head_learning_rate": 0.0,
                                                  "eval_steps": 5})
    groups = synthetic_groups(40, 2)
    res = train_reranker(str(tiny_cross_encoder_dir), groups, out_dir=tmp_path / "a", config=cfg,
                         eval_samples=eval_samples(synthetic_groups(8, 3)))
    assert res.collapsed and res.steps < 20 and res.verdict.startswith("COLLAPSED")
    assert "COLLAPSED" in (tmp_path / "a" / "README.md").read_text()
    with pytest.raises(TrainingCollapsedError, match="head_learning_rate"):
        train_reranker(str(tiny_cross_encoder_dir), groups, out_dir=tmp_path / "b",
                       config=dataclasses.replace(cfg, sanity_gate="raise", eval_steps=20))
    # "warn": the run goes on and the final model is judged; the verdict says the gate fired on the way
    warned = train_reranker(str(tiny_cross_encoder_dir), groups, out_dir=tmp_path / "c",
                            config=dataclasses.replace(cfg, sanity_gate="warn"),
                            eval_samples=eval_samples(synthetic_groups(8, 3)))
    assert warned.steps == 20 and warned.collapsed and warned.improved is False
    assert warned.verdict.startswith("DID NOT HELP") and "sanity gate warned mid-run" in warned.verdict


def test_eval_after_is_the_saved_models_own_validation_score(trained, tiny_cross_encoder_dir: Path) -> None:
    """eval_after is read from the best checkpoint's logged evaluation; it must equal scoring the saved model."""
    from sentence_transformers import CrossEncoder

    from rag_rerank.train.evaluators import RerankingEvaluator

    fresh = RerankingEvaluator(eval_samples(synthetic_groups(12, 1)), name="val", write_csv=False,
                               long_documents="window")(CrossEncoder(str(trained.out_dir), max_length=32))
    assert set(trained.eval_after) == {k for k in fresh if "base_" not in k}
    for k, v in trained.eval_after.items():
        assert v == pytest.approx(fresh[k], abs=1e-9), k


@pytest.mark.parametrize("scheduler", ["constant_with_warmup", "linear", "warmup_stable_decay"])
def test_lr_schedule_reaches_the_trainer_and_every_checkpoint_is_kept(
        tiny_cross_encoder_dir: Path, tmp_path: Path, scheduler: str) -> None:
    cfg = RerankerTrainingConfig(max_steps=12, lr_scheduler=scheduler, warmup_ratio=0.25, logging_steps=1,
                                 keep_checkpoints=True, sanity_gate="off", **{**FAST, "eval_steps": 4})
    train_reranker(str(tiny_cross_encoder_dir), synthetic_groups(40, 5), out_dir=tmp_path, config=cfg,
                   eval_samples=eval_samples(synthetic_groups(6, 6)))
    kept = sorted(int(c.name.split("-")[1]) for c in (tmp_path / "checkpoints").glob("checkpoint-*"))
    assert kept == [4, 8, 12]  # one per evaluation, none pruned
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-12" / "trainer_state.json").read_text())
    lrs = [h["learning_rate"] for h in state["log_history"] if "learning_rate" in h]
    assert len(lrs) == 12 and lrs[0] < lrs[2]  # warm-up over the first 3 steps
    after = lrs[3:]
    if scheduler == "constant_with_warmup":
        assert max(after) == pytest.approx(min(after))
    elif scheduler == "warmup_stable_decay":  # 3 warm-up, 6 stable, 3 decay steps (decay_ratio 0.25)
        stable, decay = after[:6], after[6:]
        assert max(stable) == pytest.approx(min(stable)) and max(decay) <= stable[0]
        assert all(a > b for a, b in zip(decay, decay[1:], strict=False)) and decay[-1] < 0.6 * stable[0]
    else:
        assert all(a > b for a, b in zip(after, after[1:], strict=False)) and after[-1] < 0.2 * after[0]


def test_lr_scheduler_name_is_checked_up_front() -> None:
    with pytest.raises(ValueError, match="lr_scheduler='cosnie'.*constant_with_warmup"):
        RerankerTrainingConfig(lr_scheduler="cosnie")


def test_bce_with_mse_evaluator_through_the_trainer(tiny_cross_encoder_dir: Path, tmp_path: Path) -> None:
    rows = [{"query": g["query"], "text": t, "label": lab} for g in synthetic_groups(16, 4)
            for t, lab in [(g["positive"], 1.0), (g["negatives"][0], 0.0)]]
    ev = MSEEvaluator([(r["query"], r["text"]) for r in rows[:8]], [r["label"] for r in rows[:8]], name="dev")
    res = train_reranker(str(tiny_cross_encoder_dir), rows, out_dir=tmp_path,
                         config=RerankerTrainingConfig(loss="bce", max_steps=8, sanity_gate="off", **FAST),
                         evaluator=ev)
    csv_rows = list(csv.reader((tmp_path / "eval" / "mse_evaluation_dev_results.csv").open()))
    assert csv_rows[0] == ["epoch", "steps", "mse"] and len(csv_rows) >= 2
    assert "dev_mse" in res.eval_after and res.eval_after["dev_mse"] >= 0


def test_training_rejects_bad_rows(tiny_cross_encoder_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no usable training rows"):
        train_reranker(str(tiny_cross_encoder_dir), [{"query": "q", "positive": "p", "negatives": []}],
                       out_dir=tmp_path)
    with pytest.raises(DataError, match="lacks"):
        train_reranker(str(tiny_cross_encoder_dir), [{"question": "q"}], out_dir=tmp_path)
    with pytest.raises(ValueError, match="loss"):
        RerankerTrainingConfig(loss="pairwise")  # type: ignore[arg-type]


def _seed_style_fit(model_dir: Path, out: Path, fit) -> None:  # noqa: ANN001
    """Exactly the seeds' code: InputExample with continuous labels, a DataLoader, an MSE evaluator."""
    from sentence_transformers import CrossEncoder, InputExample
    from torch.utils.data import DataLoader

    model = CrossEncoder(str(model_dir), num_labels=1, device="cpu")
    train_samples = [InputExample(texts=[g["query"], g["positive"]], label=0.9) for g in synthetic_groups(12, 5)]
    train_samples += [InputExample(texts=[g["query"], g["negatives"][0]], label=0.1) for g in synthetic_groups(12, 5)]
    train_dataloader = DataLoader(train_samples, shuffle=True, batch_size=8)
    evaluator = MSEEvaluator([ex.texts for ex in train_samples[:6]], [ex.label for ex in train_samples[:6]],
                             name="sts-dev")
    fit(model, train_dataloader=train_dataloader, evaluator=evaluator, epochs=2, warmup_steps=1,
        output_path=str(out))


def test_legacy_fit_keeps_the_seeds_contract(tiny_cross_encoder_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from sentence_transformers import CrossEncoder

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    _seed_style_fit(tiny_cross_encoder_dir, out, legacy_fit)
    rows = list(csv.reader((out / "mse_evaluation_sts-dev_results.csv").open()))
    assert rows[0] == ["epoch", "steps", "mse"]
    assert [r[:2] for r in rows[1:]] == [["0", "-1"], ["1", "-1"]]  # one row per epoch, pre-v4 style
    assert CrossEncoder(str(out), device="cpu").predict([("a", "b")], show_progress_bar=False).shape == (1,)
    assert not (tmp_path / "checkpoints").exists()


def test_sentence_transformers_own_fit_runs_our_evaluator(tiny_cross_encoder_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """ST 6.2's CrossEncoder.fit still works with MSEEvaluator; it puts the CSV under output_path/eval."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    _seed_style_fit(tiny_cross_encoder_dir, out, lambda m, **kw: m.fit(show_progress_bar=False, **kw))
    rows = list(csv.reader((out / "eval" / "mse_evaluation_sts-dev_results.csv").open()))
    assert rows[0] == ["epoch", "steps", "mse"] and len(rows) == 3


def test_bi_encoder_mnrl(tiny_bi_encoder_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    rows = [{"query": g["query"], "positive": g["positive"], "negative": g["negatives"][0]}
            for g in synthetic_groups(32, 6)]
    out = train_bi_encoder(str(tiny_bi_encoder_dir), rows, out_dir=tmp_path / "bi",
                           config=BiEncoderTrainingConfig(max_steps=4, batch_size=8, show_progress_bar=False))
    before = SentenceTransformer(str(tiny_bi_encoder_dir), device="cpu").encode(["apple banana"])
    after = SentenceTransformer(str(out), device="cpu").encode(["apple banana"])
    assert after.shape == before.shape and not np.allclose(after, before)  # trained and reloadable
    with pytest.raises(DataError, match="agree"):
        train_bi_encoder(str(tiny_bi_encoder_dir), [rows[0], {"query": "q", "positive": "p"}], out_dir=tmp_path)


def test_bi_encoder_cached_mnrl_learns_to_match_queries_to_their_passages(tiny_bi_encoder_dir: Path,
                                                                          tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    rows = [{"query": g["query"], "positive": g["positive"]} for g in synthetic_groups(32, 7)]

    def margin(model_dir: Path) -> float:
        """Mean cosine of each query with its own passage minus with the other passages."""
        st = SentenceTransformer(str(model_dir), device="cpu")
        q = st.encode([r["query"] for r in rows], normalize_embeddings=True)
        p = st.encode([r["positive"] for r in rows], normalize_embeddings=True)
        sim = q @ p.T
        return float(np.mean(np.diag(sim)) - (sim.sum() - np.trace(sim)) / (sim.size - len(rows)))

    out = train_bi_encoder(str(tiny_bi_encoder_dir), rows, out_dir=tmp_path / "bi", config=BiEncoderTrainingConfig(
        max_steps=12, batch_size=16, learning_rate=2e-3, cached=True, mini_batch_size=4, show_progress_bar=False))
    assert margin(out) > margin(tiny_bi_encoder_dir) + 0.05  # GradCache's chunks still train the in-batch task


# --- slow: the real embedded:minilm-ce on SQuAD passages ------------------------------------------------------


def _squad_groups(squad_beir: Path, n_train: int, n_val: int, seed: int = 0):
    """SQuAD dev questions with their gold passage; negatives are random passages of *other* articles."""
    from rag_rerank.io import load_beir

    corpus, queries, qrels = load_beir(squad_beir)
    ids = sorted(corpus)
    rng = random.Random(seed)
    qids = sorted(qrels)
    rng.shuffle(qids)
    rows = []
    for qid in qids[: n_train + n_val]:
        gold = next(iter(qrels[qid]))
        title = corpus[gold]["title"]
        negs = rng.sample([d for d in ids if corpus[d]["title"] != title], 5)
        rows.append((queries[qid], corpus[gold]["text"], [corpus[d]["text"] for d in negs]))
    train = [{"query": q, "positive": p, "negatives": n[:4]} for q, p, n in rows[:n_train]]
    # validation: the gold passage at a random position among 6 candidates (a random first stage)
    val = []
    for q, p, n in rows[n_train:]:
        docs = list(n)
        docs.insert(rng.randrange(len(docs) + 1), p)
        val.append({"query": q, "positive": [p], "documents": docs})
    return train, val


@pytest.mark.slow
def test_real_minilm_ce_listwise_moves_above_base_rate(squad_beir: Path, tmp_path: Path) -> None:
    """150 SQuAD questions x (gold + 4 random other-article negatives), 40 steps of the listwise default: a
    BCE-style collapse stays at the random-order MRR (~0.41 for 6 candidates); this must clear it clearly."""
    train, val = _squad_groups(squad_beir, n_train=160, n_val=30)
    cfg = RerankerTrainingConfig(max_steps=40, batch_size=4, max_length=96, eval_steps=40,
                                 show_progress_bar=False, sanity_gate="warn")
    res = train_reranker("embedded:minilm-ce", train, out_dir=tmp_path, config=cfg, eval_samples=val)
    random_mrr = sum(1 / r for r in range(1, 7)) / 6
    assert res.eval_after["val_mrr@10"] > random_mrr + 0.15, (res.eval_after, res.train_loss)
    assert np.mean([v for _, v in res.train_loss[-5:]]) < math.log(5) - 0.2


def test_group_columns_keep_teacher_scores_aligned_with_the_sampled_negatives() -> None:
    from rag_rerank.train.reranker_trainer import _group_columns

    rows = [{"query": f"q{i}", "positive": "p" * (i + 1), "negatives": ["n" * (10 + j) for j in range(6)]}
            for i in range(20)]
    for r in rows:  # a teacher whose score is the text's length, so alignment can be checked
        r["teacher"] = [len(r["positive"])] + [len(n) for n in r["negatives"]]
    cols, dropped = _group_columns(rows, group_size=4, seed=3, label="teacher")
    assert dropped == 0 and len(cols["label"]) == 20
    for b in range(20):
        texts = [cols["positive"][b]] + [cols[f"negative_{j}"][b] for j in (1, 2, 3)]
        assert cols["label"][b] == [float(len(t)) for t in texts]
    plain, _ = _group_columns(rows, group_size=4, seed=3)
    assert {k: v for k, v in cols.items() if k != "label"} == plain  # the same sample with or without a teacher
    for r in rows:  # residual training's prior scores go through the same alignment
        r["prior"] = [-float(t) for t in r["teacher"]]
    prior, _ = _group_columns(rows, group_size=4, seed=3, label="prior")
    assert prior["label"] == [[-t for t in ts] for ts in cols["label"]]


def _with_prior(rows: list[dict], good: float) -> list[dict]:
    """A first stage that ranks the positive first in the share ``good`` of the groups and last in the others."""
    out = []
    for i, r in enumerate(rows):
        k = len(r["negatives"])
        right = i < good * len(rows)
        out.append({**r, "prior": [1.5] + [0.0] * k if right else [-1.5] + [0.0] * k})
    return out


def test_fit_prior_weight_trusts_a_first_stage_as_far_as_the_groups_bear_it_out() -> None:
    from rag_rerank.train.groups import fit_prior_weight

    rows = synthetic_groups(40, 9)
    always, never, mostly = (fit_prior_weight(_with_prior(rows, g)) for g in (1.0, 0.0, 0.8))
    assert always == 10.0 and never == 0.25  # the ends of the grid
    assert never < mostly < always
    with pytest.raises(DataError, match="prior"):
        fit_prior_weight(rows)


def test_residual_training_learns_what_the_first_stage_misses(tiny_cross_encoder_dir: Path, tmp_path: Path) -> None:
    rows = _with_prior(synthetic_groups(64, 0), good=0.5)
    samples = eval_samples(synthetic_groups(12, 1))
    for s in samples:  # the first stage's order (positive third of five), as z-scores
        s["prior"] = [1.2, 0.6, 0.0, -0.6, -1.2]
    cfg = RerankerTrainingConfig(max_steps=30, prior_weight="auto", **FAST)
    res = train_reranker(str(tiny_cross_encoder_dir), rows, out_dir=tmp_path / "m", config=cfg, eval_samples=samples)
    weight = res.data_summary["prior_weight"]
    assert 0 < weight < 10  # a first stage right on half the groups is trusted, not followed blindly
    assert res.eval_after["val_mrr@10"] > res.first_stage["val_base_mrr@10"] + 0.3
    with pytest.raises(DataError, match="prior"):  # residual training without prior scores says what to add
        train_reranker(str(tiny_cross_encoder_dir), synthetic_groups(8, 2), out_dir=tmp_path / "n", config=cfg)


def test_warm_start_distils_the_teacher_before_the_listwise_stage(tiny_cross_encoder_dir: Path, tmp_path: Path):
    rows = synthetic_groups(48, 3)
    for r in rows:  # teacher: word overlap with the query, the kind of signal a bi-encoder gives
        q = set(r["query"].split())
        r["teacher"] = [len(q & set(t.split())) / 3 for t in [r["positive"], *r["negatives"]]]
    cfg = RerankerTrainingConfig(max_steps=2, train_group_size=5, sanity_gate="off", warm_start_steps=30,
                                 warm_start_max_length=24, **FAST)
    res = train_reranker(str(tiny_cross_encoder_dir), rows, out_dir=tmp_path / "m", config=cfg)
    warm = res.data_summary["warm_start"]
    assert warm["steps"] == 30 and warm["max_length"] == 24
    losses = [v for _, v in warm["loss"]]
    assert losses[-1] < 0.5 * losses[0]  # the margins were learned
    assert res.steps == 2  # then the listwise stage ran its own steps
    # groups without teacher scores: the warm start is skipped, with a warning, and training goes on
    plain = train_reranker(str(tiny_cross_encoder_dir), synthetic_groups(16, 4), out_dir=tmp_path / "n", config=cfg)
    assert plain.data_summary["warm_start"] is None and plain.steps == 2


def test_head_learning_rate_auto_follows_the_base_whatever_config_is_passed(tiny_cross_encoder_dir: Path,
                                                                            tmp_path: Path) -> None:
    from transformers import BertModel

    from rag_rerank.train.config import NEW_HEAD_LEARNING_RATE, resolve_head_learning_rate

    encoder = tmp_path / "encoder"  # a plain encoder: no classifier weights, so a new head
    BertModel.from_pretrained(str(tiny_cross_encoder_dir)).save_pretrained(encoder)
    assert resolve_head_learning_rate("auto", str(tiny_cross_encoder_dir)) is None  # trained classifier present
    assert resolve_head_learning_rate("auto", str(encoder)) == NEW_HEAD_LEARNING_RATE
    assert resolve_head_learning_rate(3e-4, str(tiny_cross_encoder_dir)) == 3e-4
    # a whole config passed in still gets the detection (it used to skip it)
    cfg = RerankerTrainingConfig(max_steps=1, train_group_size=3, sanity_gate="off", **FAST_NO_HEAD)
    res = train_reranker(str(tiny_cross_encoder_dir), synthetic_groups(8, 1), out_dir=tmp_path / "m", config=cfg)
    assert '"head_learning_rate": null' in (res.out_dir / "README.md").read_text()


def test_attention_dropout_is_set_in_training_and_saved(tiny_cross_encoder_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tiny_cross_encoder_dir).attention_probs_dropout_prob > 0  # the base has some
    cfg = RerankerTrainingConfig(max_steps=3, sanity_gate="off", attention_dropout=0.0, **FAST)
    res = train_reranker(str(tiny_cross_encoder_dir), synthetic_groups(24, 5), out_dir=tmp_path / "m", config=cfg)
    assert res.steps == 3
    assert AutoConfig.from_pretrained(tmp_path / "m").attention_probs_dropout_prob == 0.0
    kept = train_reranker(str(tiny_cross_encoder_dir), synthetic_groups(24, 5), out_dir=tmp_path / "k",
                          config=dataclasses.replace(cfg, attention_dropout=None))
    assert kept.steps == 3 and AutoConfig.from_pretrained(tmp_path / "k").attention_probs_dropout_prob > 0
    with pytest.raises(ValueError, match="attention_dropout"):
        RerankerTrainingConfig(attention_dropout=1.0)
