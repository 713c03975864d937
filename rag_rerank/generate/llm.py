"""One path to every LLM: the ``openai`` SDK against an OpenAI-compatible server.

- ``--llm embedded`` starts llama.cpp's server (xllamacpp) on 127.0.0.1 on a free port, serving the
  packaged SmolLM2 GGUF; it is health-checked, and stopped on exit, errors and Ctrl-C.
- ``--llm openai:MODEL`` talks to OpenAI, or to any compatible server with ``base_url`` (vLLM,
  Ollama, llama.cpp).

Retries (``tenacity``) use exponential backoff with full jitter on 429, 5xx, timeouts, connection errors and
200s whose body is not the JSON asked for (a proxy's HTML page); every request has its own timeout. The
``openai`` SDK's own retries are turned off: they do not retry a garbled 200. The API key is read from
``OPENAI_API_KEY`` and never logged or written. The embedded server lives in :mod:`rag_rerank.generate.server`.

Example:
    >>> with open_llm("embedded", seed=0) as llm:  # doctest: +SKIP
    ...     print(llm.complete([{"role": "user", "content": "Say hi"}]).text)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from rag_rerank.errors import ConfigError, LLMError

logger = logging.getLogger(__name__)

Message = dict[str, str]
EMBEDDED_ALIASES = ("embedded", "embedded:smollm2")


@dataclass(frozen=True)
class LLMSettings:
    """How to talk to the LLM. Sampling settings apply to every request unless overridden."""

    model: str
    base_url: str | None = None
    timeout: float = 60.0
    max_retries: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    temperature: float = 0.7
    max_tokens: int = 256
    seed: int | None = 0
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    """A chat completion's text plus accounting."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1
    finish_reason: str | None = None


