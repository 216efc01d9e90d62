"""A small asyncio SMTP sink that records, per message, when it sent its 250 after DATA.

Messages are keyed by the value of a header (default `X-Bench-ID`). Advertises
PIPELINING and 8BITMIME, and with `chunking=True` also CHUNKING (BDAT, RFC 3030, as the
large mailbox providers' MX hosts do); commands are read line by line, so pipelined input
works.
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
                                                                        limit=1 << 20))
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
        t = time.time()
        self.messages += 1
        if key is not None:
            self.arrivals[key] = t
            if self.log is not None:
                self.log.write("%s %.6f\n" % (key, t))
                self.log.flush()

    async def _session(self, reader, writer):
        self.sessions += 1
        self.peak_sessions = max(self.peak_sessions, self.sessions)
        try:
            if self.hold:
                await self._release.wait()
            writer.write(b"220 " + self.name + b" ESMTP tinysink\r\n")
            chunks = []
            await writer.drain()
            while True:
                line = await reader.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-" + self.name + b"\r\n250-PIPELINING\r\n250-8BITMIME\r\n" +
                                 (b"250-CHUNKING\r\n" if self.chunking else b"") + b"250 SIZE 52428800\r\n")
                elif verb == b"HELO":
                    writer.write(b"250 " + self.name + b"\r\n")
                elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    if verb in (b"MAIL", b"RSET"):
                        chunks = []  # a new transaction: no chunk of an abandoned one
                    writer.write(b"250 2.0.0 Ok\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    await writer.drain()
                    key = None
                    in_headers = True
                    while True:
                        l2 = await reader.readline()
                        if not l2:
                            return
                        if l2 == b".\r\n":
                            break
                        if in_headers:
                            if l2 in (b"\r\n", b"\n"):
                                in_headers = False
                            elif key is None and l2.lower().startswith(self.header + b":"):
                                key = l2.split(b":", 1)[1].strip().decode(errors="replace")
                    self._arrived(key)
                    writer.write(b"250 2.0.0 Ok: sunk\r\n")
                elif verb == b"BDAT" and self.chunking:
                    parts = line.split()
                    try:
                        n = int(parts[1])
                    except (IndexError, ValueError):
                        writer.write(b"501 5.5.4 Syntax: BDAT size [LAST]\r\n")
                        await writer.drain()
                        continue
                    chunks.append(await reader.readexactly(n))
                    if len(parts) > 2 and parts[2].upper() == b"LAST":
                        content = b"".join(chunks)
                        chunks = []
                        key = None
                        end = content.find(b"\r\n\r\n")
                        for l2 in content[:end if end >= 0 else len(content)].split(b"\r\n"):
                            if l2.lower().startswith(self.header + b":"):
                                key = l2.split(b":", 1)[1].strip().decode(errors="replace")
                                break
                        self._arrived(key)
                        writer.write(b"250 2.0.0 Ok: sunk\r\n")
                    else:
                        writer.write(b"250 2.0.0 Ok: chunk\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(b"502 5.5.2 Error: command not recognized\r\n")
                await writer.drain()
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
