"""CLI stage(s): generate. Create a synthetic QA dataset from a folder of documents (issue 3)."""

from __future__ import annotations

import click


def _not_built(stage: str) -> None:
    raise click.ClickException(f"'{stage}' is not built yet in this version of rag-rerank; see the README's roadmap.")


@click.command("generate", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def generate_cmd(args: tuple[str, ...]) -> None:
    """Create a synthetic QA dataset from a folder of documents (issue 3). (not built yet)"""
    _not_built("generate")


COMMANDS = [generate_cmd]
