"""Fault injection: `rag-rerank generate` over a messy folder against a flaky server, and a resume after SIGKILL.

1. Build a temp folder: a few sample_docs texts (cut to ``--doc-chars``) plus a binary file, a
   Latin-1 file and an empty file.
2. Start tests/openai_stub_server.py as a process that fails ``--fault-rate`` of the requests
   (seeded: 429, 500, 503, garbage bytes, empty answers), with a key in ``OPENAI_API_KEY``.
3. Phase A: run the real CLI (a subprocess); exit 0, or 3 with the failures in ``failed_chunks``;
   rerun until every chunk has questions (each rerun must ask only the failed chunks).
4. Phase B: a fresh output folder; SIGKILL the CLI mid-run, then resume (and rerun failures) the same
   way. The final dataset must equal phase A's (the stub's answers are deterministic).
5. After every run check: no chunk lost (each has questions or is in ``failed_chunks``), no duplicate
   query id, no traceback and no API key in stdout, stderr or any output file, the exit code, and
   the load report (binary, Latin-1 and empty files counted).

Usage:
    python pipelines/fault_check.py [--fault-rate 0.4] [--seed 1] [--docs 3] [--doc-chars 3000]

Prints faults injected (the stub's ``GET /stats``), faults survived, chunks lost, duplicates, leaks and
exit codes; writes pipelines/results/fault_check.json (with the command and wall time); exits 1 if
any invariant fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from rag_rerank.data import SAMPLE_DOCS

REPO = Path(__file__).resolve().parents[1]
STUB = REPO / "tests" / "openai_stub_server.py"
SECRET = "sk-faultcheck-DO-NOT-LEAK-0b7e41c95d"
DOCS = ("Geology.md", "Black_Death.txt", "Packet_switching.md", "Amazon_rainforest.md", "Private_school.txt")


def make_messy_folder(folder: Path, n_docs: int = 3, doc_chars: int = 3000) -> Path:
    """Good sample_docs texts plus a binary, a Latin-1 and an empty file (all with supported extensions)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in DOCS[:n_docs]:
        text = (SAMPLE_DOCS / name).read_text(encoding="utf-8")[:doc_chars]
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "blob.txt").write_bytes(bytes(range(256)) * 8)
    (folder / "latin1.txt").write_bytes(
        "The Zürich café near the station serves crème brûlée and iced tea every morning; the pâtisserie opens "
        "at seven o'clock and the baker prepares croissants.".encode("latin-1"))
    (folder / "empty.md").write_bytes(b"")
    return folder


