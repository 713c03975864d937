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


BUSY_SHARE = 0.25  # other work on at least this share of the cores at start: the server's threads wait passively


def busy_share(seconds: float = 0.5) -> float | None:
    """The share of this machine's CPU time spent busy over the next ``seconds`` (``None`` where unknown).

    Read from ``/proc/stat`` (Linux): busy is everything but idle and I/O wait. The caller sleeps meanwhile, so
    what it sees is other work.
    """

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return None if total <= 0 else 1.0 - (idle1 - idle0) / total


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
        poll: llama.cpp's busy-wait level between jobs, 0-100 (``None``: 0 with passive waits, else llama.cpp's
            default 50).
        cache_ram_mib: host RAM for llama.cpp's prompt cache (``None``: llama.cpp's default, 8 GiB).
        omp_passive: run the server with ``OMP_WAIT_POLICY=PASSIVE``. The wheel's llama.cpp is built with OpenMP,
            and its threads meet at an OpenMP barrier after every operation. Spinning there is fastest alone, but
            beside other work on the same cores (torch training, a second server) a thread spins while its
            partner waits for a core: measured on 2 cores, 6.8x slower beside training and 4.7x for two servers
            (``pipelines/results/bench_llm_server.json``). Passive waits cost about 1.75x alone and keep both
            cases within 2x of the spinning speed alone. ``None`` (the default) decides at start: passive when
            other work keeps at least a quarter of the cores busy (:func:`busy_share`), spinning otherwise. An
            ``OMP_WAIT_POLICY`` in the environment wins over all of these.
        startup_timeout: seconds to wait for ``/health``.
    """

    def __init__(
        self,
        model: str = "embedded:smollm2",
        *,
        parallel: int = 1,
        ctx: int = 4096,
        threads: int = 0,
        poll: int | None = None,
        cache_ram_mib: int | None = None,
        omp_passive: bool | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        from rag_rerank.models import resolve_model_path

        self.model_path = resolve_model_path(model, role="llm")
        self.model_name = model
        self.parallel, self.ctx, self.threads = parallel, ctx, threads
        self.poll, self.cache_ram_mib, self.omp_passive = poll, cache_ram_mib, omp_passive
        self.startup_timeout = startup_timeout
        self.passive: bool | None = None  # how its threads wait, once started
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

        env = dict(os.environ)
        passive = self.passive = self._passive(env)
        if passive:
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        poll = self.poll if self.poll is not None else 0 if passive else 50
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
            str(poll),
        ]
        if self.cache_ram_mib is not None:
            cmd += ["--cache-ram-mib", str(self.cache_ram_mib)]
        logger.info("starting embedded LLM server (%s) on %s:%d", Path(self.model_path).name, self.host, self.port)
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=env)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _passive(self, env: dict[str, str]) -> bool:
        """Whether the server's OpenMP threads wait passively (see ``omp_passive``); logs why."""
        if "OMP_WAIT_POLICY" in env:
            return env["OMP_WAIT_POLICY"].strip().upper() == "PASSIVE"
        if self.omp_passive is not None:
            return self.omp_passive
        share = busy_share()
        passive = share is not None and share >= BUSY_SHARE
        if passive:
            logger.info("other work keeps %.0f%% of the CPU busy: the embedded LLM's threads wait passively "
                        "(slower alone, no collapse beside other work; omp_passive=False to override)", 100 * share)
        return passive

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


