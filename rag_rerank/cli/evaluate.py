"""CLI stage(s): evaluate. Evaluate first stage vs reranked on a BEIR folder (issue 6)."""

from __future__ import annotations

import click


def _not_built(stage: str) -> None:
    raise click.ClickException(f"'{stage}' is not built yet in this version of rag-rerank; see the README's roadmap.")


@click.command("evaluate", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def evaluate_cmd(args: tuple[str, ...]) -> None:
    """Evaluate first stage vs reranked on a BEIR folder (issue 6). (not built yet)"""
    _not_built("evaluate")


COMMANDS = [evaluate_cmd]
