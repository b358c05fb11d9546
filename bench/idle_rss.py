#!/usr/bin/env python3
"""RSS per idle proxied connection: snigate-router beside HAProxy, in one run.

Each run starts a fresh proxy, a plain TCP backend that reads the forwarded
ClientHello and then holds the connection, and N clients that each send a
recorded ClientHello (openssl, TLS 1.2, SNI broker-b.apps.example.com) and then
stay idle. The proxy's RSS is read from /proc at each step; the figure is the
slope between the first and last step (KiB per connection), which leaves out the
process's fixed cost. Targets run interleaved (A B, A B, ...) and the table shows
medians with min/max and the ratio to HAProxy. Everything is on 127.0.0.1.

Limits: the open-files limit here is 20,000 per process. The proxy holds 2
descriptors per connection and this script 2 (client and backend side), so the
top step is 9,000 connections.

usage: bench/idle_rss.py [--router target/release/snigate-router] [--steps 1000,9000]
                         [--repeats 3] [--router-log info] [--out FILE]
Needs: Debian's haproxy; a release build of snigate-router.
"""
import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from common import free_port, rss_kib, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# TLS 1.2 openssl hello: its SNI has no trailing dot, which HAProxy would not match.
HELLO = open(os.path.join(ROOT, "router/src/hello/testdata/openssl-tls12.bin"), "rb").read()
SNI = "broker-b.apps.example.com"
ROUTER_LOG = "info"





class Backend:
    """Accepts, reads the forwarded hello, holds the socket."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.port = self.sock.getsockname()[1]
        self.held = []
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                got = b""
                while len(got) < len(HELLO):
                    chunk = conn.recv(len(HELLO) - len(got))
                    if not chunk:
                        break
                    got += chunk
            except OSError:
                pass
            self.held.append(conn)

    def close(self):
        self.stop = True
        self.thread.join()
        for c in self.held:
            c.close()
        self.sock.close()


def start_router(binary, port, backend_port, workdir):
    log = open(os.path.join(workdir, "router.log"), "w")
    return subprocess.Popen(
        [binary, "--listen", f"127.0.0.1:{port}", "--route", f"{SNI}=127.0.0.1:{backend_port}"],
        stdout=log, stderr=log, env={**os.environ, "RUST_LOG": ROUTER_LOG},
    )


def start_haproxy(port, backend_port, workdir):
    cfg = os.path.join(workdir, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(f"""global
    maxconn 9800
    nbthread 2
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend fe
    bind 127.0.0.1:{port}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req.ssl_hello_type 1 }}
    use_backend be if {{ req.ssl_sni -i {SNI} }}
backend be
    server s1 127.0.0.1:{backend_port}
""")
    log = open(os.path.join(workdir, "haproxy.log"), "w")
    return subprocess.Popen(["haproxy", "-f", cfg, "-db"], stdout=log, stderr=log)


def measure(target, binary, steps, workdir):
    backend = Backend()
    port = free_port()
    proc = start_router(binary, port, backend.port, workdir) if target == "snigate-router" \
        else start_haproxy(port, backend.port, workdir)
    clients = []
    try:
        wait_port(port)
        time.sleep(0.3)
        points = []
        for step in steps:
            while len(clients) < step:
                c = socket.create_connection(("127.0.0.1", port), timeout=10)
                c.sendall(HELLO)
                clients.append(c)
            deadline = time.time() + 60
            while len(backend.held) < step and time.time() < deadline:
                time.sleep(0.05)
            if len(backend.held) < step:
                raise RuntimeError(f"{target}: only {len(backend.held)} of {step} reached the backend")
            time.sleep(1.0)
            points.append((step, rss_kib(proc.pid)))
        (n0, r0), (n1, r1) = points[0], points[-1]
        return (r1 - r0) / (n1 - n0), points
    finally:
        for c in clients:
            c.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        backend.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--router", default=os.path.join(ROOT, "target/release/snigate-router"))
    ap.add_argument("--steps", default="1000,9000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--router-log", default="info",
                    help="RUST_LOG for the router; info (the default level) keeps a span per connection")
    ap.add_argument("--out")
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    global ROUTER_LOG
    ROUTER_LOG = args.router_log
    if not shutil.which("haproxy"):
        sys.exit("haproxy not found: apt-get install haproxy")
    if not os.access(args.router, os.X_OK):
        sys.exit(f"{args.router} not found: cargo build --release -p snigate-router")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    targets = ["haproxy", "snigate-router"]
    results = {t: [] for t in targets}
    workdir = tempfile.mkdtemp(prefix="snigate-bench-")
    print(f"steps {steps}, {args.repeats} repeats, interleaved; logs in {workdir}", file=sys.stderr)
    for r in range(args.repeats):
        for t in targets:
            per_conn, points = measure(t, args.router, steps, workdir)
            results[t].append(per_conn)
            print(f"run {r + 1} {t}: {per_conn:.2f} KiB/conn  {points}", file=sys.stderr)
    base = statistics.median(results["haproxy"])
    lines = [
        f"RSS per idle proxied connection, {steps[0]} -> {steps[-1]} connections, "
        f"median of {args.repeats} interleaved runs",
        "",
        "| target | KiB per connection (median) | min | max | x HAProxy |",
        "|---|---:|---:|---:|---:|",
    ]
    for t in targets:
        v = results[t]
        m = statistics.median(v)
        lines.append(f"| {t} | {m:.2f} | {min(v):.2f} | {max(v):.2f} | {m / base:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
