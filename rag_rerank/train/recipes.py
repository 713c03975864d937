"""Recipes: every setting of the adaptation chain in one frozen, named object.

``rag-rerank adapt``, ``rag-rerank train``, ``rag-rerank demo``, the notebook and ``pipelines/quality_benchmark.py``
all take their settings from here, and nothing else keeps a copy. ``rag-rerank recipe show [NAME]`` prints one as
JSON, and every result file records the recipe it ran (``settings.recipe``).

Training length scales with the data: ``epochs`` over the training questions, with a floor (``min_steps``, so a
small corpus still trains) and a cap (``max_steps``, so a large one stays within a CPU budget); the number of
evaluations (checkpoint choices) is at most ``evaluations``, and with ``eval_share`` set, only as many as cost
that share of the training steps' time: a small run (``make demo``) spends its minutes training, not scoring
checkpoints it would not keep (``evaluations_for``).

Example:
    >>> get_recipe("default").training.loss
    'listwise'
    >>> get_recipe("default").steps_for(2581)
    323
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from rag_rerank.errors import ConfigError
from rag_rerank.train.config import RerankerTrainingConfig
from rag_rerank.train.mining import MiningConfig

__all__ = ["EVAL_STEP_EQUIVALENT", "RECIPES", "FirstStageSettings", "GenerationSettings", "Recipe", "get_recipe"]

# one question scored at top-20 (a checkpoint evaluation, the fusion choice, the test report: windowed, bf16) costs
# about this many training steps. Measured on the AMD AVX-512 machine (2 cores, bf16): 35.5 s per evaluation of 50
# questions at 4.72 s/step (time_to_quality_amd.json, default-pospool); `make demo --recipe next` took 34.1 s per
# evaluation of 50 (eval_runtime in its trainer's log). The 0.1 used before came from fp32 steps.
EVAL_STEP_EQUIVALENT = 0.15


@dataclass(frozen=True)
class GenerationSettings:
    """How questions are written (see :func:`rag_rerank.create_qa_dataset`)."""

    questions_per_chunk: int = 2
    chunk_tokens: int = 256
    temperature: float = 0.2
    rounds: int = 2
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def kwargs(self) -> dict[str, Any]:
        """These settings as :func:`rag_rerank.create_qa_dataset` keyword arguments."""
        return {"questions_per_chunk": self.questions_per_chunk, "chunk_tokens": self.chunk_tokens,
                "temperature": self.temperature, "rounds": self.rounds, "split_ratios": self.split_ratios}


@dataclass(frozen=True)
class FirstStageSettings:
    """How the first stage is tuned on synthetic validation before any training.

    Attributes:
        tune: choose the hybrid's fusion (RRF, or a weighted sum of z-scored or min-max scores, and its weights) on
            validation; ``False`` keeps the RRF default.
        bm25_weights: the BM25 weights tried for the weighted fusions (the dense weight is ``1 - w``).
        norms: the normalisations tried for the weighted fusions.
        min_queries: with fewer validation questions the default (RRF) is kept.
    """

    tune: bool = True
    bm25_weights: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    norms: tuple[str, ...] = ("zscore", "minmax")
    min_queries: int = 50


@dataclass(frozen=True)
class BiEncoderSettings:
    """The optional bi-encoder stage (MNRL with one mined hard negative), kept only if it helps on validation."""

    enabled: bool = False
    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 2e-5


@dataclass(frozen=True)
class Recipe:
    """Every training and mining default of the chain.

    Attributes:
        name: the recipe's name (``rag-rerank adapt --recipe NAME``).
        description: one line on what it is for.
        base_model: the reranker to start from.
        bi_encoder: the first stage's bi-encoder.
        generation, first_stage, bi_encoder_stage, mining, training: each stage's settings.
        epochs, min_steps, max_steps: training length (see the module docstring); ``training.max_steps`` is
            ignored, the length is computed per run by :meth:`steps_for`.
        evaluations: checkpoint evaluations per run at most (the best is kept).
        eval_share: with a value, the checkpoint evaluations cost at most this share of the listwise steps' time
            (each costs ``EVAL_STEP_EQUIVALENT`` steps per question scored), and at least one, the last, is made;
            ``None`` makes ``evaluations`` of them whatever they cost.
        top_k: first-stage candidates the reranker reorders (validation, fusion, reports, serving).
        max_eval_queries: validation questions used to choose the fusion weight (``None``: all).
        checkpoint_eval_queries: validation questions each checkpoint evaluation scores (a fixed subset of the
            ones above; ``None``: all). Each costs ``top_k`` pairs per evaluation, so this bounds evaluation time.
        min_val_queries: fewer validation questions than this and the reranker is not trusted (alpha 0).
        alpha_rule: how the fusion weight is picked on validation (:data:`rag_rerank.rerank.fusion.RULES`;
            ``None``: ``"best"``, the only rule before rules existed, so results recorded before keep their recipe).
        fill_budget: with a time budget (``adapt --budget-minutes``, ``make demo``), train as many listwise steps as
            the budget's estimate has room for, up to ``max_steps``, even past the data's :meth:`steps_for` (epochs
            over a small set of questions); ``None``: a budget only ever shortens training (the behaviour before).
        query_guard: the shipped fused system serves a query longer than this many times the longest training or
            validation question (in words) by the first stage alone, and says so
            (:mod:`rag_rerank.rerank.fusion`); ``None``: every query is fused (the behaviour before).
        question_guard: when every training and validation query reads as a question (the default question filter
            makes them so; not with ``--query-examples`` in another style), the shipped fused system serves a query
            that does not (a claim, a keyword query, an instruction) by the first stage alone, and says so;
            ``None``: no form guard (the behaviour before).
    """

    name: str
    description: str = ""
    base_model: str = "embedded:minilm-ce"
    bi_encoder: str = "embedded:minilm"
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    first_stage: FirstStageSettings = field(default_factory=FirstStageSettings)
    bi_encoder_stage: BiEncoderSettings = field(default_factory=BiEncoderSettings)
    mining: MiningConfig = field(default_factory=MiningConfig)
    training: RerankerTrainingConfig = field(default_factory=RerankerTrainingConfig)
    epochs: float = 1.0
    min_steps: int = 60
    max_steps: int = 640
    evaluations: int = 4
    eval_share: float | None = None
    top_k: int = 20
    max_eval_queries: int | None = None
    checkpoint_eval_queries: int | None = 200
    min_val_queries: int = 50
    alpha_rule: str | None = None
    fill_budget: bool | None = None
    query_guard: float | None = None
    question_guard: bool | None = None

    def steps_for(self, n_groups: int) -> int:
        """Optimiser steps for ``n_groups`` training groups: ``epochs`` passes, within ``[min_steps, max_steps]``."""
        per_epoch = math.ceil(max(n_groups, 1) / self.training.batch_size)
        return int(min(self.max_steps, max(self.min_steps, math.ceil(self.epochs * per_epoch))))

    def checkpoint_questions(self, val_questions: int | None) -> int:
        """Validation questions one checkpoint evaluation scores: ``val_questions`` within ``max_eval_queries``
        (the validation subset) and ``checkpoint_eval_queries`` (unknown: the caps; no cap and unknown: 0)."""
        known = [v for v in (self.checkpoint_eval_queries, self.max_eval_queries, val_questions) if v is not None]
        return min(known) if known else 0

    def evaluations_for(self, steps: int, val_questions: int | None = None) -> int:
        """Checkpoint evaluations in a run of ``steps`` steps with ``val_questions`` validation questions.

        Example:
            >>> get_recipe("default").evaluations_for(323, 323), get_recipe("default").evaluations_for(40, 50)
            (2, 1)
        """
        if self.eval_share is None:
            return self.evaluations
        cost = max(self.checkpoint_questions(val_questions), 1) * EVAL_STEP_EQUIVALENT  # in training steps
        return max(1, min(self.evaluations, math.floor(self.eval_share * steps / cost)))

    def training_config(self, n_groups: int, max_steps: int | None = None,
                        val_questions: int | None = None, steps: int | None = None) -> RerankerTrainingConfig:
        """The training settings for a run on ``n_groups`` groups (``max_steps`` caps it further, for small runs)
        and ``val_questions`` validation questions (unknown: the evaluations are sized as if
        ``checkpoint_eval_queries`` were scored). ``steps`` sets the length instead, within ``max_steps`` and the
        recipe's (a plan that fills a time budget: ``fill_budget``)."""
        if steps is None:
            steps = self.steps_for(n_groups) if max_steps is None else min(max_steps, self.steps_for(n_groups))
        else:
            steps = max(1, min(steps, self.max_steps, max_steps or steps))
        evaluations = self.evaluations_for(steps, val_questions)
        return replace(self.training, max_steps=steps, eval_steps=max(1, math.ceil(steps / evaluations)),
                       warm_start_steps=min(self.training.warm_start_steps, steps))  # never longer than the training

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (what ``recipe show`` prints and result files record)."""
        data = asdict(self)
        data["generation"]["split_ratios"] = list(self.generation.split_ratios)
        data["first_stage"]["bm25_weights"] = list(self.first_stage.bm25_weights)
        data["first_stage"]["norms"] = list(self.first_stage.norms)
        return data


_V1_TRAINING = RerankerTrainingConfig(
    loss="listwise", learning_rate=5e-5, head_learning_rate="auto", warmup_ratio=0.1,
    lr_scheduler="warmup_stable_decay", decay_ratio=0.25, batch_size=8, train_group_size=5, max_length=192,
    seed=42, keep_checkpoints=True, sanity_gate="warn", mixed_precision="no",  # 0.1 trained in fp32
)

RECIPES: dict[str, Recipe] = {
    r.name: r for r in (
        Recipe(
            name="default",
            description="Tuned first stage; a 60-step label-free warm start of a new head (the bi-encoder's margins, "
                        "96 tokens), then listwise fine-tuning for about one epoch on negatives drawn only among "
                        "chunks that are some training question's positive, with checkpoint evaluations costing at "
                        "most a quarter of the training, fused at the weight chosen on validation when it helps (the "
                        "median of the bootstrap resamples' best weights). No dropout on attention probabilities, "
                        "so the fused attention kernel runs in training. With a time budget, as many listwise steps "
                        "as it has room for (up to 640). A query more than 1.5 times as long as the longest "
                        "training question, or one that does not read as a question when every training question "
                        "did, is served by the first stage alone (the query guard).",
            mining=MiningConfig(negative_pool="positives"),
            training=replace(_V1_TRAINING, warm_start_steps=60, warm_start_max_length=96, mixed_precision="auto",
                             attention_dropout=0.0),
            epochs=1.0, min_steps=60, max_steps=640, evaluations=4, eval_share=0.25, alpha_rule="bagged",
            fill_budget=True, query_guard=1.5, question_guard=True,
        ),
        Recipe(
            name="v1",
            description="The 0.1 headline recipe (the benchmark script before adapt): RRF first stage, 640 "
                        "steps, warmup-stable-decay; kept to compare against.",
            first_stage=FirstStageSettings(tune=False),
            training=_V1_TRAINING,
            epochs=2.0, min_steps=640, max_steps=640, evaluations=4, checkpoint_eval_queries=None,
        ),
    )
}
RECIPES["v8"] = replace(
    RECIPES["default"], name="v8", question_guard=None,
    description="The default before the question guard (kept to compare against; arguana.json and "
                "arguana_seed1.json ran it): as the default, but a query that does not read as a question is served "
                "fused, although every training question was one.",
)
RECIPES["v7"] = replace(
    RECIPES["v8"], name="v7", query_guard=None,
    description="The default before the query guard (kept to compare against; demo.json and arguana_seed1_v7.json "
                "ran it): as the default, but every query is served fused, however much longer than the training "
                "questions.",
)
RECIPES["v6"] = replace(
    RECIPES["v7"], name="v6", fill_budget=None,
    description="The default before a time budget was filled by training (kept to compare against; "
                "squad_headline.json, arguana_v6.json, time_to_quality.json and demo_v6.json ran it): as v7, but "
                "with --budget-minutes a small corpus stops at its own length (the 60-step floor).",
)
RECIPES["v5"] = replace(
    RECIPES["v6"], name="v5", training=replace(RECIPES["v6"].training, attention_dropout=None),
    description="The default before attention dropout was turned off (kept to compare against): as v6, "
                "with the model's own attention dropout (0.1), which keeps PyTorch's fused attention kernel from "
                "running in training.",
)
RECIPES["v4"] = replace(
    RECIPES["v5"], name="v4", alpha_rule=None,
    description="The default before the bagged fusion-weight rule (kept to compare against; squad_headline_avx2.json "
                "ran it): as v5, but the fusion weight is the single best one on validation.",
)
RECIPES["v3"] = replace(
    RECIPES["v4"], name="v3", eval_share=None,
    description="The 0.3 default (kept to compare against; the SQuAD and ArguAna headlines of 0.3 ran it): as "
                "v4, but 4 checkpoint evaluations whatever they cost.",
)
RECIPES["v2"] = replace(
    RECIPES["v3"], name="v2",
    description="The 0.2 default (kept to compare against): as v3, but negatives from every chunk, so the "
                "reranker learns a prior against the chunks that got no question.",
    mining=MiningConfig(),
)


def get_recipe(name: str | Recipe = "default") -> Recipe:
    """The named recipe (a :class:`Recipe` is returned as it is).

    Raises:
        ConfigError: for an unknown name, listing the known ones.
    """
    if isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; use one of {sorted(RECIPES)} (rag-rerank recipe show NAME)")
    return RECIPES[name]
