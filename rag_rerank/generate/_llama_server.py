"""Child process that serves a GGUF with llama.cpp's OpenAI-compatible server (xllamacpp).

Started and stopped by :class:`rag_rerank.generate.server.EmbeddedLLMServer`; not a public entry point. It runs
in its own process so the parent can always stop it (SIGTERM) and so a crash in native code cannot
take the caller down. It exits by itself when its parent dies.

Usage: python -m rag_rerank.generate._llama_server --model PATH --port N [--ctx N] [--parallel N] [--threads N]
       [--poll 0-100] [--cache-ram-mib N]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--poll", type=int, default=50)
    ap.add_argument("--cache-ram-mib", type=int, default=-1)
    ap.add_argument("--alias", default="embedded")
    args = ap.parse_args()

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = args.alias
    params.hostnames = [args.host]
    params.port = args.port
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx * args.parallel  # llama.cpp splits n_ctx across slots
    threads = args.threads or max(1, os.cpu_count() or 1)
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.cpuparams.poll = args.poll  # 0: worker threads sleep instead of spinning between jobs
    params.cpuparams_batch.poll = args.poll
    if args.cache_ram_mib >= 0:  # llama.cpp keeps prompt states in host RAM (8 GiB by default)
        params.cache_ram_mib = args.cache_ram_mib
    server = xllamacpp.Server(params)  # noqa: F841  (serves on background threads while referenced)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    parent = os.getppid()
    print(f"ready {args.host}:{args.port}", flush=True)
    while not stop.wait(0.5):
        if os.getppid() != parent:  # orphaned: the caller died without stopping us
            break
    sys.stdout.flush()
    # xllamacpp's server threads do not join cleanly on every version; exit hard once stopped.
    time.sleep(0.05)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
