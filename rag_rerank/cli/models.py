"""``rag-rerank models``: list the embedded models; ``models check NAME``: can it be loaded?"""

from __future__ import annotations

import click


@click.group("models", invoke_without_command=True)
@click.pass_context
def models_cmd(ctx: click.Context) -> None:
    """List the embedded (offline) models and where they live."""
    if ctx.invoked_subcommand is not None:
        return
    from rag_rerank.models import cache_dir, embedded_models_table

    for row in embedded_models_table():
        click.echo(f"{row['name']:<20} {row['role']:<14} {row['description']}")
        click.echo(f"{'':<20} package {row['package']}: {row['path']}")
    click.echo(f"\ncache: {cache_dir()}  (set RAG_RERANK_CACHE to move it)")
    click.echo(
        "Hub ids (e.g. BAAI/bge-reranker-base) and local directories work too; check one with `models check NAME`."
    )


@models_cmd.command("check")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["cross-encoder", "bi-encoder", "llm"]),
    default=None,
    help="How to load it (guessed when omitted).",
)
def check_cmd(name: str, role: str | None) -> None:
    """Exit 0 if model NAME loads, else 1 with what to do."""
    from rag_rerank.errors import ModelUnavailableError
    from rag_rerank.models import check_model

    try:
        click.echo("ok: " + check_model(name, role=role))
    except ModelUnavailableError as e:
        click.echo(f"Error: {e}", err=True)
        raise SystemExit(1) from None


COMMANDS = [models_cmd]
