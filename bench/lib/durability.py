"""The 250-after-fsync check: strace a relay while it accepts a few messages and verify
that every `250 ... queued` reply was written only after an fsync/fdatasync that started
after the message's last DATA bytes were read and finished before the reply was sent.

Uses `strace -f -ff -ttt -T -y` (one output file per thread, so no call is split across
lines; each descriptor named by its file, a session's socket by its inode): a session's reads
and replies are matched by that socket whichever thread or process made them — Hato reads on
an event loop thread and its committer thread writes the 250, Postfix's smtpd reads and replies
while cleanup fsyncs the queue file, Exim writes to a dup of the socket it reads. Only fsync and
fdatasync count as syncs (sync_file_range without its wait flags only starts the write-out).
"""
import glob
import os
import re
import time

from benchlib import say

_LINE = re.compile(r'^(\d+\.\d+) (\w+)\((\d+)?(.*)\) += (-?\d+)(?: [A-Z]\w*.*?)? <(\d+\.\d+)>\s*$')


def start_strace(procs, pids, workdir, name, fd_paths=True):
    """`fd_paths`: strace -y, so that a session's socket is known by its inode whatever descriptor
    and thread it is used through (see the module's doc)."""
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
    calls = []
    for path in glob.glob(os.path.join(out_dir, "t.*")):
        with open(path, errors="replace") as f:
            for line in f:
                m = _LINE.match(line)
                if not m:
                    continue
                start, name, fd, rest, ret, dur = m.groups()
                start = float(start); dur = float(dur); ret = int(ret)
                if name == "sync_file_range":
                    continue
                if name in ("fsync", "fdatasync"):
                    if ret == 0:
                        fsyncs.append((start, start + dur))
                    continue
                if fd is None:
                    continue
                # With strace -y the descriptor is followed by <its file>: key by that (socket:[inode]),
                # across threads and processes; a bare number only within its thread.
                key = rest[:rest.index(">") + 1] if rest.startswith("<") and ">" in rest else (path, int(fd))
                calls.append((start, dur, name, key, rest, ret, path))
    fsyncs.sort()
    calls.sort(key=lambda c: c[0])
    checked = ok = 0
    failures = []
    last_read = {}
    for (start, dur, name, fd, rest, ret, path) in calls:
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


def check(procs, pids, workdir, name, inject, accept=None, fd_paths=True):
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
