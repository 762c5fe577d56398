#!/usr/bin/env python3
"""Soak: a cache server with a disk tier, two `lmcache serve` instances sharing it (remote_url lm://), N clients for M
minutes, optional chaos (kill -9 and restart the cache server every K seconds, corrupting a few of its disk files while
it is down). Everything on 127.0.0.1; every loop is bounded and the run stops by itself.

Pass criteria, printed at the end:
  - zero failed requests (a dead cache server must be misses, never errors);
  - every completion equals the cold run of its prompt at temperature 0 (all client prompts are in the check set: D
    documents x Q questions, each run cold first with a unique cache_salt, which no cache entry can match);
  - after each restart, hits through the cache server resume: a fresh prompt answered by instance one is a hit
    (cached_tokens > 0) on instance two, within a bounded wait;
  - RSS and open file descriptors (/proc/PID/fd) of each process: first, last and max, printed (judged by eye: growth).

Usage: bash scripts/soak.sh [--clients 2] [--minutes 1] [--chaos-every 0] [--corrupt 3] [--model FILE.gguf] ...
(scripts/soak.sh builds the CLI first; python3 scripts/soak.py --help lists every option). Standard library only.
"""
import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DLL = os.path.join(ROOT, "src", "LMCacheSharp.Cli", "bin", "Release", "net10.0", "lmcache.dll")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


class Proc:
    """A child process (dotnet lmcache.dll ...) with its log; samples of RSS and open fds per incarnation."""

    def __init__(self, name, args, logdir):
        self.name, self.args, self.logdir = name, args, logdir
        self.popen = None
        self.incarnation = 0
        self.samples = []  # (incarnation, rss_kib, fds)

    @property
    def log(self):
        return os.path.join(self.logdir, f"{self.name}.{self.incarnation}.log")

    def start(self):
        self.incarnation += 1
        out = open(self.log, "w")
        self.popen = subprocess.Popen(["dotnet", DLL, *self.args], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        out.close()

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def sample(self):
        if self.popen is None or self.popen.poll() is not None:
            return
        pid = self.popen.pid
        try:
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, StopIteration):
            return
        self.samples.append((self.incarnation, rss, fds))

    def kill9(self):
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=30)

    def stop(self, timeout=60):
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.send_signal(signal.SIGKILL)
                self.popen.wait(timeout=30)


def complete(port, prompt, max_tokens, salt=None, timeout=300):
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    if salt:
        body["cache_salt"] = salt
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.load(response)
    usage = answer.get("usage", {})
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0) or 0
    return answer["choices"][0]["text"], cached, usage.get("prompt_tokens", 0)


def document(i, sections):
    topics = ["rivers", "compilers", "bridges", "orchards", "glaciers", "markets", "telescopes", "libraries"]
    topic = topics[i % len(topics)]
    return "".join(f"Document {i} about {topic}, part {s}. The {topic} of region {i * 31 + s} change with the seasons, "
                   f"and their records are kept in ledger {s * 7 + i}. " for s in range(sections))


