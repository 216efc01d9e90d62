"""A small asyncio SMTP sink that records, per message, when it sent its 250 after DATA.

Messages are keyed by the value of a header (default `X-Bench-ID`). Advertises
PIPELINING and 8BITMIME, and with `chunking=True` also CHUNKING (BDAT, RFC 3030, as the
large mailbox providers' MX hosts do); commands are read line by line, so pipelined input
works, and the replies to pipelined commands go out together (see `_session`).
Optional `hold`: after the greeting, keep the connection open without reading
(for holding many idle client sessions).
"""
import asyncio
import threading
import time


class TinySink:
    def __init__(self, host="127.0.0.1", port=0, header=b"x-bench-id", name=b"sink.bench.test", log=None, chunking=False):
        self.chunking = chunking     # advertise CHUNKING and take BDAT
        self.log = log               # an open text file: one "id time" line per message, flushed
        self.host = host
        self.port = port
        self.header = header.lower()
        self.name = name
        self.arrivals = {}           # id -> time.time() at the 250 after DATA
        self.messages = 0
        self.sessions = 0            # currently open
        self.peak_sessions = 0
        self.hold = False            # when True, sessions wait for release() before the greeting
        self._release = None
        self.loop = None
        self.server = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, timeout=10):
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("sink did not start")
        return self

    def _run(self):
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self._release = asyncio.Event()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._session, self.host, self.port, backlog=4096,
                                                                        limit=64 << 20))
        self.port = self.server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    def release(self):
        """Lets held sessions go on (greeting sent, then normal SMTP)."""
        self.hold = False
        self.loop.call_soon_threadsafe(self._release.set)

    def stop(self):
        if self.loop is None:
            return

        async def _close():
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()
        self.loop.set_exception_handler(lambda _loop, _ctx: None)
        asyncio.run_coroutine_threadsafe(_close(), self.loop)
        self._thread.join(timeout=5)

    def _arrived(self, key):
        """The time of the 250 about to be sent for this message (logged once it is sent: `_logged`)."""
        t = time.time()
        self.messages += 1
        if key is not None:
            self.arrivals[key] = t
        return t

    def _logged(self, key, t):
        if key is not None and self.log is not None:
            self.log.write("%s %.6f\n" % (key, t))
            self.log.flush()

    def _key(self, content):
        """The value of the keying header in the header section of `content`, or None."""
        end = content.find(b"\r\n\r\n")
        for l2 in content[:end if end >= 0 else len(content)].split(b"\r\n"):
            if l2.lower().startswith(self.header + b":"):
                return l2.split(b":", 1)[1].strip().decode(errors="replace")
        return None

    async def _session(self, reader, writer):
        """One SMTP session. Replies to pipelined commands are sent together once no further
        command is buffered (as a pipelining server such as Postfix's smtpd flushes its output,
        RFC 2920 section 3.2), and DATA content is read up to its terminator at once rather than
        line by line — so the sink's own share of each transaction stays small and steady for
        every relay measured through it."""
        self.sessions += 1
        self.peak_sessions = max(self.peak_sessions, self.sessions)
        out = bytearray()
        pending = []  # (key, time) of messages whose 250 is in `out`

        async def reply(text, flush=False):
            out.extend(text)
            # reader._buffer: what asyncio already read from the socket and no command took yet.
            if flush or not reader._buffer:
                writer.write(bytes(out))
                out.clear()
                for key, t in pending:
                    self._logged(key, t)
                pending.clear()
                await writer.drain()

        try:
            if self.hold:
                await self._release.wait()
            await reply(b"220 " + self.name + b" ESMTP tinysink\r\n", flush=True)
            chunks = []
            while True:
                line = await reader.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb == b"EHLO":
                    await reply(b"250-" + self.name + b"\r\n250-PIPELINING\r\n250-8BITMIME\r\n" +
                                (b"250-CHUNKING\r\n" if self.chunking else b"") + b"250 SIZE 52428800\r\n")
                elif verb == b"HELO":
                    await reply(b"250 " + self.name + b"\r\n")
                elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    if verb in (b"MAIL", b"RSET"):
                        chunks = []  # a new transaction: no chunk of an abandoned one
                    await reply(b"250 2.0.0 Ok\r\n")
                elif verb == b"DATA":
                    await reply(b"354 End data with <CR><LF>.<CR><LF>\r\n", flush=True)
                    first = await reader.readline()
                    if not first:
                        return
                    content = first if first == b".\r\n" else first + await reader.readuntil(b"\r\n.\r\n")
                    key = self._key(content)
                    pending.append((key, self._arrived(key)))
                    await reply(b"250 2.0.0 Ok: sunk\r\n")
                elif verb == b"BDAT" and self.chunking:
                    parts = line.split()
                    try:
                        n = int(parts[1])
                    except (IndexError, ValueError):
                        await reply(b"501 5.5.4 Syntax: BDAT size [LAST]\r\n")
                        continue
                    chunks.append(await reader.readexactly(n))
                    if len(parts) > 2 and parts[2].upper() == b"LAST":
                        content = b"".join(chunks)
                        chunks = []
                        key = self._key(content)
                        pending.append((key, self._arrived(key)))
                        await reply(b"250 2.0.0 Ok: sunk\r\n")
                    else:
                        await reply(b"250 2.0.0 Ok: chunk\r\n")
                elif verb == b"QUIT":
                    await reply(b"221 2.0.0 Bye\r\n", flush=True)
                    return
                else:
                    await reply(b"502 5.5.2 Error: command not recognized\r\n")
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return
        finally:
            self.sessions -= 1
            try:
                writer.close()
            except Exception:
                pass


def main():
    """Runs the sink as its own process: `tinysink.py HOST PORTFILE LOGFILE [chunking]`; stops on SIGTERM."""
    import os
    import signal
    import sys
    sys.setswitchinterval(0.0001)
    host, portfile, logfile = sys.argv[1:4]
    log = open(logfile, "a")
    sink = TinySink(host=host, log=log, chunking=sys.argv[4:5] == ["chunking"]).start()
    tmp = portfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(sink.port))
    os.rename(tmp, portfile)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    while not done.wait(3600):
        pass
    sink.stop()
    log.close()


if __name__ == "__main__":
    main()