class StubProcess:
    """tests/openai_stub_server.py in a child process; ``stats()`` reads its counters over HTTP."""

    def __init__(self, fault_rate: float, seed: int, delay: float) -> None:
        self.args = [sys.executable, str(STUB), "--port", "0", "--fault-rate", str(fault_rate), "--seed", str(seed),
                     "--delay", str(delay)]
        self.proc: subprocess.Popen | None = None
        self.base_url = ""

    def __enter__(self) -> StubProcess:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http://127.0.0.1:"):
            self.__exit__()
            raise RuntimeError(f"stub server did not start: {self.base_url!r}")
        return self

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/stats", timeout=10) as r:
            return json.loads(r.read())

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def generate_cmd(docs: Path, out: Path, base_url: str, *, concurrency: int = 8, chunk_tokens: int = 128) -> list[str]:
    """The real CLI, as a user would type it."""
    return [sys.executable, "-m", "rag_rerank", "generate", str(docs), "--out", str(out), "--llm", "openai:stub",
            "--base-url", base_url, "--tokenizer", "embedded:minilm", "--chunk-tokens", str(chunk_tokens),
            "--concurrency", str(concurrency), "--no-progress"]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI run: offline, with the API key set."""
    return {**os.environ, "OPENAI_API_KEY": SECRET, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def scan_leaks(out: Path, *texts: str, secret: str = SECRET) -> dict[str, list[str]]:
    """Where the API key or a traceback appears: in the given texts (``<text N>``) or in any file under ``out``."""
    found: dict[str, list[str]] = {"api_key": [], "traceback": []}
    blobs = [(f"<text {i}>", t.encode("utf-8", "replace")) for i, t in enumerate(texts)]
    blobs += [(str(p.relative_to(out)), p.read_bytes()) for p in sorted(out.rglob("*")) if p.is_file()]
    for where, data in blobs:
        if secret.encode() in data:
            found["api_key"].append(where)
        if b"Traceback (most recent call last)" in data:
            found["traceback"].append(where)
    return found


def check_dataset(out: Path) -> dict[str, Any]:
    """Invariants of one output folder: every chunk has questions or is listed in ``failed_chunks``; no duplicates.

    Returns:
        ``chunks``, ``covered``, ``failed`` (counts), ``lost`` and ``covered_and_failed`` (chunk ids),
        ``duplicate_query_ids``, ``duplicate_ok_records`` (a chunk asked again after it succeeded),
        ``query_ids`` (sorted), ``failed_ids``, ``manifest``.
    """
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    chunk_ids = [json.loads(line)["_id"] for line in (out / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    queries = [json.loads(line) for line in (out / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    qids = [q["_id"] for q in queries]
    qrel_ids = [line.split("\t")[0] for s in ("train", "validation", "test")
                for line in (out / "qrels" / f"{s}.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    covered = {q["chunk_id"] for q in queries}
    failed = {f["chunk_id"] for f in manifest["failed_chunks"]}
    selected = set(chunk_ids) if manifest["settings"].get("max_chunks") is None else covered | failed
    ok_records = Counter(
        r["chunk_id"] for r in map(json.loads, (out / "checkpoint.jsonl").read_text(encoding="utf-8").splitlines())
        if r.get("status") == "ok")
    return {
        "chunks": len(selected), "covered": len(covered), "failed": len(failed),
        "lost": sorted(selected - covered - failed), "covered_and_failed": sorted(covered & failed),
        "unknown_chunks": sorted((covered | failed) - set(chunk_ids)),
        "duplicate_query_ids": len(qids) - len(set(qids)) + len(qrel_ids) - len(set(qrel_ids))
        + len(set(qids) ^ set(qrel_ids)),
        "duplicate_ok_records": sum(n - 1 for n in ok_records.values()),
        "query_ids": sorted(qids), "failed_ids": sorted(failed), "manifest": manifest,
    }


def faults_survived(out: Path) -> int:
    """Faults absorbed without losing the chunk: the extra requests (retries, re-asks) of chunks that succeeded."""
    records = map(json.loads, (out / "checkpoint.jsonl").read_text(encoding="utf-8").splitlines())
    return sum(r.get("attempts", 1) - 1 for r in records if r.get("status") == "ok")


def run_cli(cmd: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr, "seconds": round(time.perf_counter() - t, 2)}


class Checker:
    """Collects invariant results; ``ok`` is False once any fails."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def expect(self, cond: bool, what: str) -> bool:
        if not cond:
            self.failures.append(what)
            print(f"  FAIL: {what}")
        return cond

    @property
    def ok(self) -> bool:
        return not self.failures


def check_run(chk: Checker, label: str, out: Path, run: dict[str, Any], prev_failed: int | None) -> dict[str, Any]:
    """Check one CLI run's exit code, output folder and leaks; return its summary row."""
    d = check_dataset(out)
    leaks = scan_leaks(out, run["stdout"], run["stderr"])
    m = d["manifest"]
    expected_rc = 3 if d["failed"] else 0
    chk.expect(run["rc"] == expected_rc, f"{label}: exit {run['rc']}, expected {expected_rc} "
               f"({d['failed']} failed chunks); stderr: {run['stderr'][-300:]!r}")
    chk.expect(not d["lost"], f"{label}: {len(d['lost'])} chunk(s) lost: {d['lost'][:3]}")
    chk.expect(not d["covered_and_failed"], f"{label}: chunks both covered and failed: {d['covered_and_failed'][:3]}")
    chk.expect(not d["unknown_chunks"], f"{label}: ids not in the corpus: {d['unknown_chunks'][:3]}")
    chk.expect(d["duplicate_query_ids"] == 0, f"{label}: {d['duplicate_query_ids']} duplicate query id(s)")
    chk.expect(d["duplicate_ok_records"] == 0, f"{label}: {d['duplicate_ok_records']} chunk(s) re-asked after success")
    chk.expect(not leaks["api_key"], f"{label}: API key found in {leaks['api_key']}")
    chk.expect(not leaks["traceback"], f"{label}: traceback found in {leaks['traceback']}")
    chk.expect(m["status"] == ("partial" if d["failed"] else "complete"), f"{label}: manifest status {m['status']}")
    rep = m["inputs"]["load_report"]
    chk.expect({s["source"] for s in rep["skipped"]} >= {"blob.txt", "empty.md"} and "latin1.txt" in rep["latin1"],
               f"{label}: load report does not count the binary/empty/Latin-1 files: {rep}")
    asked = m["timings"]["requests_this_run"]
    if prev_failed is not None:
        chk.expect(asked == prev_failed, f"{label}: asked {asked} chunk(s), expected only the {prev_failed} failed")
    return {"label": label, "rc": run["rc"], "seconds": run["seconds"], "chunks": d["chunks"],
            "covered": d["covered"], "failed": d["failed"], "lost": len(d["lost"]),
            "duplicate_query_ids": d["duplicate_query_ids"], "chunks_asked": asked,
            "api_key_leaked": bool(leaks["api_key"]), "traceback": bool(leaks["traceback"])}


