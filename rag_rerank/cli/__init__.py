"""``rag-rerank <stage>``: a thin click CLI over the library.

One module per stage (``generate``, ``retrieval``, ``training``, ...) keeps each file short; this
module only builds the group, configures logging and turns user errors into one clean line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn

import click

from rag_rerank import __version__
from rag_rerank.errors import RagRerankError

# What a user's input can cause: the project's own errors (DataError, ConfigError, ... name the value and the
# fix) and OS errors about the paths the user gave. A ValueError from deep inside torch or numpy is a bug, and
# keeps its traceback.
USER_ERRORS = (RagRerankError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


INTERRUPTED = "Interrupted; work done so far is saved (rerun the same command to resume)."


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's stop, a session's end) unwinds like Ctrl-C: context managers close (the
    embedded LLM server, run locks), and ``adapt`` records the interrupted stage's time. Python's default for
    SIGTERM ends the process with no unwinding. Main thread only (elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_script(main: Callable[[], int | None]) -> NoReturn:
    """Run a script's ``main`` (``pipelines/*.py``) under the CLI's policy: a user error (a run folder not through
    the stage a script needs, a missing file) is one ``error: ...`` line and exit status 1, no traceback
    (``RAG_RERANK_DEBUG=1`` shows it); Ctrl-C or SIGTERM is one line and exit status 130."""
    try:
        with sigterm_as_interrupt():
            code = main()
    except USER_ERRORS as e:
        if os.environ.get("RAG_RERANK_DEBUG"):
            raise
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        click.echo(INTERRUPTED, err=True)
        sys.exit(130)
    sys.exit(code)


class _Group(click.Group):
    """Turns user errors into ``Error: ...`` and a non-zero exit, no traceback (``RAG_RERANK_DEBUG=1`` shows it)."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            with sigterm_as_interrupt():
                return super().invoke(ctx)
        except USER_ERRORS as e:
            if os.environ.get("RAG_RERANK_DEBUG"):
                raise
            raise click.ClickException(str(e)) from e
        except Exception as e:
            # LLM client failures (openai SDK: timeouts, refused connections, HTTP errors) are environment
            # problems, not bugs: one line that says what failed and what to try.
            if type(e).__module__.split(".")[0] != "openai" or os.environ.get("RAG_RERANK_DEBUG"):
                raise
            raise click.ClickException(
                f"the LLM request failed ({type(e).__name__}: {e}); check that the server is up and reachable, "
                "or retry (slow CPUs may need a longer timeout)"
            ) from e
        except KeyboardInterrupt:
            click.echo(INTERRUPTED, err=True)
            sys.exit(130)


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("rag_rerank").setLevel(level)
    for noisy in ("httpx", "httpcore", "openai", "sentence_transformers", "transformers", "faiss", "datasets"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # noqa: BLE001 - transformers is optional at this point
        pass


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rag-rerank")
@click.option("-v", "--verbose", count=True, help="More logging (-vv: also the libraries').")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def main(verbose: int, quiet: bool) -> None:
    """Adapt a RAG reranker to your documents with no human labels.

    \b
    The whole chain in one command:  rag-rerank adapt DOCS_DIR --out RUN_DIR
    Stages:  generate -> index -> retrieve -> mine -> train -> evaluate
    Offline defaults: embedded:minilm (bi-encoder), embedded:minilm-ce (reranker base),
    embedded:smollm2 (LLM, served by llama.cpp). See `rag-rerank models`.
    """
    _configure_logging(verbose, quiet)


def _register() -> None:
    from rag_rerank.cli import adapt, demo, evaluate, generate, models, retrieval, training

    for module in (adapt, generate, retrieval, training, evaluate, demo, models):
        for cmd in module.COMMANDS:
            main.add_command(cmd)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