QUESTIONS = [" Question: what changes with the seasons? Answer:", " Question: where are the records kept? Answer:",
             " Question: which region is named first? Answer:", " Question: summarise the document. Answer:"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=2, help="concurrent clients (default 2)")
    ap.add_argument("--minutes", type=float, default=1.0, help="soak duration in minutes (default 1)")
    ap.add_argument("--chaos-every", type=float, default=0, help="kill -9 and restart the cache server every K seconds (default 0: off)")
    ap.add_argument("--corrupt", type=int, default=3, help="disk files corrupted at each chaos event (default 3)")
    ap.add_argument("--docs", type=int, default=4, help="documents in the check set (default 4)")
    ap.add_argument("--questions", type=int, default=3, help="questions per document (default 3, at most 4)")
    ap.add_argument("--sections", type=int, default=10, help="sections per document (length; default 10)")
    ap.add_argument("--max-tokens", type=int, default=8, help="tokens per completion (default 8)")
    ap.add_argument("--threads", type=int, default=1, help="--threads of each serve instance (default 1)")
    ap.add_argument("--model", help="GGUF model (default: lmcache serve's generated default model)")
    ap.add_argument("--seed", type=int, default=1, help="random seed of the clients and the chaos (default 1)")
    ap.add_argument("--resume-timeout", type=float, default=90, help="seconds to wait for hits after a restart (default 90)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, disk tier)")
    a = ap.parse_args()
    if not os.path.exists(DLL):
        sys.exit(f"{DLL} is missing: run dotnet build -c Release src/LMCacheSharp.Cli (scripts/soak.sh does)")

    work = tempfile.mkdtemp(prefix="lmcache-soak-")
    disk = os.path.join(work, "disk")
    cache_port, port1, port2 = free_port(), free_port(), free_port()
    model = ["--model", a.model] if a.model else []
    server = Proc("server", ["server", "--port", str(cache_port), "--capacity", "256MB", "--disk", disk, "--disk-capacity", "1GB"], work)
    serves = [Proc(f"serve{i + 1}", ["serve", "--port", str(p), "--threads", str(a.threads), *model,
                                       "--lmcache", f"remote_url=lm://127.0.0.1:{cache_port}", "--log-level", "warning"], work)
              for i, p in enumerate((port1, port2))]
    procs = [server, *serves]
    lock = threading.Lock()
    stats = {"requests": 0, "failed": 0, "mismatch": 0, "hits": 0, "errors": []}
    restarts = []  # (seconds after the restart until hits resumed, or None)
    stop = threading.Event()
    print(f"== soak: {a.clients} clients, {a.minutes} min, chaos every {a.chaos_every or 'never'} s, work folder {work}")
    try:
        def server_up():
            return f"lm://127.0.0.1:{cache_port}" in server.log_text()

        server.start()
        wait_until(server_up, 120, "the cache server")
        for p, port in zip(serves, (port1, port2)):  # one after the other: only the first generates the default model
            p.start()

            def healthy(port=port):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                        return True
                except (urllib.error.URLError, OSError):
                    return False
            wait_until(healthy, 900, f"{p.name} on port {port}")

        # Cold references: each prompt of the check set once, with a salt of its own (no cached KV can match).
        prompts = [(d, q, document(d, a.sections) + QUESTIONS[q]) for d in range(a.docs) for q in range(min(a.questions, len(QUESTIONS)))]
        reference = {}
        started = time.monotonic()
        for d, q, prompt in prompts:
            text, cached, tokens = complete(port1, prompt, a.max_tokens, salt="cold-" + uuid.uuid4().hex)
            if cached != 0:
                raise RuntimeError(f"the cold run of doc {d} question {q} had {cached} cached tokens")
            reference[(d, q)] = text
        print(f"== {len(prompts)} cold references in {time.monotonic() - started:.1f} s ({tokens} prompt tokens each, about)")
        for p in procs:
            p.sample()

        def client(index):
            rng = random.Random(a.seed * 1000 + index)
            n = 0
            while not stop.is_set():
                d, q, prompt = prompts[rng.randrange(len(prompts))]
                port = (port1, port2)[(index + n) % 2]
                n += 1
                try:
                    text, cached, _ = complete(port, prompt, a.max_tokens)
                    with lock:
                        stats["requests"] += 1
                        stats["hits"] += cached > 0
                        if text != reference[(d, q)]:
                            stats["mismatch"] += 1
                            stats["errors"].append(f"doc {d} q {q} on :{port}: {text!r} != cold {reference[(d, q)]!r}")
                except Exception as e:  # noqa: BLE001 - every failure of a request counts
                    with lock:
                        stats["requests"] += 1
                        stats["failed"] += 1
                        stats["errors"].append(f"doc {d} q {q} on :{port}: {e}")

        def resume_check(restarted_at, round_):
            # A fresh prompt on instance one, then on instance two: a hit there comes only through the cache server.
            attempt = 0
            while time.monotonic() - restarted_at < a.resume_timeout and not stop.is_set():
                attempt += 1
                prompt = document(1000 + round_ * 100 + attempt, a.sections) + QUESTIONS[0]
                try:
                    complete(port1, prompt, 1)
                    time.sleep(0.5)  # the remote tier stores in the background; the loop is bounded by resume_timeout
                    _, cached, _ = complete(port2, prompt, 1)
                except Exception as e:  # noqa: BLE001
                    with lock:
                        stats["failed"] += 1
                        stats["errors"].append(f"restart {round_} probe: {e}")
                    cached = 0
                if cached > 0:
                    return time.monotonic() - restarted_at
                time.sleep(1)
            return None

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(a.clients)]
        for t in threads:
            t.start()
        rng = random.Random(a.seed)
        end = time.monotonic() + a.minutes * 60
        next_chaos = time.monotonic() + a.chaos_every if a.chaos_every > 0 else float("inf")
        next_sample = time.monotonic() + 5
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                for p in procs:
                    p.sample()
                next_sample = now + 5
            if now >= next_chaos and now + 30 < end:
                server.kill9()
                files = [os.path.join(r, f) for r, _, fs in os.walk(disk) for f in fs if f.endswith(".kv")]
                for path in rng.sample(files, min(a.corrupt, len(files))):
                    with open(path, "r+b") as f:
                        size = os.path.getsize(path)
                        if rng.random() < 0.5 and size > 4096:
                            f.seek(rng.randrange(4096, size))  # a payload byte: caught by the payload checksum on GET
                            b = f.read(1)
                            f.seek(-1, os.SEEK_CUR)
                            f.write(bytes([b[0] ^ 0x5A]))
                        else:
                            f.truncate(size // 2)  # truncated: caught by the start-up scan
                server.start()
                wait_until(server_up, 120, "the restarted cache server")
                restarted = time.monotonic()
                took = resume_check(restarted, len(restarts) + 1)
                restarts.append(took)
                print(f"== restart {len(restarts)}: corrupted {min(a.corrupt, len(files))} of {len(files)} files; hits resumed "
                      f"{'after %.1f s' % took if took is not None else 'NOT within %d s' % a.resume_timeout}", flush=True)
                next_chaos = time.monotonic() + a.chaos_every
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(timeout=600)
        for p in procs:
            p.sample()
    finally:
        stop.set()
        for p in reversed(procs):
            p.stop()
        if not a.keep:
            subprocess.run(["rm", "-rf", work], check=False)

    print()
    print(f"requests {stats['requests']}, failed {stats['failed']}, differing from the cold run {stats['mismatch']}, "
          f"with cached tokens {stats['hits']} ({100 * stats['hits'] / max(1, stats['requests']):.0f}%)")
    for line in stats["errors"][:10]:
        print("  " + line)
    print("| process | RSS first | RSS last | RSS max | fds first | fds last | fds max | incarnations |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for p in procs:
        if p.samples:
            rss = [s[1] for s in p.samples]
            fds = [s[2] for s in p.samples]
            print(f"| {p.name} | {rss[0] / 1024:.0f} MiB | {rss[-1] / 1024:.0f} MiB | {max(rss) / 1024:.0f} MiB | "
                  f"{fds[0]} | {fds[-1]} | {max(fds)} | {p.incarnation} |")
    resumed = [r for r in restarts if r is not None]
    print(f"restarts {len(restarts)}, hits resumed after {len(resumed)}" +
          (f" (after {min(resumed):.1f}..{max(resumed):.1f} s)" if resumed else ""))
    ok = stats["failed"] == 0 and stats["mismatch"] == 0 and len(resumed) == len(restarts) and stats["requests"] > 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
