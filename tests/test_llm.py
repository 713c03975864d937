"""The one LLM path: the openai SDK against the embedded llama.cpp server (a real server, not a mock)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time

import pytest

from rag_rerank.generate.llm import LLMClient, LLMSettings, open_llm, parse_llm_spec, retry_wait
from rag_rerank.generate.server import EmbeddedLLMServer

MSGS = [{"role": "user", "content": "Write one question about: Lima is the capital of Peru."}]


def test_parse_llm_spec():
    assert parse_llm_spec("embedded") == ("embedded", "embedded:smollm2")
    assert parse_llm_spec("openai:gpt-4o-mini") == ("openai", "gpt-4o-mini")
    assert parse_llm_spec("/models/x.gguf") == ("embedded", "/models/x.gguf")
    for bad in ("openai:", "gpt-4o", ""):
        with pytest.raises(ValueError, match="--llm"):
            parse_llm_spec(bad)


def test_backoff_is_full_jitter_and_capped():
    from tenacity import RetryCallState

    wait = retry_wait(0.5, 8.0)
    for attempt in range(1, 11):
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        random.seed(attempt)
        delays = [wait(state) for _ in range(200)]
        cap = min(8.0, 0.5 * 2 ** (attempt - 1))
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.8  # actually spreads over the window (jitter), not a constant


def test_client_repr_never_shows_the_key():
    client = LLMClient(LLMSettings(model="m", base_url="http://127.0.0.1:1/v1"), api_key="sk-secret-123")
    assert "sk-secret" not in repr(client)


@pytest.mark.slow
def test_embedded_server_answers_through_the_openai_sdk():
    import openai

    with EmbeddedLLMServer() as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        # the plain SDK, no rag-rerank wrapper in between
        raw = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        resp = raw.chat.completions.create(model="embedded", messages=MSGS, max_tokens=40, seed=1)
        assert resp.choices[0].message.content.strip()
        assert resp.usage.completion_tokens > 0
        proc = server._proc
    assert proc is not None and proc.poll() is not None  # stopped on exit


@pytest.mark.slow
@pytest.mark.parametrize("passive", [True, False])
def test_omp_passive_reaches_the_server_process_and_it_still_answers(monkeypatch, passive: bool):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with EmbeddedLLMServer(omp_passive=passive) as server:
        environ = open(f"/proc/{server._proc.pid}/environ", "rb").read().split(b"\0")
        assert (b"OMP_WAIT_POLICY=PASSIVE" in environ) is passive
        llm = LLMClient(LLMSettings(model="embedded", base_url=server.base_url, seed=1, max_tokens=24))
        assert llm.complete(MSGS).text.strip()


def _busy_workers(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def test_busy_share_sees_other_work_on_every_core():
    from rag_rerank.generate.server import BUSY_SHARE, busy_share

    if not os.path.exists("/proc/stat"):
        pytest.skip("busy_share reads /proc/stat (Linux)")
    cores = len(os.sched_getaffinity(0))
    workers = _busy_workers(cores)
    try:
        time.sleep(0.3)
        busy = busy_share(0.5)
    finally:
        for w in workers:
            w.kill()
            w.wait()
    assert busy is not None and busy >= 0.8 * cores / (os.cpu_count() or cores)
    assert busy >= BUSY_SHARE or (os.cpu_count() or cores) > 4 * cores  # on a machine we fill, it passes the bar


@pytest.mark.slow
def test_default_waits_passively_when_the_machine_is_busy_and_spins_when_it_is_idle(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    if len(os.sched_getaffinity(0)) != (os.cpu_count() or 0):
        pytest.skip("needs every CPU of the machine: the busy share is machine-wide")
    workers = _busy_workers(os.cpu_count() or 1)
    try:
        time.sleep(0.3)
        with EmbeddedLLMServer() as busy:
            environ = open(f"/proc/{busy._proc.pid}/environ", "rb").read().split(b"\0")
            assert busy.passive is True and b"OMP_WAIT_POLICY=PASSIVE" in environ
    finally:
        for w in workers:
            w.kill()
            w.wait()
    time.sleep(1.0)
    with EmbeddedLLMServer() as idle:  # CI may run other work beside; then passive is the right answer too
        from rag_rerank.generate.server import BUSY_SHARE, busy_share

        share = busy_share(0.5)
        if share is not None and share < BUSY_SHARE / 2:
            assert idle.passive is False
        llm = LLMClient(LLMSettings(model="embedded", base_url=idle.base_url, seed=1, max_tokens=16))
        assert llm.complete(MSGS).text.strip()


def test_an_explicit_wait_policy_wins_over_the_measurement(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    assert EmbeddedLLMServer(omp_passive=True)._passive(dict(os.environ)) is False
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert EmbeddedLLMServer(omp_passive=False)._passive(dict(os.environ)) is True
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert EmbeddedLLMServer(omp_passive=False)._passive(dict(os.environ)) is False


@pytest.mark.slow
def test_embedded_generation_is_deterministic_for_a_seed():
    with open_llm("embedded", seed=7, max_tokens=48) as llm:
        a = [llm.complete(MSGS).text for _ in range(2)]
        b = [r.text for _, r in sorted(llm.complete_many([MSGS, MSGS], concurrency=1))]
    assert a[0] == a[1] == b[0] == b[1]
    assert a[0].strip()


@pytest.mark.slow
def test_server_is_stopped_when_the_caller_is_interrupted(tmp_path):
    """Ctrl-C (SIGINT) in the caller stops the child server: nothing is left listening."""
    script = tmp_path / "caller.py"
    script.write_text(
        textwrap.dedent("""
        import signal, sys, time
        # as an interactive Python: a caller started from a background job inherits SIGINT ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from rag_rerank.generate.server import EmbeddedLLMServer
        with EmbeddedLLMServer() as s:
            print(s._proc.pid, flush=True)
            time.sleep(60)
    """)
    )
    caller = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child_pid = int(caller.stdout.readline())
    caller.send_signal(2)  # SIGINT, as Ctrl-C
    caller.wait(timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(child_pid):
        time.sleep(0.2)
    assert not _alive(child_pid)


@pytest.mark.slow
def test_orphaned_server_exits_when_its_parent_is_killed(tmp_path):
    script = tmp_path / "caller.py"
    script.write_text(
        textwrap.dedent("""
        import time
        from rag_rerank.generate.server import EmbeddedLLMServer
        s = EmbeddedLLMServer().start()
        print(s._proc.pid, flush=True)
        time.sleep(60)
    """)
    )
    caller = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child_pid = int(caller.stdout.readline())
    caller.kill()  # SIGKILL: no cleanup code runs in the caller
    caller.wait(timeout=10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(child_pid):
        time.sleep(0.2)
    assert not _alive(child_pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
