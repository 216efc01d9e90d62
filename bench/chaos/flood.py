#!/usr/bin/python3
"""The chaos suite's flooder: garbage and slow peers on the cluster, admin and SMTP ports.

For `--duration` seconds it keeps `--connections` connections open in total (split over the
targets given), each playing one of these peers, chosen at random (seeded) and replaced by a
new one when the server closes it:

- `garbage`: random bytes in bursts (up to 256 KiB per connection), then close;
- `oversized`: a huge length where the protocol has one — a cluster frame whose 4-octet
  length is 0x7fffffff or 0xffffffff, an HTTP request with `Content-Length: 99999999999`,
  an SMTP line of 1 MiB without CRLF, a `BDAT 99999999999` chunk — then a slow stream
  of bytes;
- `trickle`: a plausible start (EHLO, `GET /v1/status HTTP/1.1`, a frame prefix) one octet
  per second;
- `idle`: connect and say nothing.

Opt-in (`--bulk N`): N more SMTP peers that the relay lets in (127.0.0.0/8 is in
`relay_networks`) start a real transaction — MAIL, RCPT, DATA — send `--bulk-size`
octets of content as fast as the server reads it, and then hold the transaction open
without its final dot until the flood ends. They come from `--bulk-source` and the next
addresses, at most 40 per address (below `max_connections_per_client`).

Connections come from `--spread` source addresses per target (from `--source-base` on:
the first target's, then the next target's), never the real client's, so the servers'
per-client limits fall on the flooder. Prints a JSON
summary (connections opened, refused, closed by the server, octets sent) on exit.
"""
import argparse
import json
import os
import random
import socket
import sys
import threading
import time

KINDS = ("garbage", "oversized", "trickle", "idle")


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.d = {}

    def add(self, target, key, n=1):
        with self.lock:
            t = self.d.setdefault(target, {})
            t[key] = t.get(key, 0) + n


def peer(name, addr, source, kind, rnd, deadline, stats):
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        s.bind((source, 0))
        s.connect(addr)
    except OSError:
        stats.add(name, "connect_failed")
        time.sleep(0.5)
        return
    stats.add(name, "opened")
    stats.add(name, kind)
    sent = 0
    closed = False

    def send(b):
        nonlocal sent
        s.sendall(b)
        sent += len(b)

    def wait(t):
        """Sleeps up to t seconds, reading (and dropping) what the server says; False when closed."""
        nonlocal closed
        end = min(time.time() + t, deadline)
        while time.time() < end:
            s.settimeout(max(0.01, end - time.time()))
            try:
                if not s.recv(65536):
                    closed = True
                    return False
            except socket.timeout:
                pass
        return time.time() < deadline

    try:
        if kind == "garbage":
            for _ in range(rnd.randint(1, 8)):
                send(os.urandom(rnd.choice((1, 100, 4096, 32768))))
                if not wait(rnd.uniform(0, 0.5)):
                    break
        elif kind == "oversized":
            if name == "cluster":
                send(rnd.choice((b"\x7f\xff\xff\xff", b"\xff\xff\xff\xff", b"\x00\x00\x00\x02")) + os.urandom(64))
            elif name == "admin":
                send(b"POST /v1/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n" + os.urandom(1024))
            else:
                if rnd.random() < 0.5:
                    send(b"EHLO flood.test\r\n" + b"A" * (1 << 20))
                else:
                    send(b"EHLO flood.test\r\nBDAT 99999999999\r\n" + os.urandom(4096))
            while wait(1.0):
                send(os.urandom(rnd.randint(1, 4096)))
        elif kind == "trickle":
            start = {"cluster": b"\x00\x00\x10\x00\x02\x00\x00\x00\x40{\"version\":1,",
                     "admin": b"GET /v1/status HTTP/1.1\r\nHost: flood\r\nAuthorization: Bearer ",
                     "smtp": b"EHLO trickle.flood.test\r\nMAIL FROM:<a@flood.test>\r\n"}[name]
            i = 0
            while wait(1.0):
                send(start[i:i + 1] if i < len(start) else b"x")
                i += 1
        else:  # idle
            while wait(5.0):
                pass
        if closed:
            stats.add(name, "closed_by_server")
    except OSError:
        stats.add(name, "reset_by_server")
    finally:
        stats.add(name, "octets", sent)
        try:
            s.close()
        except OSError:
            pass


