#!/usr/bin/python3
"""The chaos suite's submission client (Python 3 standard library only).

A steady stream of messages to the coordinator's SMTP listener from `--sessions` sessions,
paced to `--rate` new messages per second in total. Each message has a unique
`X-Chaos-ID: <seed>-<n>` header, 1 to 3 recipients in the test domain and a reverse-path in
the test domain. Like a real client, on any error (connection refused or reset, timeout,
4xx) it closes the session and tries the same message again on a new connection after a
short pause (0.2 s doubling up to 2 s), until it gets a 250 or a 5xx, or is told to stop.

Writes one JSON line per attempt to `--out`:
`{"id", "n", "rcpts", "a" (attempt number), "t0", "t1", "res", "code", "stage", "dot", "q"}` —
`res` is `250`, `4xx`, `5xx`, `conn` (connect refused/reset/closed) or `timeout`; `stage` the
command that failed; `dot` true when the end of data was sent (an attempt with `dot` and no
reply is *ambiguous*: the coordinator may have queued it); `q` the queue id of a 250.
SIGTERM: finish the current attempts (bounded by the timeouts), then exit.
"""
import argparse
import json
import random
import signal
import socket
import sys
import threading
import time

STOP = threading.Event()


class SMTPError(Exception):
    def __init__(self, res, code, stage, text=""):
        super().__init__("%s %s at %s" % (res, code, stage))
        self.res, self.code, self.stage, self.text = res, code, stage, text


