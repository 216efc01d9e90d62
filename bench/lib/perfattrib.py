#!/usr/bin/env python3
"""CPU samples of one process kind split by activity (bench/profile, issue 19).

Usage: perfattrib.py PERF_DATA KIND PIDS

Reads `perf script` of a `perf record --call-graph dwarf` file and gives each sample of the
processes PIDS (comma-separated) the first activity of KIND's list below (hato-coordinato,
hato-node) whose pattern matches any frame of its call chain (Swift symbols are mangled; the
patterns match the type and method names inside them). A sample whose chain matches none (a
kernel-only chain, or a chain cut short: dwarf unwinding copies 16 KiB of stack) is "other".
Then the same samples by thread name (threads are named in the kernel: docs/threads.md).
Processes are chosen by PID, not by name: each thread's name is its own.
"""
import collections
import re
import subprocess
import sys

ACTIVITIES = {
    "hato-coordinato": [
        ("submission: queue insert (group commit)", r"GroupCommitter|SQLiteQueueStore.*(insert|enqueue)|PostgreSQLQueueStore.*(insert|enqueue)"),
        ("submission: SMTP sessions on the event loops", r"SubmissionServer|SMTPServerSession|SubmissionLoop|SubmissionCommitter|EventLoop"),
        ("cluster: receive and decode frames", r"ClusterHub.*serve|ClusterConnection.*receive|ClusterMessage.*decode"),
        ("cluster: node link writes (grants)", r"NodeLink"),
        ("scheduler: due query, lease planning and recording", r"schedulerLoop|Scheduler"),
        ("result writer: applying results", r"ResultWriter"),
        ("delivery reporter: events, log, webhooks", r"DeliveryReporter"),
        ("acceptor and session threads (stack cut short)", r"Acceptor|ThreadReuse"),
        ("other background loops (checkpoints, metrics)", r"BackgroundLoop"),
    ],
    "hato-node": [
        ("journal (group commit)", r"GroupCommitter|OutcomeJournal"),
        ("delivery: SMTP client, DKIM", r"DeliveryEngine|SMTPDeliverer|SMTPClientConnection|DKIM"),
        ("lease queue workers", r"Agent.*worker"),
        ("coordinator link: grants in, results out", r"Agent.*session|Agent.*finish|Agent.*assign|ClusterConnection"),
    ],
}


def main():
    data, kind, pids = sys.argv[1], sys.argv[2], sys.argv[3]
    activities = [(re.compile(p), name) for name, p in ACTIVITIES.get(kind, [])]
    out = subprocess.run(["perf", "script", "-i", data, "--pid", pids, "-F", "comm,tid,ip,sym"],
                         capture_output=True, text=True).stdout
    counts = collections.Counter()
    threads = collections.Counter()
    total = 0
    for block in out.split("\n\n"):
        lines = [line for line in block.strip().split("\n") if line.strip()]
        if not lines:
            continue
        # The first line is "COMM TID" (the name may hold spaces), then one frame per line.
        thread = re.sub(r"[ _-]?[0-9.]+$", "", lines[0].strip().rsplit(None, 1)[0]) or "?"
        frames = [line.strip() for line in lines[1:]]
        total += 1
        name = next((n for rx, n in activities if any(rx.search(f) for f in frames)), "other")
        counts[name] += 1
        threads[thread] += 1
    for name, n in counts.most_common():
        print("  %5.1f%%  %s" % (100.0 * n / max(total, 1), name))
    print("  (%d samples)" % total)
    print("  by thread:", ", ".join("%s %.1f%%" % (t, 100.0 * n / max(total, 1)) for t, n in threads.most_common()))


if __name__ == "__main__":
    main()