def _is_retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError)):
        return True
    # a 200 whose body is not the JSON asked for (a proxy's HTML page, a truncated or garbled body): transient
    if isinstance(exc, (openai.APIResponseValidationError, json.JSONDecodeError, UnicodeDecodeError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return False


def retry_wait(base: float, cap: float) -> Any:
    """Full-jitter exponential backoff: before retry ``n`` (1-based), wait ``uniform(0, min(cap, base * 2**(n-1)))``."""
    from tenacity import wait_random_exponential

    return wait_random_exponential(multiplier=base, max=cap)


class LLMClient:
    """A thread-safe OpenAI-compatible chat client with retries and bounded concurrency.

    Args:
        settings: model, endpoint and sampling settings.
        api_key: the key; defaults to ``$OPENAI_API_KEY`` (a placeholder for local servers).
    """

    def __init__(self, settings: LLMSettings, api_key: str | None = None) -> None:
        import openai

        self.settings = settings
        key = api_key or os.environ.get("OPENAI_API_KEY") or "sk-no-key-needed"
        self._client = openai.OpenAI(api_key=key, base_url=settings.base_url, timeout=settings.timeout, max_retries=0)

    def __repr__(self) -> str:  # never show the key
        return f"LLMClient(model={self.settings.model!r}, base_url={self.settings.base_url!r})"

    def complete(self, messages: Sequence[Message], **overrides: Any) -> Completion:
        """One chat completion, retried on transient failures.

        Args:
            messages: OpenAI chat messages. Text is sent as data; it can never change the roles.
            **overrides: per-request ``temperature``, ``max_tokens``, ``seed``, ...

        Raises:
            LLMError: when retries are exhausted or the request is rejected for good.
        """
        import openai

        s = self.settings
        params: dict[str, Any] = {
            "model": s.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "temperature": s.temperature,
            "max_tokens": s.max_tokens,
        }
        if s.seed is not None:
            params["seed"] = s.seed
        params.update(overrides)
        if s.extra_body:
            params["extra_body"] = dict(s.extra_body)
        from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt

        retrying = Retrying(
            stop=stop_after_attempt(s.max_retries + 1), wait=retry_wait(s.backoff_base, s.backoff_max),
            retry=retry_if_exception(_is_retryable), reraise=True, before_sleep=_log_retry,
        )
        try:
            for attempt in retrying:
                with attempt:
                    resp = self._client.chat.completions.create(**params)
                n = attempt.retry_state.attempt_number
        except RetryError as e:  # pragma: no cover - reraise=True re-raises the last exception instead
            raise LLMError(f"LLM request failed: {e}") from e
        except Exception as e:  # noqa: BLE001 - not retryable, or retries exhausted
            n = retrying.statistics.get("attempt_number", 1)
            if isinstance(e, openai.AuthenticationError):
                raise LLMError("the LLM server rejected the API key (401); check OPENAI_API_KEY") from e
            raise LLMError(f"LLM request failed after {n} attempt(s): {_describe(e)}") from e
        choice = resp.choices[0] if resp.choices else None
        text = (choice.message.content if choice and choice.message else None) or ""
        usage = resp.usage
        return Completion(
            text=text,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            attempts=n,
            finish_reason=getattr(choice, "finish_reason", None),
        )

    def complete_many(
        self, requests: Sequence[Sequence[Message]], concurrency: int = 4, **overrides: Any
    ) -> Iterator[tuple[int, Completion | LLMError]]:
        """Run many requests with at most ``concurrency`` in flight; yield ``(index, result)`` as they finish.

        A request that fails for good yields its :class:`LLMError` instead of raising, so one bad
        chunk never stops the others.
        """
        if concurrency <= 1:
            for i, msgs in enumerate(requests):
                yield i, self._safe(msgs, overrides)
            return
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="llm") as pool:
            futures = {pool.submit(self._safe, msgs, overrides): i for i, msgs in enumerate(requests)}
            try:
                for fut in as_completed(futures):
                    yield futures[fut], fut.result()
            finally:
                for fut in futures:
                    fut.cancel()

    def _safe(self, messages: Sequence[Message], overrides: dict[str, Any]) -> Completion | LLMError:
        try:
            return self.complete(messages, **overrides)
        except LLMError as e:
            return e


def _log_retry(state: Any) -> None:
    logger.debug("LLM request failed (%s); retry %d in %.2fs", _describe(state.outcome.exception()),
                 state.attempt_number, state.next_action.sleep if state.next_action else 0.0)


def _describe(exc: BaseException) -> str:
    """A short, key-free description of an exception."""
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    return f"{name} (HTTP {status})" if status else name


def parse_llm_spec(spec: str) -> tuple[str, str]:
    """Split ``--llm`` values into (kind, model): ``embedded``, ``openai:gpt-4o-mini``, ``gguf:/path``.

    Raises:
        ValueError: on an unknown spec, naming it and the accepted forms.
    """
    if spec in EMBEDDED_ALIASES:
        return "embedded", "embedded:smollm2"
    if spec.endswith(".gguf"):
        return "embedded", spec.removeprefix("gguf:")
    if spec.startswith("openai:") and len(spec) > len("openai:"):
        return "openai", spec.split(":", 1)[1]
    raise ConfigError(
        f"unknown --llm {spec!r}; use 'embedded', 'openai:MODEL' (with --base-url for vLLM/Ollama/llama.cpp), "
        "or a path to a .gguf file"
    )


@contextlib.contextmanager
def open_llm(
    spec: str = "embedded",
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    parallel: int = 1,
    **settings: Any,
) -> Iterator[LLMClient]:
    """Yield an :class:`LLMClient` for ``spec``, starting (and finally stopping) a local server if needed.

    Args:
        spec: ``embedded``, ``openai:MODEL`` or a ``.gguf`` path.
        base_url: an OpenAI-compatible endpoint for ``openai:MODEL``.
        api_key: overrides ``$OPENAI_API_KEY``.
        parallel: slots for the embedded server.
        **settings: fields of :class:`LLMSettings` (temperature, max_tokens, seed, timeout, ...).
    """
    kind, model = parse_llm_spec(spec)
    if kind == "openai":
        yield LLMClient(LLMSettings(model=model, base_url=base_url, **settings), api_key=api_key)
        return
    from rag_rerank.generate.server import EmbeddedLLMServer

    with EmbeddedLLMServer(model, parallel=parallel) as server:
        yield LLMClient(LLMSettings(model="embedded", base_url=server.base_url, **settings), api_key=api_key)
