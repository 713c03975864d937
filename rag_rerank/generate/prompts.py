"""The question-writing prompt: system message, user template, few-shot turns, and the chat messages per chunk.

Prompts are module constants with named fields; callers override them (``prompt=`` on
:func:`rag_rerank.create_qa_dataset`, ``--prompt-file`` on the CLI). Document text only ever lands inside the last
user message, so it can never change the chat structure.

Example:
    >>> build_messages("Rome was founded in 753 BC.", 2, few_shot=())[-1]["content"][:14]
    'Passage:\\nRome '
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from rag_rerank.errors import ConfigError
from rag_rerank.generate.llm import Message

SYSTEM_PROMPT = (
    "You write short, specific questions that a passage answers. Output only the questions, one per line."
)
QUESTION_PROMPT = "Passage:\n{chunk}\n\nWrite {n} questions answered by this passage."
# Worked examples sent as earlier chat turns: a 135M model copies their form (one question a line,
# named subject, '?'); questions copied from them are dropped by the off-topic filter.
FEW_SHOT: tuple[tuple[str, str], ...] = (
    (
        "The Eiffel Tower was built for the 1889 World's Fair in Paris. It is 330 metres tall and was "
        "designed by the engineering company of Gustave Eiffel.",
        "How tall is the Eiffel Tower?\nWhose company designed the Eiffel Tower?",
    ),
    (
        "Photosynthesis in plants takes place mainly in the chloroplasts of leaf cells, where chlorophyll "
        "absorbs red and blue light to turn carbon dioxide and water into glucose.",
        "Where in plant cells does photosynthesis take place?\nWhich colours of light does chlorophyll absorb?",
    ),
)
PROMPT_FIELDS = frozenset({"chunk", "n", "title", "examples"})

# Style mode (``--query-examples``, :mod:`rag_rerank.generate.style`): the user's example queries replace the
# built-in question turns; they are listed in the user message, so no invented passage is needed for them.
STYLE_SYSTEM_PROMPT = (
    "You write search queries that a user of a search engine would send to find a passage. Match the form, length "
    "and tone of the example queries: they need not be questions. Output only the queries, one per line."
)
STYLE_PROMPT = (
    "Example queries:\n{examples}\n\nPassage:\n{chunk}\n\n"
    "Write {n} new queries in the style of the examples that this passage answers, one per line. Do not mention "
    "the passage."
)


def check_prompt(prompt: str, *, style: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``prompt`` has ``{chunk}`` and no fields but ``{n}``, ``{title}`` and
    ``{examples}`` (the last one only with query examples)."""
    names = {f for _, f, _, _ in string.Formatter().parse(prompt) if f is not None}
    if "chunk" not in names or names - PROMPT_FIELDS:
        raise ConfigError(
            f"prompt fields {sorted(names)} are invalid: the prompt must contain {{chunk}} and may use "
            f"{{n}}, {{title}} and {{examples}} only (write literal braces as {{{{ and }}}})"
        )
    if "examples" in names and not style:
        raise ConfigError("the prompt uses {examples} but no query examples were given; pass --query-examples FILE")


def build_messages(
    chunk_text: str, n: int, *, title: str = "", prompt: str = QUESTION_PROMPT,
    few_shot: Sequence[tuple[str, str]] = FEW_SHOT, system: str = SYSTEM_PROMPT, examples: Sequence[str] = (),
) -> list[Message]:
    """The chat messages for one chunk. The chunk text only ever lands inside the last user message.

    ``examples`` (style mode) fill ``{examples}``, one per line.

    Example:
        >>> build_messages("Rome was founded in 753 BC.", 2, few_shot=())[-1]["content"][:14]
        'Passage:\\nRome '
    """
    shown = "\n".join(f"- {e}" for e in examples)
    msgs: list[Message] = [{"role": "system", "content": system}] if system else []
    for passage, questions in few_shot:
        msgs.append({"role": "user", "content": prompt.format(chunk=passage, n=n, title="", examples=shown)})
        msgs.append({"role": "assistant", "content": questions})
    msgs.append({"role": "user", "content": prompt.format(chunk=chunk_text, n=n, title=title, examples=shown)})
    return msgs
