#!/usr/bin/python3
"""The chaos suite's recording SMTP sink (Python 3 standard library only).

Plays the recipient MX for the test domain. It accepts every message and writes one JSON
line per event to `--out` (flushed before it answers, so a record exists for every message
it accepted):

- `conn`: a session opened: source IP and port, and the PID of the process that owns the
  client socket (see below).
- `msg`: a message accepted: `t_mail` (MAIL FROM received), `t_dot` (end of data received),
  `t_commit` (the sink decided to accept, just before it writes its 250), the reverse-path,
  the recipients, the `X-Chaos-ID` header, and `reply_sent` — written in a second line
  (`reply`) once the 250 left (or failed to leave) the socket.
- `abort`: a transaction that began (MAIL) but ended without end of data: its last byte of
  that transaction (`t_last`).
- `close`: the session ended.

Which process sent it. Each accepted connection's peer (source IP, port) is looked up in
`/proc/net/tcp` (the socket whose local address is the peer and remote address is this sink),
which gives the socket's inode; the PID is the process holding a descriptor
`socket:[inode]` in `/proc/PID/fd/`. The node PIDs to search first are read from the file
`--pids` (kept current by the controller); when none holds it, every process is searched.
This needs to run as root (or as the nodes' user). The look-up happens when the session is
accepted; the node created the socket before `connect`, so its descriptor is there unless
the process died in between (then the PID is null and the session carries no mail).
"""
import argparse
import json
import os
import signal
import socket
import sys
import threading
import time


def hexaddr(ip, port):
    """The /proc/net/tcp spelling of an IPv4 address and port (little-endian hex address)."""
    a = socket.inet_aton(ip)
    return "%02X%02X%02X%02X:%04X" % (a[3], a[2], a[1], a[0], port)


def socket_inode(local, remote):
    """Inode of the TCP socket with this local and remote address (as seen by its owner)."""
    want_l, want_r = hexaddr(*local), hexaddr(*remote)
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) > 9 and parts[1] == want_l and parts[2] == want_r:
                    return parts[9]
    except OSError:
        pass
    return None


def pid_holding(inode, candidates):
    target = "socket:[%s]" % inode

    def holds(pid):
        d = "/proc/%d/fd" % pid
        try:
            for fd in os.listdir(d):
                try:
                    if os.readlink(d + "/" + fd) == target:
                        return True
                except OSError:
                    pass
        except OSError:
            pass
        return False

    for pid in candidates:
        if holds(pid):
            return pid
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in candidates and int(name) != os.getpid():
            if holds(int(name)):
                return int(name)
    return None


class PidFile:
    def __init__(self, path):
        self.path = path
        self.mtime = None
        self.pids = []
        self.lock = threading.Lock()

    def current(self):
        with self.lock:
            try:
                m = os.stat(self.path).st_mtime_ns
                if m != self.mtime:
                    with open(self.path) as f:
                        self.pids = [int(p) for p in json.load(f)]
                    self.mtime = m
            except (OSError, ValueError):
                pass
            return list(self.pids)


