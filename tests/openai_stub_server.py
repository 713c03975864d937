"""A small, scripted OpenAI-compatible chat server on 127.0.0.1, for tests and benchmarks.

Each request to ``POST /v1/chat/completions`` takes the next :class:`Action` of the script (then
the default): an answer, an HTTP error (429, 500...), a stall longer than the client's timeout,
garbage bytes, or a dropped connection. With ``fault_rate`` it injects seeded random faults,
counted per kind (``GET /stats``: requests, faults, faults by kind). The default answer writes two
specific questions from the longest words of the passage (the longest paragraph of the last user
message), so generation can be tested end to end through the real ``openai`` SDK. Every request
body is recorded.

Usage in a test::

    with StubOpenAIServer(script=[Action.error(429), Action.text("1. What is X?")]) as srv:
        llm = LLMClient(LLMSettings(model="stub", base_url=srv.base_url))

Usage as a process (benchmarks, subprocess tests)::

    python tests/openai_stub_server.py --port 8765 --delay 0.2 --fault-rate 0.4 --seed 1
    curl http://127.0.0.1:8765/stats   # {"requests": ..., "faults": ..., "faults_by_kind": {...}}
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Action:
    """What the server does with one request."""

    kind: str = "auto"  # auto | text | error | stall | garbage | close
    content: str = ""
    status: int = 200
    delay: float = 0.0

    @staticmethod
    def text(content: str, delay: float = 0.0) -> Action:
        return Action("text", content=content, delay=delay)

    @staticmethod
    def error(status: int = 500, message: str = "") -> Action:
        return Action("error", content=message, status=status)

    @staticmethod
    def stall(seconds: float) -> Action:
        return Action("stall", delay=seconds)

    @staticmethod
    def garbage() -> Action:
        return Action("garbage")

    @staticmethod
    def close() -> Action:
        return Action("close")


_STOP = set("about after before between during their there these those which where while would could should".split())


def auto_questions(messages: list[dict[str, Any]], n: int = 2) -> str:
    """Deterministic, specific questions built from the passage's longest distinct words."""
    user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    passage = max(user.split("\n\n"), key=len) if user else ""
    words = sorted({w for w in re.findall(r"[A-Za-z][a-z]{5,}", passage) if w.lower() not in _STOP},
                   key=lambda w: (-len(w), w))
    if len(words) < 2:
        return "I cannot write questions about this."
    out = []
    for i in range(n):
        a, b = words[(2 * i) % len(words)], words[(2 * i + 1) % len(words)]
        out.append(f"{i + 1}. How is {a} related to {b} in this account?")
    return "Here are the questions:\n" + "\n".join(out)


class _QuietServer(ThreadingHTTPServer):
    """Ignores clients that vanish mid-request (a killed CLI), instead of printing a traceback."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class StubOpenAIServer:
    """A threaded OpenAI-compatible server with scripted answers and faults.

    Args:
        script: actions for the first requests, in order.
        default: the action once the script is used up.
        delay: extra seconds before every answer (a fixed artificial latency).
        fault_rate: probability of a random fault (429, 500, garbage, empty answer) per request.
        seed: seeds the fault draws.
        responder: ``messages -> answer text`` for ``auto`` actions (default :func:`auto_questions`).
    """

    def __init__(
        self, script: Iterable[Action] = (), *, default: Action | None = None, delay: float = 0.0,
        fault_rate: float = 0.0, seed: int = 0, responder: Callable[[list[dict]], str] | None = None,
        port: int = 0,
    ) -> None:
        self._script: deque[Action] = deque(script)
        self.default = default or Action()
        self.delay = delay
        self.fault_rate = fault_rate
        self._rng = random.Random(seed)
        self.responder = responder or auto_questions
        self.requests: list[dict[str, Any]] = []
        self.faults = 0
        self.faults_by_kind: dict[str, int] = {}
        self.authorized = 0
        self._lock = threading.Lock()
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle
    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def n_requests(self) -> int:
        with self._lock:
            return len(self.requests)

    def stats(self) -> dict[str, Any]:
        """Counters: requests, injected faults (total and by kind), requests that carried a bearer key."""
        with self._lock:
            return {"requests": len(self.requests), "faults": self.faults,
                    "faults_by_kind": dict(sorted(self.faults_by_kind.items())), "authorized": self.authorized}

    def push(self, *actions: Action) -> None:
        with self._lock:
            self._script.extend(actions)

    def start(self) -> StubOpenAIServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/").endswith("/stats"):
                    return self._send(200, json.dumps(server.stats()).encode())
                body = json.dumps({"object": "list", "data": [{"id": "stub", "object": "model"}]}).encode()
                self._send(200, body)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    req = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    req = {}
                action = server._next(req, self.headers.get("Authorization", ""))
                time.sleep(server.delay + action.delay)
                if action.kind == "stall":
                    return self._send(500, b'{"error": {"message": "stalled"}}', close=True)
                if action.kind == "close":
                    self.close_connection = True
                    return None
                if action.kind == "error":
                    msg = action.content or f"stub error {action.status}"
                    body = json.dumps({"error": {"message": msg, "type": "stub"}})
                    return self._send(action.status, body.encode())
                if action.kind == "garbage":
                    return self._send(200, b"\x00\xffnot json{{{")
                content = action.content if action.kind == "text" else server.responder(req.get("messages", []))
                prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in req.get("messages", []))
                body = {
                    "id": f"chatcmpl-stub-{server.n_requests}", "object": "chat.completion", "created": 0,
                    "model": req.get("model", "stub"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(content.split()),
                              "total_tokens": prompt_tokens + len(content.split())},
                }
                return self._send(200, json.dumps(body).encode())

            def _send(self, status: int, body: bytes, close: bool = False) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    if close:
                        self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._httpd = _QuietServer(("127.0.0.1", self._port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="stub-openai", daemon=True)
        self._thread.start()
        return self

    def _next(self, req: dict[str, Any], auth: str = "") -> Action:
        with self._lock:
            self.requests.append(req)
            self.authorized += auth.startswith("Bearer ") and len(auth) > len("Bearer ")
            action = self._script.popleft() if self._script else self.default
            if action.kind == "auto" and self.fault_rate and self._rng.random() < self.fault_rate:
                self.faults += 1
                action = self._rng.choice(
                    [Action.error(429), Action.error(500), Action.error(503), Action.garbage(), Action.text("")]
                )
                kind = f"http_{action.status}" if action.kind == "error" else (
                    "empty" if action.kind == "text" else action.kind)
                self.faults_by_kind[kind] = self.faults_by_kind.get(kind, 0) + 1
            return action

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> StubOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    srv = StubOpenAIServer(delay=args.delay, fault_rate=args.fault_rate, seed=args.seed, port=args.port).start()
    print(srv.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
