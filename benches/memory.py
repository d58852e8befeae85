#!/usr/bin/env python3
"""Run with: `python3 benches/memory.py` (builds the release `opsconductor`
with `cargo build --release -p opsconductor-cli` first; `OPSC_BENCH_STEPS`
sets the job's steps, default 10000; `OPSC_BIN` uses a given binary).

The server's resident memory under the load of issue 12 §5, measured from
the outside (`VmRSS` of /proc/PID/status) on the release `opsconductor serve`
with its embedded SQLite store and 4 workers:

1. idle: after start-up and a login;
2. a job of N steps (`echo`, one output line each) runs to completion;
3. its detail is fetched 120 times, 8 at a time
   (`GET /api/v1/runs/{id}`: one page of results, 1000 by default);
4. 300 Server-Sent Events log streams of that run are opened at once and
   each is read to its `end` event (every chunk of the run, replayed from
   the store page by page), then all are closed;
5. the load stops; RSS is sampled every 5 s for a minute.

Prints idle, peak (and where it was reached), the RSS one minute after the
load, and each as a ratio to idle. Goal (issue 12): peak <= 128 MB, and back
within 2x of idle a minute after the load stops.

Standard library only. The server gets a config that lifts the per-address
connection cap and the per-user request rate (the load comes from one
address and one user).
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = int(os.environ.get("OPSC_BENCH_STEPS", "10000"))
FETCHES = 120
STREAMS = 300
PASSWORD = "bench-Password-1234"


def binary():
    if os.environ.get("OPSC_BIN"):
        return os.environ["OPSC_BIN"]
    subprocess.run(
        ["cargo", "build", "--release", "-p", "opsconductor-cli"], cwd=ROOT, check=True
    )
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "opsconductor")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Sampler:
    """Samples the server's RSS every 100 ms and keeps the peak per phase."""

    def __init__(self, pid):
        self.pid = pid
        self.phase = "start"
        self.peak = (0.0, "start")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.stop.is_set():
            try:
                r = rss_mib(self.pid)
            except OSError:
                return
            if r > self.peak[0]:
                self.peak = (r, self.phase)
            time.sleep(0.1)


class Api:
    def __init__(self, port):
        self.port = port
        self.token = None

    def call(self, method, path, body=None, ctype="application/json", timeout=120):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"content-type": ctype}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        c.close()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
        return json.loads(data) if data else None


def sse_stream(port, token, run_id, opened, go):
    """Opens one SSE stream, waits until all are open, reads it to its end."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request(
        "GET",
        f"/api/v1/runs/{run_id}/logs",
        headers={"authorization": f"Bearer {token}", "accept": "text/event-stream"},
    )
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"SSE: {r.status}")
    opened.release()
    go.wait()
    total, tail = 0, b""
    while True:
        data = r.read1(65536)
        if not data:
            break
        total += len(data)
        tail = (tail + data)[-4096:]
        if b"event: end" in tail:
            break
    c.close()
    return total


def main():
    bin_path = binary()
    work = tempfile.mkdtemp(prefix="opsc-memory-")
    port = free_port()
    config = os.path.join(work, "server.toml")
    with open(config, "w") as f:
        f.write(
            "max_connections_per_ip = 0\n"
            "api_per_user_per_minute = 0\n"
            'access_token_ttl = "1h"\n'
        )
    env = dict(
        os.environ,
        OPSC_ADMIN_PASSWORD=PASSWORD,
        OPSC_JWT_SECRET="memory-bench-jwt-secret-of-32-bytes-or-more",
    )
    log = open(os.path.join(work, "server.log"), "w")
    server = subprocess.Popen(
        [
            bin_path,
            "serve",
            "--config",
            config,
            "--listen",
            f"127.0.0.1:{port}",
            "--database-url",
            f"sqlite://{work}/memory.db",
            "--workers",
            "4",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=work,
    )
    try:
        return run(server, port)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def run(server, port):
    api = Api(port)
    for _ in range(300):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.1)
    else:
        raise RuntimeError("the server did not start")
    api.token = api.call(
        "POST", "/api/v1/auth/login", {"username": "admin", "password": PASSWORD}
    )["access_token"]
    time.sleep(3)
    idle = rss_mib(server.pid)
    sampler = Sampler(server.pid)
    print(f"OpsConductor server memory (release `opsconductor serve`, SQLite, 4 workers)")
    print(f"idle: {idle:.1f} MiB")

    sampler.phase = f"run of {STEPS} steps"
    steps = "".join(f"  - exec: echo step {i}\n" for i in range(STEPS))
    api.call(
        "POST",
        "/api/v1/apply",
        f"kind: Job\nname: big\nsteps:\n{steps}",
        ctype="application/yaml",
    )
    start = time.time()
    run = api.call("POST", "/api/v1/runs", {"job": "big"})
    rid = run["id"]
    while True:
        d = api.call("GET", f"/api/v1/runs/{rid}?results_limit=1")
        if d["status"] not in ("queued", "running"):
            break
        time.sleep(1)
    took = time.time() - start
    if d["status"] != "succeeded":
        raise RuntimeError(f"the run ended {d['status']}: {d.get('error')}")
    print(f"run: {STEPS} steps succeeded in {took:.0f}s; RSS {rss_mib(server.pid):.1f} MiB")

    sampler.phase = f"{FETCHES} detail fetches"
    with ThreadPoolExecutor(8) as pool:
        sizes = list(
            pool.map(
                lambda _: len(json.dumps(api.call("GET", f"/api/v1/runs/{rid}")["results"])),
                range(FETCHES),
            )
        )
    print(f"details: {FETCHES} fetches of {sizes[0]} bytes of results; RSS {rss_mib(server.pid):.1f} MiB")

    sampler.phase = f"{STREAMS} SSE streams"
    opened = threading.Semaphore(0)
    go = threading.Event()
    with ThreadPoolExecutor(STREAMS) as pool:
        futures = [
            pool.submit(sse_stream, port, api.token, rid, opened, go) for _ in range(STREAMS)
        ]
        for _ in range(STREAMS):
            if not opened.acquire(timeout=120):
                raise RuntimeError("not every stream opened")
        print(f"streams: {STREAMS} open; RSS {rss_mib(server.pid):.1f} MiB")
        go.set()
        total = sum(f.result() for f in futures)
    print(f"streams: {STREAMS} read to the end, {total / 2**20:.0f} MiB in all; RSS {rss_mib(server.pid):.1f} MiB")

    sampler.phase = "after the load"
    after = []
    for i in range(12):
        time.sleep(5)
        after.append(rss_mib(server.pid))
    sampler.stop.set()
    print("after the load, every 5 s: " + " ".join(f"{r:.0f}" for r in after) + " MiB")
    peak, where = sampler.peak
    last = after[-1]
    print()
    print(f"{'':<22} {'MiB':>8} {'x idle':>8}")
    print(f"{'idle':<22} {idle:>8.1f} {1:>8.2f}")
    print(f"{'peak':<22} {peak:>8.1f} {peak / idle:>8.2f}   (during: {where})")
    print(f"{'1 min after the load':<22} {last:>8.1f} {last / idle:>8.2f}")
    ok = peak <= 128 and last <= 2 * idle
    print(f"\ngoal: peak <= 128 MiB and 1 min after <= 2x idle: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