def bulk(addr, source, size, deadline, stats):
    """A transaction allowed to relay whose content is `size` octets and never ends."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(30)
        s.bind((source, 0))
        s.connect(addr)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO bulk.flood.test\r\n")
        while f.readline()[3:4] == b"-":
            pass
        s.sendall(b"MAIL FROM:<bulk@flood.test>\r\n")
        if not f.readline().startswith(b"250"):
            raise OSError("MAIL refused")
        s.sendall(b"RCPT TO:<bulk@flood.test>\r\n")
        if not f.readline().startswith(b"250"):
            raise OSError("RCPT refused")
        s.sendall(b"DATA\r\n")
        if not f.readline().startswith(b"354"):
            raise OSError("DATA refused")
        stats.add("smtp-bulk", "in_data")
        block = (b"Y" * 998 + b"\r\n") * 64
        sent = 0
        while sent < size and time.time() < deadline:
            s.sendall(block)
            sent += len(block)
        stats.add("smtp-bulk", "octets", sent)
        stats.add("smtp-bulk", "held_at_end_of_content")
        while time.time() < deadline:
            s.settimeout(max(0.01, deadline - time.time()))
            try:
                if not s.recv(4096):
                    stats.add("smtp-bulk", "closed_by_server")
                    break
            except socket.timeout:
                pass
    except OSError:
        stats.add("smtp-bulk", "failed_or_reset")
    finally:
        try:
            s.close()
        except (OSError, UnboundLocalError):
            pass


def slot(name, addr, source, seed, deadline, stats):
    rnd = random.Random(seed)
    while time.time() < deadline:
        peer(name, addr, source, rnd.choice(KINDS), rnd, deadline, stats)
        time.sleep(min(0.2, max(0.0, deadline - time.time())))  # a new peer at most 5 times a second per slot


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cluster", help="HOST:PORT")
    ap.add_argument("--admin", help="HOST:PORT")
    ap.add_argument("--smtp", help="HOST:PORT")
    ap.add_argument("--connections", type=int, default=200, help="in total, split over the targets")
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--source-base", default="127.0.0.111")
    ap.add_argument("--spread", type=int, default=1, help="source addresses per target")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bulk", type=int, default=0, help="opt-in: SMTP transactions with large content held open (see above)")
    ap.add_argument("--bulk-size", type=int, default=9 << 20, help="content octets per bulk transaction")
    ap.add_argument("--bulk-source", default="127.0.0.200")
    a = ap.parse_args()
    targets = [(n, v) for n, v in (("cluster", a.cluster), ("admin", a.admin), ("smtp", a.smtp)) if v]
    base = [int(x) for x in a.source_base.split(".")]
    stats = Stats()
    deadline = time.time() + a.duration
    threads = []
    for i in range(a.connections):
        ti = i % len(targets)
        name, hp = targets[ti]
        h, p = hp.rsplit(":", 1)
        src = "%d.%d.%d.%d" % (base[0], base[1], base[2], base[3] + ti * a.spread + (i // len(targets)) % a.spread)
        t = threading.Thread(target=slot, args=(name, (h, int(p)), src, a.seed * 10007 + i, deadline, stats), daemon=True)
        t.start()
        threads.append(t)
    if a.bulk and a.smtp:
        h, p = a.smtp.rsplit(":", 1)
        bb = [int(x) for x in a.bulk_source.split(".")]
        for i in range(a.bulk):
            src = "%d.%d.%d.%d" % (bb[0], bb[1], bb[2], bb[3] + i // 40)
            t = threading.Thread(target=bulk, args=((h, int(p)), src, a.bulk_size, deadline, stats), daemon=True)
            t.start()
            threads.append(t)
    for t in threads:
        t.join(timeout=max(0.1, deadline - time.time() + 10))
    json.dump(stats.d, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
