"""The model card (README.md) written next to a fine-tuned reranker.

It records what a reader needs to trust or distrust the model: the base model, the data, the settings, the
validation metrics before and after training against the first stage, the verdict, and the command.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from rag_rerank.io import atomic_write


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def metrics_table(first_stage: dict[str, float], before: dict[str, float], after: dict[str, float]) -> str:
    """A Markdown table: one row per metric, columns first stage / base model / fine-tuned.

    Example:
        >>> print(metrics_table({"base_mrr@10": 0.5}, {"mrr@10": 0.2}, {"mrr@10": 0.7}).splitlines()[2])
        | mrr@10 | 0.5000 | 0.2000 | 0.7000 |
    """
    names = sorted({k for k in list(before) + list(after)} | {k.replace("base_", "", 1) for k in first_stage})
    names = [n for n in names if not n.startswith("base_")]
    lines = ["| metric | first stage | base model | fine-tuned |", "|---|---|---|---|"]
    for n in names:
        fs = next((v for k, v in first_stage.items() if k.replace("base_", "", 1) == n), "")
        lines.append(f"| {n} | {_fmt(fs)} | {_fmt(before.get(n, ''))} | {_fmt(after.get(n, ''))} |")
    return "\n".join(lines)


def render_model_card(
    *,
    base_model: str,
    data_summary: dict[str, Any],
    config: Any,
    first_stage: dict[str, float],
    eval_before: dict[str, float],
    eval_after: dict[str, float],
    verdict: str,
    train_loss: list[tuple[int, float]],
    steps: int,
    wall_time_s: float,
    command: str | None = None,
) -> str:
    """The card's Markdown text.

    Example:
        >>> text = render_model_card(base_model="embedded:minilm-ce", data_summary={"groups": 10}, config=None,
        ...     first_stage={}, eval_before={}, eval_after={}, verdict="IMPROVED", train_loss=[], steps=3,
        ...     wall_time_s=1.0)
        >>> text.splitlines()[0]
        '# Fine-tuned reranker (rag-rerank)'
    """
    settings = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else (config or {})
    loss_line = (
        f"first logged {train_loss[0][1]:.4f} (step {train_loss[0][0]}), last {train_loss[-1][1]:.4f} "
        f"(step {train_loss[-1][0]})" if train_loss else "not logged"
    )
    cmd = command if command is not None else " ".join(sys.argv)
    return "\n".join([
        "# Fine-tuned reranker (rag-rerank)",
        "",
        f"**Verdict: {verdict}**",
        "",
        "This is a cross-encoder. Load it with `sentence_transformers.CrossEncoder(path)` (scores are "
        "`sigmoid(logit)`) or `transformers.AutoModelForSequenceClassification.from_pretrained(path)` "
        "(raw logits; same ranking).",
        "",
        f"- base model: `{base_model}`",
        f"- training steps: {steps}, wall time: {wall_time_s:.1f} s",
        f"- training loss: {loss_line}",
        "",
        "## Data",
        "",
        "```json",
        json.dumps(data_summary, indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Validation (realistic: the first stage's candidates reranked, positives not injected)",
        "",
        metrics_table(first_stage, eval_before, eval_after) if (eval_after or eval_before) else "no validation set",
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(settings, indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Command",
        "",
        "```",
        cmd,
        "```",
        "",
    ])


def write_model_card(out_dir: str | Path, text: str) -> Path:
    """Write ``README.md`` atomically into ``out_dir`` and return its path."""
    path = Path(out_dir) / "README.md"
    with atomic_write(path) as f:
        f.write(text)
    return path


SHIPPED_MARK = "**Shipped system:"


def set_shipped_verdict(out_dir: str | Path, verdict: str) -> Path | None:
    """Put the shipped system's verdict (after the fusion choice) first in the model card; the training verdict
    (the reranker alone) stays below it. Returns the card's path, or ``None`` when the folder has no card."""
    path = Path(out_dir) / "README.md"
    if not path.is_file():
        return None
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if not ln.startswith(SHIPPED_MARK)]
    at = next((i for i, ln in enumerate(lines) if ln.startswith("**Verdict:")), 1)
    lines[at:at] = [f"{SHIPPED_MARK} {verdict}**", ""]
    lines = [ln.replace("**Verdict:", "**Reranker alone:", 1) if ln.startswith("**Verdict:") else ln for ln in lines]
    with atomic_write(path) as f:
        f.write("\n".join(lines) + "\n")
    return path
