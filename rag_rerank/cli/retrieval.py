"""CLI stage(s): index retrieve. Build a first-stage index / retrieve from it (issue 4)."""

from __future__ import annotations

import click


def _not_built(stage: str) -> None:
    raise click.ClickException(f"'{stage}' is not built yet in this version of rag-rerank; see the README's roadmap.")


@click.command("index", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def index_cmd(args: tuple[str, ...]) -> None:
    """Build a first-stage index / retrieve from it (issue 4). (not built yet)"""
    _not_built("index")


@click.command("retrieve", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def retrieve_cmd(args: tuple[str, ...]) -> None:
    """Build a first-stage index / retrieve from it (issue 4). (not built yet)"""
    _not_built("retrieve")


COMMANDS = [index_cmd, retrieve_cmd]
