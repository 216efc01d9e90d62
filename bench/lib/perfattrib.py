#!/usr/bin/env python3
"""CPU samples of one process kind split by activity (bench/profile, issue 19).

Usage: perfattrib.py PERF_DATA COMM

Reads `perf script` of a `perf record --call-graph dwarf` file and gives each sample of the
processes named COMM (perf's 15-character comm: hato-coordinato, hato-node) the first activity
of the list below whose pattern matches any frame of its call chain (Swift symbols are mangled;
the patterns match the type and method names inside them). A sample whose chain matches none
(a kernel-only chain, or a chain cut short: dwarf unwinding copies 16 KiB of stack) is "other".
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
    data, comm = sys.argv[1], sys.argv[2]
    activities = [(re.compile(p), name) for name, p in ACTIVITIES.get(comm, [])]
    out = subprocess.run(["perf", "script", "-i", data, "--comm", comm, "-F", "ip,sym"],
                         capture_output=True, text=True).stdout
    counts = collections.Counter()
    total = 0
    for block in out.split("\n\n"):
        frames = [line.strip() for line in block.strip().split("\n") if line.strip()]
        if not frames:
            continue
        total += 1
        name = next((n for rx, n in activities if any(rx.search(f) for f in frames)), "other")
        counts[name] += 1
    for name, n in counts.most_common():
        print("  %5.1f%%  %s" % (100.0 * n / max(total, 1), name))
    print("  (%d samples)" % total)


if __name__ == "__main__":
    main()
