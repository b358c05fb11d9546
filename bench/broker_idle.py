#!/usr/bin/env python3
"""snigate-broker beside Debian's Mosquitto 2.0, in one run: memory per idle
authenticated connection, and publish-to-delivery latency.

For each target, interleaved (Mosquitto, snigate, Mosquitto, snigate, ...), with
a fresh broker process per run, everything on 127.0.0.1:
- idle: N plaintext clients connect with user/password (MQTT 3.1.1, keepalive
  0) and stay; the broker's RSS is read at each step; the figure is the slope
  (KiB per connection) between the steps, leaving out the fixed cost;
- latency: one subscriber, one publisher, QoS 0, 64-byte payloads, one message
  in flight at a time: the time from sending a PUBLISH to receiving it, p50/p99.

usage: bench/broker_idle.py [--broker target/release/snigate-broker]
                            [--steps 1000,2000] [--messages 2000] [--repeats 3]
Needs mosquitto and mosquitto_passwd (scripts/test unpacks them under
target/tools) and a release build of snigate-broker. Bounded: every wait has a
timeout, every loop a count.
"""
import argparse
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from common import free_port, rss_kib, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "target/tools")


def find(name):
    for d in (os.path.join(TOOLS, "bin"), os.path.join(TOOLS, "usr/bin")):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return shutil.which(name)




def utf8(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def remaining(n):
    out = b""
    while True:
        byte = n % 128
        n //= 128
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def connect_packet(client_id, user, password, keepalive=0):
    flags = 0x02 | 0x80 | 0x40
    body = utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + utf8(client_id) + utf8(user) + utf8(password)
    return bytes([0x10]) + remaining(len(body)) + body


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RuntimeError("connection closed")
        data += chunk
    return data


def mqtt_connect(port, client_id):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(connect_packet(client_id, "bench", "bench"))
    ack = recv_exact(s, 4)
    if ack != b"\x20\x02\x00\x00":
        raise RuntimeError(f"CONNACK {ack!r}")
    return s



def start(target, args, workdir, passwd):
    port = free_port()
    log = open(os.path.join(workdir, f"{target}.log"), "a")
    if target == "mosquitto":
        conf = os.path.join(workdir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
                    "max_connections -1\nlog_type error\n")
        proc = subprocess.Popen([find("mosquitto"), "-c", conf], stdout=log, stderr=log)
    else:
        proc = subprocess.Popen([args.broker, "--listen", f"127.0.0.1:{port}", "--password-file", passwd],
                                stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "warn"})
    wait_port(port)
    time.sleep(0.3)
    return proc, port


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def idle(target, args, workdir, passwd, steps):
    proc, port = start(target, args, workdir, passwd)
    clients = []
    try:
        points = []
        for step in steps:
            while len(clients) < step:
                clients.append(mqtt_connect(port, f"idle-{len(clients)}"))
            time.sleep(1.0)
            points.append((step, rss_kib(proc.pid)))
        (n0, r0), (n1, r1) = points[0], points[-1]
        return (r1 - r0) / (n1 - n0), points
    finally:
        for c in clients:
            c.close()
        stop(proc)


def latency(target, args, workdir, passwd, messages):
    proc, port = start(target, args, workdir, passwd)
    try:
        sub = mqtt_connect(port, "lat-sub")
        topic = "bench/latency"
        body = struct.pack("!H", 1) + utf8(topic) + b"\x00"
        sub.sendall(bytes([0x82]) + remaining(len(body)) + body)
        recv_exact(sub, 5)  # SUBACK
        pub = mqtt_connect(port, "lat-pub")
        payload = b"x" * 64
        publish = bytes([0x30]) + remaining(len(utf8(topic)) + len(payload)) + utf8(topic) + payload
        samples = []
        for _ in range(messages):
            start_ns = time.perf_counter_ns()
            pub.sendall(publish)
            recv_exact(sub, len(publish))
            samples.append((time.perf_counter_ns() - start_ns) / 1000)
        samples.sort()
        return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]
    finally:
        stop(proc)


def median_row(name, values, base, fmt="{:.2f}"):
    m = statistics.median(values)
    return f"| {name} | {fmt.format(m)} | {fmt.format(min(values))} | {fmt.format(max(values))} | {m / base:.2f} |"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", default=os.path.join(ROOT, "target/release/snigate-broker"))
    ap.add_argument("--steps", default="1000,2000")
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    for tool in ("mosquitto", "mosquitto_passwd"):
        if not find(tool):
            sys.exit(f"{tool} not found: run scripts/test once (it unpacks Debian's mosquitto under target/tools)")
    if not os.access(args.broker, os.X_OK):
        sys.exit(f"{args.broker} not found: cargo build --release -p snigate-broker")
    workdir = tempfile.mkdtemp(prefix="snigate-broker-bench-")
    passwd = os.path.join(workdir, "passwd")
    open(passwd, "w").close()
    subprocess.run([find("mosquitto_passwd"), "-b", passwd, "bench", "bench"], check=True)
    os.chmod(passwd, 0o644)
    os.chmod(workdir, 0o755)
    targets = ["mosquitto", "snigate-broker"]
    rss = {t: [] for t in targets}
    p50 = {t: [] for t in targets}
    p99 = {t: [] for t in targets}
    print(f"steps {steps}, {args.messages} messages, {args.repeats} repeats, interleaved; logs in {workdir}",
          file=sys.stderr)
    for r in range(args.repeats):
        for t in targets:
            per_conn, points = idle(t, args, workdir, passwd, steps)
            rss[t].append(per_conn)
            a, b = latency(t, args, workdir, passwd, args.messages)
            p50[t].append(a)
            p99[t].append(b)
            print(f"run {r + 1} {t}: {per_conn:.2f} KiB/conn {points}; latency p50 {a:.0f} us p99 {b:.0f} us",
                  file=sys.stderr)
    print(f"Idle authenticated MQTT 3.1.1 connections, {steps[0]} -> {steps[-1]}: KiB of RSS per connection "
          f"(median of {args.repeats} interleaved runs)\n")
    print("| target | median | min | max | x Mosquitto |\n|---|---:|---:|---:|---:|")
    base = statistics.median(rss["mosquitto"])
    for t in targets:
        print(median_row(t, rss[t], base))
    print(f"\nPublish-to-delivery latency, QoS 0, 64-byte payload, one in flight, {args.messages} messages: "
          "p50 / p99 in microseconds\n")
    print("| target | p50 | p99 | p50 x Mosquitto | p99 x Mosquitto |\n|---|---:|---:|---:|---:|")
    b50, b99 = statistics.median(p50["mosquitto"]), statistics.median(p99["mosquitto"])
    for t in targets:
        m50, m99 = statistics.median(p50[t]), statistics.median(p99[t])
        print(f"| {t} | {m50:.0f} | {m99:.0f} | {m50 / b50:.2f} | {m99 / b99:.2f} |")


if __name__ == "__main__":
    main()