class Hold:
    """Holds one transaction on the controller's request, so a fault strikes a node mid-delivery.

    The controller writes `--hold` as {"token", "stage": "354"|"250", "pid": PID or null,
    "ips": [...] or null}. The first session from a matching process and source IP that reaches
    `stage` (about to answer DATA with 354, or end of data with 250 — on a BDAT session, the
    reply to the `LAST` chunk; it has no 354: its content came with MAIL) claims it, writes
    `<hold>.<token>.held` ({"ip", "pid", "t"}), and waits until the hold file is gone or names
    another token (at most `max_hold` seconds) before it answers.
    """

    def __init__(self, path, max_hold=30.0):
        self.path = path
        self.max_hold = max_hold
        self.lock = threading.Lock()
        self.claimed = set()

    def _read(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def claim(self, stage, pid, ip):
        if not self.path or not os.path.exists(self.path):
            return None
        h = self._read()
        if not h or h.get("stage") != stage:
            return None
        if h.get("pid") is not None and h["pid"] != pid:
            return None
        if h.get("pid") is None and pid is None:
            return None
        if h.get("ips") is not None and ip not in h["ips"]:
            return None
        with self.lock:
            if h["token"] in self.claimed:
                return None
            self.claimed.add(h["token"])
        tmp = "%s.%s.tmp" % (self.path, h["token"])
        with open(tmp, "w") as f:
            json.dump({"ip": ip, "pid": pid, "t": time.time()}, f)
        os.rename(tmp, "%s.%s.held" % (self.path, h["token"]))
        return h["token"]

    def wait(self, token):
        end = time.time() + self.max_hold
        while time.time() < end:
            h = self._read()
            if not h or h.get("token") != token:
                return
            time.sleep(0.02)


class Recorder:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def write(self, rec):
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        with self.lock:
            self.f.write(line)
            self.f.flush()


class Session(threading.Thread):
    def __init__(self, sink, sock, peer, cid):
        super().__init__(daemon=True)
        self.sink, self.sock, self.peer, self.cid = sink, sock, peer, cid
        self.buf = b""
        # CHUNKING on every other connection (--chunking odd): the nodes then deliver part of
        # the mail with pipelined BDAT (MAIL, RCPT and `BDAT n LAST` with the content in one
        # write, RFC 3030 §4.2) and part with DATA, so faults strike both paths.
        self.chunking = sink.chunking == "all" or (sink.chunking == "odd" and cid % 2 == 1)

    def readexact(self, n):
        while len(self.buf) < n:
            data = self.sock.recv(max(65536, n - len(self.buf)))
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def store(self, pid, t_mail, t_dot, mail_from, rcpts, chaos_id, size, held354, bdat=False):
        """The end of a transaction's content: the controller's 250 hold (or the sink's delay),
        the message record, the 250 and its reply record. Returns whether the 250 was sent."""
        sink = self.sink
        held250 = sink.hold.claim("250", pid, self.peer[0])
        if held250:
            sink.hold.wait(held250)
        elif sink.delay > 0:
            time.sleep(sink.delay)
        mid = "%d.%d" % (self.cid, sink.next_msg())
        record = {"k": "msg", "m": mid, "c": self.cid, "ip": self.peer[0], "pid": pid,
                  "t_mail": t_mail, "t_dot": t_dot, "t_commit": time.time(), "from": mail_from,
                  "rcpts": rcpts, "id": chaos_id, "size": size, "held": held354 or held250}
        if bdat:
            record["bdat"] = True
        sink.rec.write(record)
        ok = True
        try:
            self.send("250 2.0.0 Ok: stored " + mid)
        except OSError:
            ok = False
        sink.rec.write({"k": "reply", "m": mid, "t": time.time(), "sent": ok})
        return ok

    @staticmethod
    def chaos_id_of(content):
        """The X-Chaos-Id of a message (in its header, or a DSN's returned header in its body)."""
        for l in content.split(b"\r\n"):
            if l[:12].lower() == b"x-chaos-id: ":
                return l[12:].decode(errors="replace").strip()
        return None

    def readline(self, limit=65536):
        while b"\r\n" not in self.buf:
            if len(self.buf) > limit:
                raise ConnectionError("line too long")
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def send(self, text):
        self.sock.sendall(text.encode() + b"\r\n")

    def run(self):
        sink = self.sink
        rec = sink.rec
        t0 = time.time()
        inode = socket_inode(self.peer, sink.addr)
        pid = pid_holding(inode, sink.pids.current()) if inode else None
        rec.write({"k": "conn", "c": self.cid, "t": t0, "ip": self.peer[0], "port": self.peer[1], "pid": pid})
        mail_from, rcpts, t_mail, t_last = None, [], None, None
        held354 = None
        chunks = []
        try:
            self.sock.settimeout(600)
            self.send("220 sink.chaos.test ESMTP chaos sink")
            while True:
                line = self.readline()
                now = time.time()
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    if verb == b"EHLO":
                        self.send("250-sink.chaos.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 52428800\r\n"
                                  + ("250-CHUNKING\r\n" if self.chunking else "") + "250 ENHANCEDSTATUSCODES")
                    else:
                        self.send("250 sink.chaos.test")
                elif verb == b"MAIL":
                    held354 = None
                    chunks = []
                    mail_from, rcpts, t_mail, t_last = line[10:].decode(errors="replace").strip().split(" ")[0].strip("<>"), [], now, now
                    self.send("250 2.1.0 Ok")
                elif verb == b"RCPT":
                    t_last = now
                    rcpts.append(line[8:].decode(errors="replace").strip().split(" ")[0].strip("<>").lower())
                    self.send("250 2.1.5 Ok")
                elif verb == b"DATA":
                    t_last = now
                    if t_mail is None or not rcpts:
                        self.send("503 5.5.1 need MAIL and RCPT")
                        continue
                    held354 = sink.hold.claim("354", pid, self.peer[0])
                    if held354:
                        sink.hold.wait(held354)
                    self.send("354 go ahead")
                    chaos_id, size, in_headers = None, 0, True
                    while True:
                        l = self.readline(limit=1 << 20)
                        t_last = time.time()
                        if l == b".":
                            break
                        size += len(l) + 2
                        if in_headers:
                            if l == b"":
                                in_headers = False
                            elif l[:12].lower() == b"x-chaos-id: ":
                                chaos_id = l[12:].decode(errors="replace").strip()
                        elif chaos_id is None and l[:12].lower() == b"x-chaos-id: ":
                            # a DSN returns the original headers in its body
                            chaos_id = l[12:].decode(errors="replace").strip()
                    ok = self.store(pid, t_mail, t_last, mail_from, rcpts, chaos_id, size, held354)
                    mail_from, rcpts, t_mail = None, [], None
                    if not ok:
                        return
                elif verb == b"BDAT" and self.chunking:
                    # RFC 3030: the chunk's octets follow the command line at once. A chunk
                    # without MAIL and RCPT is read and refused (§2: the server must read it).
                    words = line.split()
                    try:
                        n = int(words[1])
                    except (IndexError, ValueError):
                        self.send("501 5.5.4 BDAT size required")
                        continue
                    last = len(words) > 2 and words[2].upper() == b"LAST"
                    data = self.readexact(n)
                    t_last = time.time()
                    if t_mail is None or not rcpts:
                        self.send("554 5.5.1 no valid recipients")
                        mail_from, rcpts, t_mail, chunks = None, [], None, []
                        continue
                    chunks.append(data)
                    if not last:
                        self.send("250 2.0.0 %d octets received" % n)
                        continue
                    content = b"".join(chunks)
                    chunks = []
                    ok = self.store(pid, t_mail, t_last, mail_from, rcpts, self.chaos_id_of(content), len(content), None, bdat=True)
                    mail_from, rcpts, t_mail = None, [], None
                    if not ok:
                        return
                elif verb == b"RSET":
                    if t_mail is not None:
                        rec.write({"k": "abort", "c": self.cid, "ip": self.peer[0], "pid": pid, "t_mail": t_mail,
                                   "t_last": t_last, "why": "rset", "held": held354})
                    mail_from, rcpts, t_mail = None, [], None
                    self.send("250 2.0.0 Ok")
                elif verb == b"NOOP":
                    self.send("250 2.0.0 Ok")
                elif verb == b"QUIT":
                    self.send("221 2.0.0 Bye")
                    return
                else:
                    self.send("502 5.5.2 not implemented")
        except (OSError, ConnectionError):
            pass
        finally:
            if t_mail is not None:
                rec.write({"k": "abort", "c": self.cid, "ip": self.peer[0], "pid": pid, "t_mail": t_mail,
                           "t_last": t_last, "why": "closed", "held": held354})
            rec.write({"k": "close", "c": self.cid, "t": time.time()})
            try:
                self.sock.close()
            except OSError:
                pass


class Sink:
    def __init__(self, host, port, out, pids, delay, hold, chunking="none"):
        self.addr = (host, port)
        self.chunking = chunking
        self.rec = Recorder(out)
        self.pids = PidFile(pids)
        self.delay = delay
        self.hold = Hold(hold)
        self._n = 0
        self._lock = threading.Lock()
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(self.addr)
        self.ls.listen(512)

    def next_msg(self):
        with self._lock:
            self._n += 1
            return self._n

    def serve(self):
        cid = 0
        while True:
            sock, peer = self.ls.accept()
            cid += 1
            Session(self, sock, peer, cid).start()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", required=True, help="HOST:PORT")
    ap.add_argument("--out", required=True, help="JSON lines file")
    ap.add_argument("--pids", required=True, help="JSON file with the node PIDs to search first")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds between end of data and the 250")
    ap.add_argument("--hold", default=None, help="hold-request file written by the controller (see Hold)")
    ap.add_argument("--chunking", choices=("none", "odd", "all"), default="none",
                    help="offer CHUNKING (RFC 3030) on no connection, every other one, or all")
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    sink = Sink(host, int(port), a.out, a.pids, a.delay, a.hold, a.chunking)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # every record is already flushed
    sys.stderr.write("sink listening on %s\n" % a.listen)
    sys.stderr.flush()
    sink.serve()


if __name__ == "__main__":
    main()