class Conn:
    def __init__(self, target, source, timeout):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect(target)
        self.buf = b""

    def reply(self, stage):
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                try:
                    data = self.sock.recv(65536)
                except socket.timeout:
                    raise SMTPError("timeout", None, stage)
                except OSError as e:
                    raise SMTPError("conn", None, stage, str(e))
                if not data:
                    raise SMTPError("conn", None, stage, "closed")
                self.buf += data
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode(errors="replace"))
            if len(line) < 4 or line[3:4] != b"-":
                break
        try:
            code = int(lines[-1][:3])
        except ValueError:
            raise SMTPError("conn", None, stage, "garbled reply %r" % lines[-1][:60])
        return code, "\n".join(lines)

    def cmd(self, line, stage, expect=(250,)):
        try:
            self.sock.sendall(line.encode() + b"\r\n")
        except socket.timeout:
            raise SMTPError("timeout", None, stage)
        except OSError as e:
            raise SMTPError("conn", None, stage, str(e))
        code, text = self.reply(stage)
        if code not in expect:
            raise SMTPError("%dxx" % (code // 100), code, stage, text)
        return code, text

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def message(seed, n, domain):
    r = random.Random(seed * 1000003 + n)
    cid = "%d-%06d" % (seed, n)
    rcpts = ["r%d.%d@%s" % (n, i, domain) for i in range(r.choice((1, 1, 1, 2, 3)))]
    size = r.randint(200, 6000)
    if r.random() < 0.1:
        # one in ten from 40 to 120 KiB: over the coordinator's spool threshold (32 KiB), so
        # faults strike bodies kept in spool segments as well as in the queue's rows
        size = r.randint(40000, 120000)
    filler = "".join(r.choice("abcdefghijklmnopqrstuvwxyz     ") for _ in range(size))
    body = "\r\n".join(filler[i:i + 70] for i in range(0, len(filler), 70))
    if r.random() < 0.2:
        body = ".leading dot line\r\n" + body   # dot-stuffing on the way in and out
    text = ("From: Chaos <sender@%s>\r\nTo: %s\r\nSubject: chaos %s\r\nMessage-ID: <%s@%s>\r\n"
            "X-Chaos-ID: %s\r\n\r\n%s\r\n") % (domain, ", ".join(rcpts), cid, cid, domain, cid, body)
    return cid, rcpts, text


class Client:
    def __init__(self, a):
        self.a = a
        host, port = a.target.rsplit(":", 1)
        self.target = (host, int(port))
        self.lock = threading.Lock()
        self.n = 0
        self.next_at = time.time()
        self.out = open(a.out, "a", buffering=1)

    def log(self, rec):
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        with self.lock:
            self.out.write(line)
            self.out.flush()

    def take(self):
        """The next message number, paced to the rate over all sessions; None when stopping."""
        with self.lock:
            self.n += 1
            n = self.n
            at = self.next_at = max(self.next_at + 1.0 / self.a.rate, time.time() - 1.0)
        while not STOP.is_set():
            d = at - time.time()
            if d <= 0:
                return n
            STOP.wait(min(d, 0.5))
        return None

    def worker(self, wid):
        a = self.a
        conn = None
        rnd = random.Random(a.seed * 7919 + wid)
        while not STOP.is_set():
            n = self.take()
            if n is None:
                break
            cid, rcpts, text = message(a.seed, n, a.domain)
            data = text.replace("\r\n.", "\r\n..").encode() + b".\r\n"
            attempt, pause = 0, 0.2
            while True:
                attempt += 1
                t0 = time.time()
                stage, dot = "connect", False
                try:
                    if conn is None:
                        try:
                            conn = Conn(self.target, a.source, a.timeout)
                        except socket.timeout:
                            raise SMTPError("timeout", None, "connect")
                        except OSError as e:
                            raise SMTPError("conn", None, "connect", str(e))
                        stage = "greeting"
                        code, text_ = conn.reply("greeting")
                        if code != 220:
                            raise SMTPError("%dxx" % (code // 100), code, "greeting", text_)
                        conn.cmd("EHLO client.%s" % a.domain, "ehlo")
                    stage = "mail"
                    conn.cmd("MAIL FROM:<sender@%s>" % a.domain, "mail")
                    for r in rcpts:
                        stage = "rcpt"
                        conn.cmd("RCPT TO:<%s>" % r, "rcpt")
                    stage = "data"
                    conn.cmd("DATA", "data", expect=(354,))
                    stage = "dot"
                    try:
                        conn.sock.sendall(data)
                    except socket.timeout:
                        raise SMTPError("timeout", None, "dot")
                    except OSError as e:
                        raise SMTPError("conn", None, "dot", str(e))
                    dot = True
                    code, text_ = conn.reply("dot")
                    if code != 250:
                        raise SMTPError("%dxx" % (code // 100), code, "dot", text_)
                    q = text_.rsplit(" ", 1)[-1]
                    self.log({"id": cid, "n": n, "rcpts": rcpts, "a": attempt, "t0": t0, "t1": time.time(),
                              "res": "250", "code": 250, "stage": "dot", "dot": True, "q": q})
                    if rnd.random() < 0.1:          # new sessions now and then
                        try:
                            conn.cmd("QUIT", "quit", expect=(221,))
                        except SMTPError:
                            pass
                        conn.close()
                        conn = None
                    break
                except SMTPError as e:
                    self.log({"id": cid, "n": n, "rcpts": rcpts, "a": attempt, "t0": t0, "t1": time.time(),
                              "res": e.res, "code": e.code, "stage": e.stage, "dot": dot,
                              "text": (e.text or "")[:120]})
                    if conn is not None:
                        conn.close()
                        conn = None
                    if e.res == "5xx" or STOP.is_set():
                        break
                    STOP.wait(pause)
                    pause = min(pause * 2, 2.0)
                    if STOP.is_set():
                        break
        if conn is not None:
            conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", required=True, help="HOST:PORT of the SMTP listener")
    ap.add_argument("--source", default=None, help="source address to bind")
    ap.add_argument("--domain", default="chaos.test")
    ap.add_argument("--rate", type=float, default=20.0, help="new messages per second, all sessions")
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=30.0, help="per read/connect, seconds")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    signal.signal(signal.SIGINT, lambda *_: STOP.set())
    c = Client(a)
    threads = [threading.Thread(target=c.worker, args=(i,), daemon=True) for i in range(a.sessions)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.5)
    sys.stderr.write("client stopped after %d messages\n" % c.n)


if __name__ == "__main__":
    main()
