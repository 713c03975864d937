"""``rag-rerank mine`` and ``rag-rerank train``: hard negatives from the hybrid first stage, then fine-tuning.

``mine`` writes the training groups that ``train --groups`` reads (no second mining pass). ``train --target
bi-encoder`` refuses the options that only the reranker uses, rather than ignoring them.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from rag_rerank.train.recipes import RECIPES

_R = RECIPES["default"]  # every default below is the default recipe's (a test checks they agree)

# options that only a reranker uses: refused with --target bi-encoder
RERANKER_ONLY = ("loss", "head_lr", "group_size", "max_length", "lr_scheduler", "sanity_gate", "resume", "groups")


def _mining_options(f):
    for opt in reversed([
        click.option("--rank-min", type=int, default=_R.mining.rank_min, show_default=True,
                     help="First hybrid rank mined (1-based)."),
        click.option("--rank-max", type=int, default=_R.mining.rank_max, show_default=True,
                     help="Last hybrid rank mined."),
        click.option("--num-negatives", type=int, default=_R.mining.num_negatives, show_default=True,
                     help="Hard negatives per question."),
        click.option("--num-random", type=int, default=_R.mining.num_random, show_default=True,
                     help="Random negatives per question."),
        click.option("--relative-margin", type=float, default=_R.mining.relative_margin, show_default=True,
                     help="Drop candidates scoring within this fraction of the positive (dense cosine; 0: off)."),
        click.option("--neighbors", type=int, default=_R.mining.exclude_same_doc_neighbors, show_default=True,
                     help="Drop chunks within N positions of the positive in the same document (0: off)."),
        click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None,
                     help="A `rag-rerank index` folder over the dataset (default: built into DATASET/index)."),
        click.option("--bi-encoder", default=None, help="The index's bi-encoder (checked against the index)."),
        click.option("--max-queries", type=int, default=None, help="Use at most N training questions."),
        click.option("--seed", type=int, default=_R.mining.seed, show_default=True,
                     help="Seed of the negative sampling."),
    ]):
        f = opt(f)
    return f


def _mining_config(rank_min, rank_max, num_negatives, num_random, relative_margin, neighbors, seed):
    from rag_rerank.train.mining import MiningConfig

    return MiningConfig(
        rank_min=rank_min, rank_max=rank_max, num_negatives=num_negatives, num_random=num_random,
        relative_margin=relative_margin if relative_margin > 0 else None,
        exclude_same_doc_neighbors=neighbors, seed=seed,
    )


@click.command("mine")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Groups JSONL to write (the input of `rag-rerank train --groups`).")
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "validation", "test"]),
              help="Which split's questions to mine for.")
@click.option("--group-size", type=int, default=_R.training.train_group_size, show_default=True,
              help="1 positive + k negatives per row.")
@_mining_options
def mine_cmd(dataset_dir, out, split, group_size, rank_min, rank_max, num_negatives, num_random, relative_margin,
             neighbors, index_dir, bi_encoder, max_queries, seed) -> None:
    """Mine hard negatives for DATASET_DIR's questions with the hybrid first stage.

    Writes listwise rows {"query", "positive", "negatives"} that `rag-rerank train --groups OUT` reads, and
    reports how many candidates each false-negative guard removed.
    """
    from rag_rerank.generate.store import load_qa_dataset
    from rag_rerank.train.finetune import mine_split, open_index, save_mined

    dataset = load_qa_dataset(dataset_dir)
    index = open_index(dataset, dataset_dir, index_dir, bi_encoder)
    cfg = _mining_config(rank_min, rank_max, num_negatives, num_random, relative_margin, neighbors, seed)
    mined = mine_split(dataset, index, split, mining=cfg, group_size=group_size, max_queries=max_queries)
    n = save_mined(out, mined)
    click.echo(mined.mining.summary())
    click.echo(f"wrote {n} groups for {len(mined.queries)} {split} questions to {out}; train on them with "
               f"`rag-rerank train {dataset_dir} --groups {out} --out MODEL`")


@click.command("train")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model directory to write.")
@click.option("--base-model", default=None,
              help="Cross-encoder to start from: embedded:minilm-ce (offline default), BAAI/bge-reranker-base, a dir. "
                   "With --target bi-encoder: the bi-encoder (default embedded:minilm).")
@click.option("--target", type=click.Choice(["reranker", "bi-encoder"]), default="reranker", show_default=True,
              help="Fine-tune the reranker (cross-encoder) or the first stage's bi-encoder (MNRL).")
@click.option("--groups", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Train on groups `rag-rerank mine` wrote, instead of mining again (the mining options are "
                   "then unused).")
@click.option("--recipe", default="default", show_default=True, type=click.Choice(sorted(RECIPES)),
              help="Where every default comes from (see `rag-rerank recipe show NAME`); the options below override it.")
@click.option("--loss", type=click.Choice(["listwise", "bce"]), default=_R.training.loss, show_default=True,
              help="Grouped softmax over 1 positive + k negatives, or pointwise binary cross-entropy.")
@click.option("--epochs", type=float, default=None,
              help=f"Passes over the data (default: the recipe's, {_R.epochs:g}, within {_R.min_steps}-{_R.max_steps} "
                   "steps; 1 for the bi-encoder).")
@click.option("--max-steps", type=int, default=None, help="Stop after N optimiser steps.")
@click.option("--lr", type=float, default=None, help=f"Encoder learning rate (default {_R.training.learning_rate:g}).")
@click.option("--head-lr", type=float, default=None,
              help="Learning rate of the classifier head (default: 1e-3 for a new head, the encoder's for a trained "
                   "one such as bge-reranker-base; 0 reuses --lr).")
@click.option("--batch-size", type=int, default=None,
              help=f"Groups (listwise) or pairs (bce) per optimiser step (default {_R.training.batch_size}).")
@click.option("--group-size", type=int, default=_R.training.train_group_size, show_default=True,
              help="1 positive + k negatives per group.")
@click.option("--max-length", type=int, default=None,
              help=f"Query + passage tokens (default {_R.training.max_length}).")
@click.option("--lr-scheduler", default=None,
              help=f"After warm-up (default {_R.training.lr_scheduler}): constant_with_warmup, warmup_stable_decay "
                   "(constant, then a cosine decay over the last 25% of steps) or linear, or any transformers name.")
@click.option("--sanity-gate", type=click.Choice(["stop", "raise", "warn", "off"]), default=_R.training.sanity_gate,
              show_default=True,
              help="What to do when the reranker is not learning (stuck on the uniform-loss plateau).")
@click.option("--resume", is_flag=True, help="Resume from the latest checkpoint in OUT/checkpoints.")
@click.option("--precision", type=click.Choice(["auto", "no", "fp16", "bf16"]), default=_R.training.mixed_precision,
              show_default=True, help="Mixed precision: auto = bf16/fp16 on a CUDA GPU, bf16 on a CPU with native bf16 "
                   "(AVX512_BF16/AMX), else fp32; 'no' forces fp32.")
@_mining_options
@click.pass_context
def train_cmd(ctx, dataset_dir, out, base_model, target, groups, recipe, loss, epochs, max_steps, lr, head_lr,
              batch_size, group_size, max_length, lr_scheduler, sanity_gate, resume, precision, rank_min, rank_max,
              num_negatives, num_random, relative_margin, neighbors, index_dir, bi_encoder, max_queries,
              seed) -> None:
    """Fine-tune a reranker (or the bi-encoder) on DATASET_DIR's synthetic questions.

    Mines hard negatives with the hybrid first stage (see `mine`, or pass --groups), trains, evaluates on the
    validation split (realistic: the hybrid top-20, positives not injected), chooses the fusion weight there and
    writes a model directory with a model card. Warns loudly when fine-tuning did not beat the first stage.
    """
    from rag_rerank.errors import ConfigError

    mining_options = {"rank_min", "rank_max", "num_negatives", "num_random", "relative_margin", "neighbors", "seed"}
    mining = _mining_config(rank_min, rank_max, num_negatives, num_random, relative_margin, neighbors, seed) \
        if mining_options & {p for p in ctx.params if ctx.get_parameter_source(p) is not ParameterSource.DEFAULT} \
        else None
    command = "rag-rerank " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    explicit = {p for p in ctx.params if ctx.get_parameter_source(p) is not ParameterSource.DEFAULT}
    overrides = {k: v for k, v in {
        "epochs": epochs, "max_steps": max_steps, "learning_rate": lr, "batch_size": batch_size,
    }.items() if v is not None}
    if "precision" in explicit:
        overrides["mixed_precision"] = precision
    if target == "bi-encoder":
        given = [f"--{n.replace('_', '-')}" for n in RERANKER_ONLY
                 if ctx.get_parameter_source(n) is not ParameterSource.DEFAULT]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply to --target reranker; drop them for the bi-encoder "
                              "(it trains with MultipleNegativesRankingLoss on the mined groups)")
        from rag_rerank.train.bi_encoder import finetune_bi_encoder

        bi = finetune_bi_encoder(dataset_dir, out, index_dir=index_dir, base_model=base_model or "embedded:minilm",
                                 mining=mining, max_train_queries=max_queries, **overrides)
        click.echo(f"bi-encoder saved to {bi.out_dir} ({bi.rows} training rows); rebuild the index with: "
                   f"rag-rerank index {dataset_dir} --out IDX --bi-encoder {bi.out_dir}")
        return
    from rag_rerank.train.finetune import finetune

    given = {"loss": ("loss", loss), "group_size": ("train_group_size", group_size),
             "sanity_gate": ("sanity_gate", sanity_gate)}
    overrides.update(dict(v for k, v in given.items() if k in explicit))
    if max_length is not None:
        overrides["max_length"] = max_length
    if lr_scheduler is not None:
        overrides["lr_scheduler"] = lr_scheduler
    if head_lr is not None:
        overrides["head_learning_rate"] = head_lr or None
    if resume:
        overrides["resume_from_checkpoint"] = True
    result = finetune(dataset_dir, out, recipe=recipe, index_dir=index_dir, base_model=base_model,
                      bi_encoder=bi_encoder, mining=mining, groups=groups, max_train_queries=max_queries,
                      command=command, **overrides)
    from rag_rerank.train.distributed import is_main_process

    if not is_main_process():  # under torchrun the main process reports
        return
    click.echo(f"model saved to {result.out_dir} ({result.steps} steps, {result.wall_time_s:.0f}s)")
    if result.fusion_alpha is not None:
        click.echo(f"fusion alpha {result.fusion_alpha:g} chosen on the validation split (fusion.json): "
                   "`rag-rerank evaluate` and RagRerankPostprocessor serve the fused system by default")
    click.echo(f"first stage: {result.first_stage}  before: {result.eval_before}  after: {result.eval_after}")
    click.echo(f"reranker alone: {result.verdict}")
    shipped = result.shipped_verdict or result.verdict
    if shipped.startswith("IMPROVED"):
        click.echo(f"VERDICT: {shipped}")
    else:
        click.secho(f"VERDICT: {shipped}", fg="red", err=True)


@click.command("distill")
@click.argument("model", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="The student's folder.")
@click.option("--layers", type=click.IntRange(min=1), default=3, show_default=True,
              help="Encoder layers the student keeps (evenly spaced, first and last kept).")
@click.option("--groups", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Training groups to distil on [default: MODEL/train_groups.jsonl, written by train/adapt].")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Passes over the teacher-scored pairs.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Cap the optimiser steps.")
def distill_cmd(model: Path, out: Path, layers: int, groups: Path | None, epochs: float, max_steps: int | None) -> None:
    """Distil the fine-tuned reranker MODEL into a smaller, faster student (MSE on MODEL's scores).

    \b
    The student is a plain sentence-transformers CrossEncoder. Compare it with the teacher before serving it:
    `rag-rerank evaluate --reranker OUT --reranker MODEL` (adapt --distill decides on validation itself).
    Example:
      rag-rerank distill runs/mydocs/reranker --layers 3 --out runs/mydocs/student
    """
    from rag_rerank.train.distill import DistillConfig, distill_reranker

    res = distill_reranker(model, out, groups=groups,
                           config=DistillConfig(layers=layers, epochs=epochs, max_steps=max_steps))
    click.echo(f"student saved to {res.out_dir}: layers {res.kept_layers} of {res.teacher_layers}, "
               f"{res.student_params / 1e6:.1f}M parameters (teacher {res.teacher_params / 1e6:.1f}M), "
               f"{res.pairs} pairs, {res.steps} steps, {res.seconds:.0f} s")


COMMANDS = [mine_cmd, train_cmd, distill_cmd]
