"""The 250-after-fsync check: strace a relay while it accepts a few messages and verify
that every `250 ... queued` reply was written only after an fsync/fdatasync that started
after the message's last DATA bytes were read and finished before the reply was sent.

Uses `strace -f -ff -ttt -T` (one output file per thread, so no call is split across
lines); works for thread-per-session servers (Hato: the same thread reads a session's
socket and writes its replies) and process-per-session ones (Postfix: smtpd reads and
replies, cleanup fsyncs the queue file).
"""
import glob
import os
import re
import time

from benchlib import say

_LINE = re.compile(r'^(\d+\.\d+) (\w+)\((\d+)?(.*)\) += (-?\d+)(?: [A-Z]\w*.*?)? <(\d+\.\d+)>\s*$')


def start_strace(procs, pids, workdir, name, fd_paths=False):
    """`fd_paths`: strace -y, so that a session's socket is known by its inode whatever descriptor
    it is used through (Exim reads a session from one descriptor and writes to a dup of it)."""
    out = os.path.join(workdir, "strace-%s" % name)
    os.makedirs(out, exist_ok=True)
    args = ["strace", "-f", "-ff", "-ttt", "-T", "-s", "64", "-qq"] + (["-y"] if fd_paths else []) + [
            "-e", "trace=read,recvfrom,recvmsg,write,writev,sendto,sendmsg,fsync,fdatasync,sync_file_range",
            "-o", os.path.join(out, "t")]
    for p in pids:
        args += ["-p", str(p)]
    p = procs.spawn(args, os.path.join(workdir, "strace-%s.log" % name))
    time.sleep(1.0)  # attaching to every thread takes a moment
    return p, out


def is_accept_reply(rest, accept=None):
    """Whether a traced write's text is a relay's final 250 to DATA.

    `accept`: a compiled regex searched in the traced argument text for relays whose reply
    is not Postfix's/Hato's `250 2.0.0 Ok: queued` (Exim's `250 OK id=...`, OpenSMTPD's
    `250 2.0.0 ID Message accepted for delivery`); None: the Postfix/Hato forms.
    """
    if accept is not None:
        return accept.search(rest) is not None
    return '"250 2.0.0 Ok: queued' in rest or '"250 2.0.0 OK: queued' in rest or ('"250 ' in rest and "queued" in rest)


def analyse(out_dir, accept=None):
    """Returns (replies_checked, replies_ok, fsync_calls, examples_of_failures); `accept` as in is_accept_reply."""
    fsyncs = []
    per_thread = {}
    for path in glob.glob(os.path.join(out_dir, "t.*")):
        calls = []
        with open(path, errors="replace") as f:
            for line in f:
                m = _LINE.match(line)
                if not m:
                    continue
                start, name, fd, rest, ret, dur = m.groups()
                start = float(start); dur = float(dur); ret = int(ret)
                if name in ("fsync", "fdatasync", "sync_file_range"):
                    if ret == 0:
                        fsyncs.append((start, start + dur))
                    continue
                if fd is None:
                    continue
                # With strace -y the descriptor is followed by <its file>: key by that (socket:[inode]).
                key = rest[:rest.index(">") + 1] if rest.startswith("<") and ">" in rest else int(fd)
                calls.append((start, dur, name, key, rest, ret))
        per_thread[path] = calls
    fsyncs.sort()
    checked = ok = 0
    failures = []
    for path, calls in per_thread.items():
        last_read = {}
        for (start, dur, name, fd, rest, ret) in calls:
            if name in ("read", "recvfrom", "recvmsg"):
                if ret > 0:
                    last_read[fd] = start
            elif is_accept_reply(rest, accept):
                t0 = last_read.get(fd)
                if t0 is None:
                    continue
                checked += 1
                if any(s >= t0 and e <= start for (s, e) in fsyncs if s >= t0 - 1 and s <= start):
                    ok += 1
                elif len(failures) < 3:
                    failures.append("%s fd %s: data read at %.6f, 250 written at %.6f, no fsync between" % (os.path.basename(path), fd, t0, start))
    return checked, ok, len(fsyncs), failures


def check(procs, pids, workdir, name, inject, accept=None, fd_paths=False):
    """Straces `pids` (following new threads/children) while `inject()` runs; returns a result dict.

    `accept`: how the relay's 250 to DATA looks (see is_accept_reply; None: Postfix/Hato).
    `fd_paths`: see start_strace."""
    p, out = start_strace(procs, pids, workdir, name, fd_paths)
    try:
        inject()
        time.sleep(0.5)
    finally:
        procs.stop(p, timeout=10)
    checked, ok, nf, failures = analyse(out, accept)
    say("250-after-fsync %s: %d/%d replies preceded by an fsync that began after the data was read (%d fsync calls)" %
        (name, ok, checked, nf))
    return {"replies": checked, "ok": ok, "fsyncs": nf, "failures": failures}
