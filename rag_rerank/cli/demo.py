"""``rag-rerank demo``: the main job on the embedded defaults (filled in as stages land)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