def run_until_complete(chk: Checker, label: str, cmd: list[str], out: Path, env: dict[str, str], max_reruns: int,
                       first: dict[str, Any] | None = None, timeout: float = 300) -> list[dict[str, Any]]:
    """Run (or take ``first``), then rerun while chunks failed; every run is checked."""
    rows: list[dict[str, Any]] = []
    run = first or run_cli(cmd, env, timeout)
    prev: int | None = None
    for i in range(max_reruns + 1):
        row = check_run(chk, f"{label} run {i + 1}", out, run, prev)
        rows.append(row)
        print(f"  {row['label']}: exit {row['rc']}, {row['covered']}/{row['chunks']} chunks with questions, "
              f"{row['failed']} failed (listed), {row['lost']} lost, asked {row['chunks_asked']}, {row['seconds']}s")
        if row["rc"] != 3 or i == max_reruns:
            break
        prev = row["failed"]
        run = run_cli(cmd, env, timeout)
    chk.expect(rows[-1]["rc"] == 0, f"{label}: still partial after {max_reruns} rerun(s)")
    return rows


def sigkill_mid_run(cmd: list[str], out: Path, env: dict[str, str], at_records: int,
                    timeout: float = 300) -> dict[str, Any]:
    """Start the CLI, SIGKILL it once the checkpoint holds ``at_records`` lines; report what was on disk."""
    ck = out / "checkpoint.jsonl"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ck.is_file() and ck.read_bytes().count(b"\n") >= at_records:
            break
        time.sleep(0.01)
    finished_first = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    stdout, stderr = proc.communicate()
    lines = ck.read_bytes().count(b"\n") if ck.is_file() else 0
    return {"killed_mid_run": not finished_first and not (out / "manifest.json").exists(),
            "checkpoint_records_at_kill": lines, "stdout": stdout, "stderr": stderr,
            "lock_left": (out / ".lock").exists()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fault-rate", type=float, default=0.4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--delay", type=float, default=0.1, help="stub seconds per request (room to kill mid-run)")
    ap.add_argument("--docs", type=int, default=3, help=f"good documents (up to {len(DOCS)})")
    ap.add_argument("--doc-chars", type=int, default=3000)
    ap.add_argument("--max-reruns", type=int, default=4)
    ap.add_argument("--out", default=str(REPO / "pipelines" / "results" / "fault_check.json"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    chk = Checker()
    cmd = " ".join(["python pipelines/fault_check.py", *(sys.argv[1:] if argv is None else argv)])
    res: dict[str, Any] = {"command": cmd, "machine": platform.platform(), "settings": vars(args)}
    tmp = Path(tempfile.mkdtemp(prefix="fault_check-"))
    try:
        docs = make_messy_folder(tmp / "docs", args.docs, args.doc_chars)
        env = child_env()
        with StubProcess(args.fault_rate, args.seed, args.delay) as stub:
            print(f"stub server {stub.base_url}: fault rate {args.fault_rate}, seed {args.seed}")
            print("phase A: flaky server, then reruns until complete")
            out_a = tmp / "out_a"
            s0 = stub.stats()
            rows_a = run_until_complete(chk, "A", generate_cmd(docs, out_a, stub.base_url), out_a, env,
                                        args.max_reruns)
            s1 = stub.stats()
            final_a = check_dataset(out_a)

            print("phase B: SIGKILL mid-run, resume, reruns until complete")
            out_b = tmp / "out_b"
            cmd_b = generate_cmd(docs, out_b, stub.base_url, concurrency=2)
            kill = sigkill_mid_run(cmd_b, out_b, env, at_records=max(2, final_a["chunks"] // 3))
            print(f"  killed with {kill['checkpoint_records_at_kill']} checkpoint record(s) of {final_a['chunks']} "
                  f"chunks; stale lock left: {kill['lock_left']}")
            chk.expect(kill["killed_mid_run"], "B: the run finished before SIGKILL (raise --delay or --doc-chars)")
            leaks_kill = scan_leaks(out_b, kill["stdout"], kill["stderr"])
            chk.expect(not leaks_kill["api_key"], f"B killed: API key found in {leaks_kill['api_key']}")
            rows_b = run_until_complete(chk, "B resume", cmd_b, out_b, env, args.max_reruns)
            s2 = stub.stats()
            final_b = check_dataset(out_b)
            chk.expect(final_b["query_ids"] == final_a["query_ids"],
                       "B: resumed dataset differs from the uninterrupted one")
            chk.expect(s2["authorized"] == s2["requests"], "the API key was not sent with every request")

        injected = s2["faults"] - s0["faults"]
        survived = faults_survived(out_a) + faults_survived(out_b)
        recorded = sum(r["failed"] for r in rows_a + rows_b)
        lost = sum(r["lost"] for r in rows_a + rows_b)
        dups = sum(r["duplicate_query_ids"] for r in rows_a + rows_b)
        leaked = any(r["api_key_leaked"] for r in rows_a + rows_b) or bool(leaks_kill["api_key"])
        tracebacks = any(r["traceback"] for r in rows_a + rows_b)
        res.update({
            "stub": {"base_url": "127.0.0.1 (ephemeral port)", "phase_a": _delta(s1, s0), "phase_b": _delta(s2, s1)},
            "phase_a": rows_a, "phase_b": {"kill": {k: v for k, v in kill.items() if k not in ("stdout", "stderr")},
                                           "runs": rows_b},
            "summary": {
                "faults_injected": injected, "faults_injected_by_kind": _delta(s2, s0)["faults_by_kind"],
                "faults_survived": survived, "chunk_failures_recorded": recorded, "chunks_lost": lost,
                "duplicate_query_ids": dups, "api_key_leaked": leaked, "traceback": tracebacks,
                "exit_codes": [r["rc"] for r in rows_a] + ["SIGKILL"] + [r["rc"] for r in rows_b],
                "final_chunks": final_a["chunks"], "final_questions": len(final_a["query_ids"]),
                "resume_equals_uninterrupted": final_b["query_ids"] == final_a["query_ids"],
            },
            "failures": chk.failures, "ok": chk.ok,
        })
        chk.expect(injected > 0, "no fault was injected")
        res["ok"], res["failures"] = chk.ok, chk.failures
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    s = res.get("summary", {})
    print(f"faults injected: {s.get('faults_injected')} {s.get('faults_injected_by_kind')} "
          f"({s2['requests'] - s0['requests']} requests)")
    print(f"faults survived (retried or re-asked; the chunk still got questions): {s.get('faults_survived')}")
    print(f"chunk failures recorded in failed_chunks (then retried by a rerun): {s.get('chunk_failures_recorded')}")
    print(f"chunks lost: {s.get('chunks_lost')}; duplicate query ids: {s.get('duplicate_query_ids')}")
    print(f"API key in output: {'YES' if s.get('api_key_leaked') else 'no'}; "
          f"traceback: {'YES' if s.get('traceback') else 'no'}")
    print(f"exit codes: {s.get('exit_codes')}; resume == uninterrupted: {s.get('resume_equals_uninterrupted')}")
    print(f"{'PASS' if chk.ok else 'FAIL'} ({res['wall_seconds']}s)" + "".join(f"\n  - {f}" for f in chk.failures))
    sys.path.insert(0, str(REPO))
    from rag_rerank.io import write_json

    write_json(args.out, res)
    print(f"wrote {args.out}")
    return 0 if chk.ok else 1


def _delta(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    kinds = {k: new["faults_by_kind"].get(k, 0) - old["faults_by_kind"].get(k, 0) for k in new["faults_by_kind"]}
    return {"requests": new["requests"] - old["requests"], "faults": new["faults"] - old["faults"],
            "faults_by_kind": {k: v for k, v in kinds.items() if v}}


if __name__ == "__main__":
    sys.exit(main())
