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
PROMPT_FIELDS = frozenset({"chunk", "n", "title"})


def check_prompt(prompt: str) -> None:
    """Raise :class:`ConfigError` unless ``prompt`` has ``{chunk}`` and no fields but ``{n}`` and ``{title}``."""
    names = {f for _, f, _, _ in string.Formatter().parse(prompt) if f is not None}
    if "chunk" not in names or names - PROMPT_FIELDS:
        raise ConfigError(
            f"prompt fields {sorted(names)} are invalid: the prompt must contain {{chunk}} and may use "
            f"{{n}} and {{title}} only (write literal braces as {{{{ and }}}})"
        )


def build_messages(
    chunk_text: str, n: int, *, title: str = "", prompt: str = QUESTION_PROMPT,
    few_shot: Sequence[tuple[str, str]] = FEW_SHOT, system: str = SYSTEM_PROMPT,
) -> list[Message]:
    """The chat messages for one chunk. The chunk text only ever lands inside the last user message.

    Example:
        >>> build_messages("Rome was founded in 753 BC.", 2, few_shot=())[-1]["content"][:14]
        'Passage:\\nRome '
    """
    msgs: list[Message] = [{"role": "system", "content": system}] if system else []
    for passage, questions in few_shot:
        msgs.append({"role": "user", "content": prompt.format(chunk=passage, n=n, title="")})
        msgs.append({"role": "assistant", "content": questions})
    msgs.append({"role": "user", "content": prompt.format(chunk=chunk_text, n=n, title=title)})
    return msgs
