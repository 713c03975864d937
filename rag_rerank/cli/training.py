"""CLI stage(s): mine train. Mine hard negatives / fine-tune a reranker (issue 5)."""

from __future__ import annotations

import click


def _not_built(stage: str) -> None:
    raise click.ClickException(f"'{stage}' is not built yet in this version of rag-rerank; see the README's roadmap.")


@click.command("mine", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def mine_cmd(args: tuple[str, ...]) -> None:
    """Mine hard negatives / fine-tune a reranker (issue 5). (not built yet)"""
    _not_built("mine")


@click.command("train", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train_cmd(args: tuple[str, ...]) -> None:
    """Mine hard negatives / fine-tune a reranker (issue 5). (not built yet)"""
    _not_built("train")


COMMANDS = [mine_cmd, train_cmd]
