"""A recipient MX that is always busy: greets, accepts EHLO and MAIL, and answers every RCPT
with Gmail's connection-level throttling reply (421 4.7.0 Try again later, closing
connection), then closes. Hato's generic backoff rule suspends the (sending IP, provider)
pair on it, which the dashboard's Sending IPs page shows with a Lift button.

usage: busy_mx.py PORT   (listens on 127.0.0.1)
"""
import socketserver
import sys


class Busy(socketserver.StreamRequestHandler):
    def reply(self, line):
        self.wfile.write((line + "\r\n").encode())
        self.wfile.flush()

    def handle(self):
        self.reply("220 busy.test ESMTP")
        while True:
            line = self.rfile.readline(1024)
            if not line:
                return
            verb = line.decode("latin-1").strip().upper()
            if verb.startswith("EHLO") or verb.startswith("HELO"):
                self.reply("250 busy.test")
            elif verb.startswith("MAIL"):
                self.reply("250 2.1.0 Ok")
            elif verb.startswith("RCPT"):
                self.reply("421 4.7.0 Try again later, closing connection.")
                return
            elif verb.startswith("QUIT"):
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("250 2.0.0 Ok")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    with Server(("127.0.0.1", int(sys.argv[1])), Busy) as server:
        print("busy MX on 127.0.0.1:%s" % sys.argv[1], flush=True)
        server.serve_forever()
