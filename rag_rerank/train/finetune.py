"""Dataset + first stage -> mined negatives -> training rows -> a fine-tuned reranker: :func:`finetune`.

This is the glue behind ``rag-rerank mine`` and ``rag-rerank train``: it loads a generated dataset,
retrieves candidates for its questions with the hybrid first stage, mines hard negatives with the
false-negative guards (or reads groups ``rag-rerank mine`` wrote), builds realistic validation samples (the
first stage's top-k, positives not injected), calls :func:`rag_rerank.train.reranker_trainer.train_reranker`,
and chooses the fusion weight on validation. The bi-encoder's counterpart is
:func:`rag_rerank.train.bi_encoder.finetune_bi_encoder`.

Example:
    >>> from rag_rerank import finetune
    >>> res = finetune("data/qa", "models/reranker", index_dir="idx/qa", max_steps=10)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rag_rerank.errors import ConfigError, DataError
from rag_rerank.generate.store import QADataset, load_qa_dataset
from rag_rerank.io import iter_jsonl, write_jsonl
from rag_rerank.rerank.fusion import (
    MIN_VALIDATION_QUERIES,
    TUNED,
    FusionChoice,
    choose_alpha,
    guard_form,
    guard_limit,
    save_fusion,
)
from rag_rerank.train.config import RerankerTrainingConfig, TrainResult, warm_start_applies
from rag_rerank.train.distributed import is_main_process
from rag_rerank.train.groups import add_prior_scores, add_teacher_scores, build_groups, prior_scores
from rag_rerank.train.mining import MiningConfig, MiningResult, mine_hard_negatives
from rag_rerank.train.model_card import set_shipped_verdict
from rag_rerank.train.recipes import Recipe, get_recipe
from rag_rerank.types import Queries, Run, ranked

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class MinedSplit:
    """Mined negatives for one split, with the first-stage run they came from (searched ``depth`` deep)."""

    split: str
    queries: Queries
    run: Run
    mining: MiningResult
    groups: list[dict[str, Any]]
    margin_run: Run | None = None
    depth: int = 0


def open_index(dataset: QADataset, dataset_dir: Path, index_dir: str | os.PathLike | None, bi_encoder: str | None):
    """Load ``index_dir``, or build (once) a hybrid index over the dataset's corpus in ``DATASET/index``.

    Raises:
        DataError: when the index does not cover the dataset's chunks (built over another corpus).
    """
    from rag_rerank.retrieval.store import build_index, load_index

    if index_dir is None:
        index_dir = dataset_dir / "index"
        if not (Path(index_dir) / "config.json").is_file():
            logger.info("no --index given: building a hybrid index over %s into %s", dataset_dir, index_dir)
            return build_index(dataset.corpus, index_dir, bi_encoder=bi_encoder or "embedded:minilm")
    index = load_index(index_dir, bi_encoder=bi_encoder)
    missing = [c for c in dataset.corpus if c not in index.corpus]
    if missing:
        raise DataError(
            f"index {index_dir} does not contain {len(missing)} of the dataset's {len(dataset.corpus)} chunks "
            f"(e.g. {missing[0]!r}); it was built over a different corpus. "
            f"Fix: rag-rerank index {dataset_dir} --out IDX"
        )
    return index


def mining_depth(mining: MiningConfig) -> int:
    """How deep the first stage retrieves for mining (and for the training groups' prior scores)."""
    return max(mining.rank_max, 30)


def mine_split(
    dataset: QADataset,
    index: Any,
    split: str = "train",
    *,
    mining: MiningConfig | None = None,
    group_size: int = 5,
    max_queries: int | None = None,
    show_progress_bar: bool | None = None,
    searched: MinedSplit | None = None,
) -> MinedSplit:
    """Retrieve with the hybrid first stage and mine negatives for the questions of ``split``.

    The rank window and guards come from ``mining``; the relative margin is applied to the dense
    (cosine) scores, which are comparable across queries, rather than to RRF scores. ``searched``, an earlier
    result for the same split, index and questions, searched at least as deep as ``mining`` needs, lends its
    first-stage runs: only the mining is redone (to compare mining settings without searching again).

    Raises:
        ConfigError: when ``searched`` holds other questions, or a search shallower than ``mining`` needs.
    """
    mining = mining or MiningConfig()
    corpus, queries, qrels = dataset.split(split)
    if max_queries is not None and len(queries) > max_queries:
        keep = sorted(queries)[:max_queries]  # ids are content hashes: a deterministic, unbiased subset
        queries = {q: queries[q] for q in keep}
        qrels = {q: qrels[q] for q in keep}
    if not queries:
        raise DataError(f"split {split!r} has no questions; generate more chunks or change the split ratios")
    depth = mining_depth(mining)
    if mining.num_random and mining.num_negatives >= group_size - 1:  # build_groups keeps the first group_size - 1
        logger.info("groups of %d hold %d negatives, all hard ones (num_negatives=%d): the %d random negative(s) per "
                    "question only pad a question with fewer hard ones", group_size, group_size - 1,
                    mining.num_negatives, mining.num_random)
    margin_run = None
    if searched is not None:
        if searched.split != split or searched.queries.keys() != queries.keys():
            raise ConfigError(f"searched= holds the runs of other questions (split {searched.split!r}); pass a "
                              f"result of mine_split on split {split!r} with the same max_queries")
        if searched.depth < depth:
            raise ConfigError(f"searched= was searched {searched.depth} deep and this mining needs {depth} (rank_max="
                              f"{mining.rank_max}); search again, or mine the deeper window first")
        run, margin_run, depth = searched.run, searched.margin_run, searched.depth
    elif mining.relative_margin is not None and getattr(index, "dense", None) is not None:
        # the margin uses dense cosine scores: take them from the same passes the hybrid fuses
        runs = index.search_all(queries, top_k=depth, show_progress_bar=show_progress_bar)
        run, margin_run = runs["hybrid"], runs["dense"]
    else:
        run = index.search(queries, top_k=depth, mode="hybrid", show_progress_bar=show_progress_bar)
    meta = {cid: {**dataset.chunks.get(cid, {}), "text": corpus[cid]["text"]} for cid in corpus}
    result = mine_hard_negatives(run, qrels, meta, mining, margin_scores=margin_run,
                                 show_progress_bar=show_progress_bar)
    kept = {q: r for q, r in qrels.items() if q not in result.inconsistent}  # the consistency filter's drops
    groups = build_groups(queries, kept, result.negatives, corpus, group_size=group_size, seed=mining.seed)
    return MinedSplit(split=split, queries=queries, run=run, mining=result, groups=groups, margin_run=margin_run,
                      depth=depth)


def validation_run(dataset: QADataset, index: Any, split: str = "validation", top_k: int = 20,
                   max_queries: int | None = 200) -> tuple[Queries, Any, Any, Run]:
    """``(queries, qrels, corpus, hybrid run)`` of up to ``max_queries`` questions of ``split`` (a fixed subset)."""
    corpus, queries, qrels = dataset.split(split)
    if max_queries is not None and len(queries) > max_queries:
        queries = {q: queries[q] for q in sorted(queries)[:max_queries]}
    run = index.search(queries, top_k=top_k, mode="hybrid") if queries else {}
    return queries, {q: qrels[q] for q in queries}, corpus, run


def samples_from_run(queries: Queries, qrels: Any, corpus: Any, run: Run, top_k: int = 20) -> list[dict[str, Any]]:
    """Realistic reranking samples: each question with the first stage's top-k in order (and their z-scored scores,
    ``prior``, for residual training); positives not injected."""
    samples = []
    for q in sorted(queries):
        top = [d for d, _ in ranked(run.get(q, {}), top_k)]
        samples.append({"query": queries[q], "positive": [corpus[d]["text"] for d in qrels[q] if qrels[q][d] > 0],
                        "documents": [corpus[d]["text"] for d in top],
                        "prior": prior_scores(run.get(q, {}), top, top_k)})
    return samples


def eval_samples(dataset: QADataset, index: Any, split: str = "validation", top_k: int = 20,
                 max_queries: int | None = 200) -> list[dict[str, Any]]:
    """Realistic reranking samples: each question with the hybrid top-k in order; positives not injected."""
    return samples_from_run(*validation_run(dataset, index, split, top_k, max_queries), top_k=top_k)


def choose_fusion(model_dir: str | os.PathLike, queries: Queries, qrels: Any, corpus: Any, run: Run,
                  top_k: int = 20, *, min_queries: int = MIN_VALIDATION_QUERIES,
                  first_stage: Mapping[str, Any] | None = None, show_progress_bar: bool | None = None,
                  rule: str | None = "best", max_query_words: int | None = None,
                  query_form: str | None = None) -> FusionChoice:
    """Score the validation candidates with the trained model, choose the fusion alpha (by ``rule``), save
    ``fusion.json`` (with the query guard ``max_query_words`` and ``query_form``) and put the shipped system's verdict
    at the top of the model card."""
    from rag_rerank.rerank.reranker import Reranker
    from rag_rerank.rerank.runs import score_candidates

    heads = score_candidates(run, queries, corpus, Reranker(str(model_dir)), top_k,
                             show_progress_bar=show_progress_bar)
    choice = choose_alpha(run, heads, qrels, top_k=top_k, min_queries=min_queries, first_stage_settings=first_stage,
                          rule=rule, max_query_words=max_query_words, query_form=query_form)
    save_fusion(model_dir, choice)
    set_shipped_verdict(model_dir, choice.verdict(TUNED if first_stage else "hybrid"))
    return choice


def save_mined(path: str | os.PathLike, mined: MinedSplit) -> int:
    """Write the training groups as JSONL (``query``, ``positive``, ``negatives``): what ``train --groups`` reads."""
    return write_jsonl(path, mined.groups)


def load_groups(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read training groups written by :func:`save_mined` (``rag-rerank mine``).

    Raises:
        DataError: naming the file and row of a record without ``query``, ``positive`` and ``negatives``.
    """
    rows = list(iter_jsonl(path))
    for i, row in enumerate(rows, 1):
        if not isinstance(row.get("query"), str) or not isinstance(row.get("positive"), str) \
                or not isinstance(row.get("negatives"), list):
            raise DataError(f"{path}: row {i} is not a training group {{'query', 'positive', 'negatives': [...]}}; "
                            "write the file with `rag-rerank mine`")
    if not rows:
        raise DataError(f"{path}: no training groups; mine some with `rag-rerank mine DATASET --out {path}`")
    return rows


def finetune(
    dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    recipe: str | Recipe = "default",
    index_dir: str | os.PathLike | None = None,
    base_model: str | None = None,
    bi_encoder: str | None = None,
    mining: MiningConfig | None = None,
    training: RerankerTrainingConfig | None = None,
    groups: str | os.PathLike | list[dict[str, Any]] | None = None,
    first_stage: Mapping[str, Any] | None = None,
    max_train_queries: int | None = None,
    fusion: bool = True,
    command: str | None = None,
    callbacks: list[Any] | None = None,
    show_progress_bar: bool | None = None,
    **training_overrides: Any,
) -> TrainResult:
    """Mine negatives with the (tuned) hybrid first stage and fine-tune a reranker, with a recipe's settings.

    Args:
        dataset_dir: a dataset written by ``rag-rerank generate``.
        out_dir: where the model (and its card) go.
        recipe: where every default comes from (:mod:`rag_rerank.train.recipes`): mining, training, the training
            length (epochs over the groups, within the recipe's step floor and cap), the validation depth
            ``top_k``, the validation questions used, and the minimum that trusts a reranker.
        index_dir: a ``rag-rerank index`` folder over the same corpus (built into ``DATASET/index`` if None).
        base_model: the cross-encoder to start from (default: the recipe's; ``BAAI/bge-reranker-base`` online). A
            new head gets a fast learning rate and a trained one does not (``head_learning_rate="auto"``).
        bi_encoder: the index's bi-encoder, if not the default.
        mining: hard-negative settings (default: the recipe's; ignored with ``groups``).
        training: the whole training config, instead of the recipe's (its ``max_steps`` is then used as is).
        groups: training groups already mined (a JSONL path written by ``rag-rerank mine``, or the rows):
            no mining then.
        first_stage: the tuned first stage's fusion settings (``adapt`` chooses them on validation): mining,
            validation and the fusion use it instead of the index's own fusion, and ``fusion.json`` records it.
        max_train_queries: cap on training questions (a deterministic subset).
        fusion: after training, choose the reranker/first-stage fusion alpha on the validation split and save
            it as ``fusion.json`` in ``out_dir`` (see :mod:`rag_rerank.rerank.fusion`).
        command: the command line recorded in the model card.
        callbacks: extra ``transformers.TrainerCallback`` objects (e.g. a time budget).
        **training_overrides: fields of the training config (``max_steps=10``, ``loss="bce"``, ``epochs=2``, ...).

    Returns:
        A :class:`~rag_rerank.train.config.TrainResult`.
    """
    from rag_rerank.train.reranker_trainer import train_reranker

    recipe = get_recipe(recipe)
    base_model = base_model or recipe.base_model
    top_k, max_eval_queries = recipe.top_k, recipe.max_eval_queries
    dataset_dir = Path(dataset_dir)
    dataset = load_qa_dataset(dataset_dir)
    index = open_index(dataset, dataset_dir, index_dir, bi_encoder)
    if first_stage:
        index = index.with_fusion(**first_stage)
    group_size = training_overrides.get("train_group_size", (training or recipe.training).train_group_size)
    if groups is None:
        mined = mine_split(dataset, index, "train", mining=mining or recipe.mining, group_size=group_size,
                           max_queries=max_train_queries, show_progress_bar=show_progress_bar)
        rows = mined.groups
    else:
        rows = load_groups(groups) if isinstance(groups, (str, os.PathLike)) else list(groups)
        logger.info("training on %d groups given (no mining)", len(rows))
    if not rows:
        raise DataError(f"{dataset_dir}: no training groups could be built; generate questions for more chunks")
    val = validation_run(dataset, index, "validation", top_k=top_k, max_queries=max_eval_queries)
    cfg = _training_config(recipe, training, len(rows), training_overrides, val_questions=len(val[0]))
    if warm_start_applies(cfg, base_model) and not all("teacher" in r for r in rows) and index.dense is not None:
        n = add_teacher_scores(rows, index.dense)
        logger.info("teacher scores (bi-encoder cosine) for %d of %d groups, for the warm start", n, len(rows))
    if cfg.prior_weight is not None and cfg.loss == "listwise" and not all("prior" in r for r in rows):
        train_queries = {r["query_id"]: r["query"] for r in rows if "query_id" in r}
        run = index.search(train_queries, top_k=mining_depth(mining or recipe.mining), mode="hybrid")
        n = add_prior_scores(rows, run, top_k)
        logger.info("first-stage prior scores for %d of %d groups, for residual training", n, len(rows))
    samples = samples_from_run(*val, top_k=top_k)[: recipe.checkpoint_eval_queries]
    if not samples:
        logger.warning("the validation split is empty: training runs without evaluation or the sanity gate")
    if is_main_process():  # under torchrun, one process writes (rag_rerank.train.distributed)
        write_jsonl(Path(out_dir) / "train_groups.jsonl", rows)
    result = train_reranker(base_model, rows, out_dir=out_dir, config=cfg, eval_samples=samples or None,
                            command=command, callbacks=callbacks)
    if samples and fusion and is_main_process():
        seen = [r["query"] for r in rows] + list(val[0].values())
        choice = choose_fusion(out_dir, *val, top_k=top_k, min_queries=recipe.min_val_queries, first_stage=first_stage,
                               show_progress_bar=show_progress_bar, rule=recipe.alpha_rule,
                               max_query_words=guard_limit(seen, recipe.query_guard),
                               query_form=guard_form(seen, recipe.question_guard))
        result = replace(result, fusion_alpha=choice.alpha, fusion=choice,
                         shipped_verdict=choice.verdict(TUNED if first_stage else "hybrid"))
    return result


def _training_config(recipe: Recipe, training: RerankerTrainingConfig | None, n_groups: int,
                     overrides: dict[str, Any], val_questions: int | None = None) -> RerankerTrainingConfig:
    """The training config: ``training`` as given, else the recipe's sized to ``n_groups``; then the overrides.

    An ``epochs`` override without ``max_steps`` trains that many epochs (no recipe floor or cap).
    """
    if training is not None:
        return replace(training, **overrides)
    cfg = recipe.training_config(n_groups, overrides.get("max_steps"), val_questions)
    if "epochs" in overrides and "max_steps" not in overrides:
        cfg = replace(cfg, max_steps=None, eval_steps=None)
    return replace(cfg, **overrides)
