"""The embedded LLM: llama.cpp's OpenAI-compatible server (xllamacpp) for a local GGUF, on 127.0.0.1.

:class:`EmbeddedLLMServer` starts :mod:`rag_rerank.generate._llama_server` in a child process on a free loopback
port, waits for ``/health``, and stops it on exit, on errors and on Ctrl-C; the child also exits by itself when
its parent dies. Clients talk to it through the same ``openai`` SDK path as to OpenAI
(:func:`rag_rerank.generate.llm.open_llm`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rag_rerank.errors import LLMError

logger = logging.getLogger(__name__)


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
        poll: llama.cpp's busy-wait level between jobs, 0-100 (50 is llama.cpp's default; 0 sleeps, which leaves the
            cores to other work on a shared machine).
        cache_ram_mib: host RAM for llama.cpp's prompt cache (``None``: llama.cpp's default, 8 GiB).
        omp_passive: run the server with ``OMP_WAIT_POLICY=PASSIVE`` (unless the environment sets it): the
            wheel's llama.cpp is built with OpenMP, whose idle threads otherwise spin and starve other work on the
            same cores (torch training, a second server).
        startup_timeout: seconds to wait for ``/health``.
    """

    def __init__(
        self,
        model: str = "embedded:smollm2",
        *,
        parallel: int = 1,
        ctx: int = 4096,
        threads: int = 0,
        poll: int = 50,
        cache_ram_mib: int | None = None,
        omp_passive: bool = False,
        startup_timeout: float = 120.0,
    ) -> None:
        from rag_rerank.models import resolve_model_path

        self.model_path = resolve_model_path(model, role="llm")
        self.model_name = model
        self.parallel, self.ctx, self.threads = parallel, ctx, threads
        self.poll, self.cache_ram_mib, self.omp_passive = poll, cache_ram_mib, omp_passive
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
            "rag_rerank.generate._llama_server",
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
            "--poll",
            str(self.poll),
        ]
        if self.cache_ram_mib is not None:
            cmd += ["--cache-ram-mib", str(self.cache_ram_mib)]
        logger.info("starting embedded LLM server (%s) on %s:%d", Path(self.model_path).name, self.host, self.port)
        env = dict(os.environ)
        if self.omp_passive:
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=env)
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


