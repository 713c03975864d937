"""One path to every LLM: the ``openai`` SDK against an OpenAI-compatible server.

- ``--llm embedded`` starts llama.cpp's server (xllamacpp) on 127.0.0.1 on a free port, serving the
  packaged SmolLM2 GGUF; it is health-checked, and stopped on exit, errors and Ctrl-C.
- ``--llm openai:MODEL`` talks to OpenAI, or to any compatible server with ``base_url`` (vLLM,
  Ollama, llama.cpp).

Retries use exponential backoff with full jitter on 429, 5xx, timeouts and connection errors; every
request has its own timeout. The API key is read from ``OPENAI_API_KEY`` and never logged or written.

Example:
    >>> with open_llm("embedded", seed=0) as llm:  # doctest: +SKIP
    ...     print(llm.complete([{"role": "user", "content": "Say hi"}]).text)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag_rerank.errors import LLMError

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


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**attempt))."""
    return (rng or random).uniform(0, min(cap, base * (2**attempt)))


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
        self._rng = random.Random(settings.seed)
        self._lock = threading.Lock()

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
        last: BaseException | None = None
        for attempt in range(s.max_retries + 1):
            try:
                resp = self._client.chat.completions.create(**params)
                choice = resp.choices[0] if resp.choices else None
                text = (choice.message.content if choice and choice.message else None) or ""
                usage = resp.usage
                return Completion(
                    text=text,
                    prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                    completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                    attempts=attempt + 1,
                    finish_reason=getattr(choice, "finish_reason", None),
                )
            except Exception as e:  # noqa: BLE001 - classified below
                last = e
                if not _is_retryable(e) or attempt == s.max_retries:
                    break
                with self._lock:
                    delay = backoff_delay(attempt, s.backoff_base, s.backoff_max, self._rng)
                logger.debug("LLM request failed (%s); retry %d in %.2fs", _describe(e), attempt + 1, delay)
                time.sleep(delay)
        assert last is not None
        if isinstance(last, openai.AuthenticationError):
            raise LLMError("the LLM server rejected the API key (401); check OPENAI_API_KEY") from last
        raise LLMError(f"LLM request failed after {attempt + 1} attempt(s): {_describe(last)}") from last

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


def _describe(exc: BaseException) -> str:
    """A short, key-free description of an exception."""
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    return f"{name} (HTTP {status})" if status else name


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedLLMServer:
    """llama.cpp's OpenAI-compatible server for a local GGUF, in a child process on 127.0.0.1.

    Use as a context manager; the server is stopped on exit, on errors and on Ctrl-C, and the
    child stops by itself if this process dies.

    Args:
        model: a GGUF path or ``embedded:smollm2``.
        parallel: server slots. 1 (the default) keeps generation deterministic for a fixed seed.
        ctx: context tokens per slot.
        threads: CPU threads (0 = all cores).
        startup_timeout: seconds to wait for ``/health``.
    """

    def __init__(
        self,
        model: str = "embedded:smollm2",
        *,
        parallel: int = 1,
        ctx: int = 4096,
        threads: int = 0,
        startup_timeout: float = 120.0,
    ) -> None:
        from rag_rerank.models import resolve_model_path

        self.model_path = resolve_model_path(model, role="llm")
        self.model_name = model
        self.parallel, self.ctx, self.threads = parallel, ctx, threads
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None
        self._log: Any = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise LLMError("the embedded LLM server is not running")
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> EmbeddedLLMServer:
        import tempfile

        self.port = free_port(self.host)
        self._log = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        cmd = [
            sys.executable,
            "-m",
            "rag_rerank._llama_server",
            "--model",
            str(self.model_path),
            "--port",
            str(self.port),
            "--host",
            self.host,
            "--ctx",
            str(self.ctx),
            "--parallel",
            str(self.parallel),
            "--threads",
            str(self.threads),
        ]
        logger.info("starting embedded LLM server (%s) on %s:%d", Path(self.model_path).name, self.host, self.port)
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + self.startup_timeout
        url = f"http://{self.host}:{self.port}/health"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise LLMError(
                    f"the embedded LLM server exited at start (code {self._proc.returncode}): {self._tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        logger.info("embedded LLM server healthy at %s", self.base_url)
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.2)
        raise LLMError(f"the embedded LLM server did not become healthy in {self.startup_timeout:.0f}s: {self._tail()}")

    def _tail(self, n: int = 400) -> str:
        if self._log is None:
            return ""
        with contextlib.suppress(Exception):
            self._log.seek(0)
            return " ".join(self._log.read()[-n:].split())
        return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            logger.info("embedded LLM server stopped")
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
    raise ValueError(
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
    with EmbeddedLLMServer(model, parallel=parallel) as server:
        yield LLMClient(LLMSettings(model="embedded", base_url=server.base_url, **settings), api_key=api_key)
