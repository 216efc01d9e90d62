"""The chaos suite's invariant checks and figures, from the records of one run.

Inputs: the client's attempts (client.jsonl), the sink's records (sink.jsonl) and what the
controller did (its phases, the processes it started and killed, memory samples, crashes).
See docs/chaos.md for each invariant and its bound.
"""
import collections
import os
import signal

from controller import read_jsonl, NODE_IDS, IP_PLAN

EPS = 1.0   # seconds of slack between the controller's and the sink's timestamps of one event


class Run:
    def __init__(self, ch):
        self.ch = ch
        self.a = ch.a
        self.client = read_jsonl(ch.client_out)
        self.sink = read_jsonl(ch.sink_out)
        self.spans = []
        for m in ch.members.values():
            for h in m.history:
                self.spans.append((h["pid"], m.role, h["start"], h["end"]))
        self.phases = ch.phases
        self.t0 = ch.t0
        self._index()

    # ------------------------------------------------------------ indexing

    def node_of(self, pid, t):
        if pid is None:
            return None
        best = None
        for p, role, start, end in self.spans:
            if p == pid and start - EPS <= t and (end is None or t <= end + EPS):
                best = role
        return best

    def _index(self):
        self.first_attempt = {}
        self.accepted = {}
        self.ambiguous = collections.Counter()
        for r in self.client:
            self.first_attempt.setdefault(r["id"], r["t0"])
            if r["res"] == "250":
                self.accepted[r["id"]] = r
            elif r.get("dot") and r["res"] in ("conn", "timeout"):
                self.ambiguous[r["id"]] += 1
        self.replies = {r["m"]: r["sent"] for r in self.sink if r["k"] == "reply"}
        self.conns = {r["c"]: r for r in self.sink if r["k"] == "conn"}
        self.msgs = [r for r in self.sink if r["k"] == "msg"]
        for r in self.msgs:
            r["node"] = self.node_of(r["pid"], r["t_dot"])
            r["reply_sent"] = self.replies.get(r["m"])
        self.aborts = [r for r in self.sink if r["k"] == "abort"]
        for r in self.aborts:
            r["node"] = self.node_of(r["pid"], r["t_mail"])
        self.dsns = [r for r in self.msgs if not r["from"]]
        self.unknown = [r for r in self.msgs if r["from"] and not r["id"]]
        self.copies = collections.defaultdict(list)
        for r in self.msgs:
            if r["from"] and r["id"]:
                for rc in r["rcpts"]:
                    self.copies[(r["id"], rc)].append(r)
        for cs in self.copies.values():
            cs.sort(key=lambda r: r["t_commit"])
        self.accepted_keys = {(i, rc.lower()): r["t1"] for i, r in self.accepted.items() for rc in r["rcpts"]}
        self.lost = {k: t for k, t in self.accepted_keys.items() if k not in self.copies}
        self.unconfirmed = {k for k in self.copies if k not in self.accepted_keys}

    def phase_index(self, t):
        for i, ph in enumerate(self.phases):
            end = ph["end"] if ph["end"] is not None else float("inf")
            if t < end:
                return i
        return len(self.phases) - 1

    # ------------------------------------------------------------ duplicates

    def node_faults(self):
        out = []
        for ph in self.phases:
            if ph["kind"] in ("node-kill", "node-stop", "host-kill", "flood-rejoin"):
                out.append({"kind": ph["kind"], "node": ph["target"], "pid": ph["info"]["pid"],
                            "t": ph["info"].get("t_kill", ph["start"]),
                            "end": ph["fault_end"], "charged": set(), "capacity": self.ch.capacity[ph["target"]]})
        return out

    def duplicates(self):
        """Every extra copy of a recipient needs an explanation; returns (faults, by_resubmission, unexplained)."""
        faults = self.node_faults()
        lease = self.a.lease_time
        resub_used = 0
        unexplained = []
        self.dup_total = 0
        for key, cs in self.copies.items():
            excess = len(cs) - 1
            if excess <= 0:
                continue
            self.dup_total += excess
            by_resub = min(excess, self.ambiguous.get(key[0], 0))
            resub_used += by_resub
            left = excess - by_resub
            for c in cs[:-1]:
                if left <= 0:
                    break
                for f in faults:
                    if c["pid"] == f["pid"] and f["t"] - lease - EPS <= c["t_dot"] <= f["t"] + EPS:
                        f["charged"].add(key[0])
                        left -= 1
                        break
            if left > 0:
                unexplained.append({"key": key, "copies": [
                    {"t": round(c["t_commit"] - self.t0, 3), "ip": c["ip"], "pid": c["pid"], "node": c["node"],
                     "reply_sent": c["reply_sent"], "sink_msg": c["m"]} for c in cs],
                    "ambiguous_submissions": self.ambiguous.get(key[0], 0),
                    "queue_id": self.accepted.get(key[0], {}).get("q")})
        return faults, resub_used, unexplained

    # ------------------------------------------------------------ single owner

    def overlaps(self):
        """Transactions (MAIL to end of data, or to the last octet of an aborted one) from one
        source IP by two different nodes at overlapping times."""
        by_ip = collections.defaultdict(list)
        for r in self.msgs:
            by_ip[r["ip"]].append((r["t_mail"], r["t_dot"], r["node"], r["pid"], "msg " + r["m"]))
        for r in self.aborts:
            by_ip[r["ip"]].append((r["t_mail"], r["t_last"], r["node"], r["pid"], "aborted (%s)" % r["why"]))
        bad, unattributed, checked = [], 0, 0
        for ip, txs in by_ip.items():
            txs.sort()
            active = []
            for tx in txs:
                checked += 1
                if tx[2] is None:
                    unattributed += 1
                active = [o for o in active if o[1] >= tx[0]]
                for o in active:
                    if o[2] != tx[2]:
                        bad.append({"ip": ip, "a": self._tx(o), "b": self._tx(tx)})
                active.append(tx)
        return bad, unattributed, checked

    def _tx(self, tx):
        return {"from": round(tx[0] - self.t0, 3), "to": round(tx[1] - self.t0, 3), "node": tx[2], "pid": tx[3], "what": tx[4]}

    def session_overlaps(self):
        """Open sessions (connect to close, idle included) from one IP held by two nodes at once — informational."""
        closes = {r["c"]: r["t"] for r in self.sink if r["k"] == "close"}
        by_ip = collections.defaultdict(list)
        end_t = self.ch.t_end
        for c, r in self.conns.items():
            by_ip[r["ip"]].append((r["t"], closes.get(c, end_t), self.node_of(r["pid"], r["t"])))
        n = 0
        for txs in by_ip.values():
            txs.sort()
            active = []
            for tx in txs:
                active = [o for o in active if o[1] >= tx[0]]
                if any(o[2] != tx[2] for o in active):
                    n += 1
                active.append(tx)
        return n

    def table_mismatches(self):
        """Deliveries from an IP that the last /v1/ips poll before them showed owned by another node."""
        tl = sorted(self.ch.ip_timeline)
        n = 0
        for r in self.msgs:
            owner = None
            for t, ip, o, state in tl:
                if t > r["t_mail"]:
                    break
                if ip == r["ip"]:
                    owner = (o, state)
            if owner and owner[1] == "owned" and owner[0] != r["node"]:
                n += 1
        return n

    # ------------------------------------------------------------ per phase

    def phase_rows(self):
        rows = []
        for i, ph in enumerate(self.phases):
            rows.append({"i": i, "kind": ph["kind"], "target": ph["target"], "start": ph["start"], "end": ph["end"],
                         "fault_end": ph["fault_end"], "sent": 0, "accepted": 0, "delivered": 0, "dups": 0, "lost": 0,
                         "r452": 0, "r451": 0, "r421": 0, "r4xx": 0, "conn": 0, "first250": None, "recover": None,
                         "node_back": None, "mem": {}})
        for ident, t in self.first_attempt.items():
            rows[self.phase_index(t)]["sent"] += 1
        for r in self.accepted.values():
            rows[self.phase_index(r["t1"])]["accepted"] += 1
        for r in self.client:
            if r["res"] == "250":
                continue
            row = rows[self.phase_index(r["t1"])]
            if r["res"] in ("conn", "timeout"):
                row["conn"] += 1
            elif r["code"] in (452, 451, 421):
                row["r%d" % r["code"]] += 1
            else:
                row["r4xx"] += 1
        for key, cs in self.copies.items():
            rows[self.phase_index(cs[0]["t_commit"])]["delivered"] += 1
            for c in cs[1:]:
                rows[self.phase_index(c["t_commit"])]["dups"] += 1
        for key, t in self.lost.items():
            rows[self.phase_index(t)]["lost"] += 1
        first_copy = {}
        for key, cs in self.copies.items():
            first_copy[key[0]] = min(first_copy.get(key[0], float("inf")), cs[0]["t_commit"])
        for row in rows:
            fe = row["fault_end"]
            if fe is None:
                continue
            t250 = [r["t1"] for r in self.accepted.values() if r["t1"] >= fe]
            row["first250"] = min(t250) - fe if t250 else None
            rec = [first_copy[i] for i, r in self.accepted.items() if r["t1"] >= fe and i in first_copy]
            row["recover"] = min(rec) - fe if rec else None
            if row["kind"] in ("node-kill", "node-stop", "host-kill", "flood-rejoin"):
                back = [r["t_commit"] for r in self.msgs if r["node"] == row["target"] and r["t_dot"] >= fe]
                row["node_back"] = min(back) - fe if back else None
        for pid, e in self.ch.mem.items():
            for t, rss in e["rss"]:
                row = rows[self.phase_index(t)]
                row["mem"][e["role"]] = max(row["mem"].get(e["role"], 0), rss)
        return rows

    def ip_moves(self, node, t_fault):
        """Floating IPs the table showed owned by `node` at `t_fault`, and how long after it each
        was first shown owned by another node (None: not within the run)."""
        tl = sorted(self.ch.ip_timeline)
        owner = {}
        for t, ip, o, state in tl:
            if t > t_fault:
                break
            owner[ip] = o
        floating = {"127.0.0.%d" % o for o, ns in IP_PLAN if len(ns) != 1}
        out = {}
        for ip, o in owner.items():
            if o != node or ip not in floating:
                continue
            out[ip] = None
            for t, ip2, o2, state in tl:
                if t > t_fault and ip2 == ip and o2 not in (None, node):
                    out[ip] = t - t_fault
                    break
        return out

    def held_outcome(self, held):
        """What became of a transaction the sink held while a fault struck."""
        if not held:
            return None
        tok = held["token"]
        for r in self.msgs:
            if r.get("held") == tok:
                return {"outcome": "completed", "t_dot": r["t_dot"], "node": r["node"], "ip": r["ip"],
                        "reply_sent": r.get("reply_sent")}
        for r in self.aborts:
            if r.get("held") == tok:
                return {"outcome": "aborted", "t_last": r["t_last"], "why": r["why"], "node": r["node"], "ip": r["ip"]}
        return {"outcome": "unknown"}

    def disk_checks(self):
        """Per disk-full phase: 452 refusals seen, and the queue drained while the disk was full."""
        out = []
        for ph in self.phases:
            if ph["kind"] != "disk-full":
                continue
            fe = ph["fault_end"]
            r452 = sum(1 for r in self.client if r.get("code") == 452 and ph["start"] <= r["t1"] <= ph["end"])
            want = [k for k, t in self.accepted_keys.items() if ph["start"] - 2 <= t <= fe - 3
                    and not (k in self.copies and self.copies[k][0]["t_commit"] < ph["start"])]
            done = [k for k in want if k in self.copies and self.copies[k][0]["t_commit"] <= fe]
            out.append({"start": ph["start"], "r452": r452, "want": len(want), "drained": len(done)})
        return out


def fmt_s(v):
    return "-" if v is None else "%.1f" % v


def report(ch, rc_setup=None):
    """Prints the figures and the invariants; returns the list of failures."""
    run = Run(ch)
    a = ch.a
    lines = []
    p = lines.append
    roles = ["coordinator"] + NODE_IDS
    p("")
    p("Hato chaos run: seed %d, duration %d s%s, %s" % (a.seed, a.duration, " (--quick)" if a.quick else "",
                                                       "workdir " + ch.workdir))
    p("cluster: coordinator + %d nodes, %d sending IPs 127.0.0.%d-%d (%d floating), lease_time %ss, node_timeout %ss, "
      "heartbeat %ss, connections_per_ip %d, queue_min_free %d MiB on a %d MiB tmpfs"
      % (len(NODE_IDS), len(IP_PLAN), IP_PLAN[0][0], IP_PLAN[-1][0], sum(1 for _, ns in IP_PLAN if len(ns) != 1),
         a.lease_time, a.node_timeout, a.heartbeat, a.connections_per_ip, a.min_free_mib, a.tmpfs_mib))
    p("client: %.0f msg/s over %d sessions, 1-3 recipients each; sink answers 250 after %.0f ms"
      % (a.rate, a.sessions, a.sink_delay * 1000))
    p("machine: %s" % _machine())
    p("")
    hdr = ("%-3s %-17s %-8s %6s %5s %5s %5s %6s %4s %4s %4s %4s %4s %4s %4s %6s %6s %6s  " + " ".join("%6s" for _ in roles)) % (
        ("#", "phase", "target", "t+s", "len", "sent", "250", "dlvd", "dup", "lost", "452", "451", "421", "4xx", "conn",
         "1st250", "recov", "nodeBk") + tuple(r.replace("coordinator", "coord") for r in roles))
    p("per phase (sent/250 = messages; dlvd/dup/lost = recipients; refusals = client attempts; times in s after the fault ended;")
    p(" recov = first delivery of a message accepted after the fault ended; nodeBk = first delivery by the faulted node;")
    p(" memory = peak RSS in the phase, MiB)")
    p(hdr)
    rows = run.phase_rows()
    tot = collections.Counter()
    for row in rows:
        length = (row["end"] or ch.t_end) - row["start"]
        for k in ("sent", "accepted", "delivered", "dups", "lost", "r452", "r451", "r421", "r4xx", "conn"):
            tot[k] += row[k]
        mem = ["%6s" % ("%.0f" % (row["mem"][r] / 1024) if r in row["mem"] else "-") for r in roles]
        p(("%-3d %-17s %-8s %6.0f %5.0f %5d %5d %6d %4d %4d %4d %4d %4d %4d %4d %6s %6s %6s  " % (
            row["i"], row["kind"], row["target"] or "", row["start"] - ch.t0, length, row["sent"], row["accepted"],
            row["delivered"], row["dups"], row["lost"], row["r452"], row["r451"], row["r421"], row["r4xx"], row["conn"],
            fmt_s(row["first250"]), fmt_s(row["recover"]), fmt_s(row["node_back"]))) + " ".join(mem))
    hwm = {}
    for pid, e in ch.mem.items():
        hwm[e["role"]] = max(hwm.get(e["role"], 0), e["hwm"])
    p(("%-3s %-17s %-8s %6s %5.0f %5d %5d %6d %4d %4d %4d %4d %4d %4d %4d %6s %6s %6s  " % (
        "", "total", "", "", ch.t_end - ch.t0, tot["sent"], tot["accepted"], tot["delivered"], tot["dups"], tot["lost"],
        tot["r452"], tot["r451"], tot["r421"], tot["r4xx"], tot["conn"], "", "", "")) +
      " ".join("%6s" % ("%.0f" % (hwm[r] / 1024) if r in hwm else "-") for r in roles) + "  (VmHWM)")
    p("")
    p("faults:")
    for i, ph in enumerate(ch.phases):
        if ph["kind"] in ("baseline", "drain"):
            continue
        info = dict(ph["info"])
        flood = info.pop("flood", None)
        held = info.pop("held", None)
        if "t_kill" in info:
            info["killed_at"] = "t+%.1f" % (info.pop("t_kill") - ch.t0)
        p("  #%d %s %s at t+%.1f s: %s" % (i, ph["kind"], ph["target"], ph["start"] - ch.t0,
                                          ", ".join("%s=%s" % kv for kv in sorted(info.items()))))
        if held:
            o = run.held_outcome(held)
            if o["outcome"] == "completed":
                what = "completed by the node (end of data at t+%.1f s, %s)" % (
                    o["t_dot"] - ch.t0, "250 sent" if o["reply_sent"] else "the sink's 250 did not reach it")
            elif o["outcome"] == "aborted":
                what = "abandoned by the node (%s; its last octet at t+%.1f s)" % (o["why"], o["t_last"] - ch.t0)
            else:
                what = "no record"
            p("      struck mid-delivery: the sink held a transaction from %s (pid %s) before its %s; it was %s"
              % (held["ip"], held["pid"], held["stage"], what))
        elif ph["kind"] in ("node-kill", "node-stop", "coordinator-kill", "host-kill"):
            p("      no transaction was caught in flight (the node had none within 8 s)")
        if ph["kind"] == "node-stop":
            moves = run.ip_moves(ph["target"], ph["start"])
            p("      its floating IPs (per /v1/ips, polled every second): %s" % (", ".join(
                "%s moved after %s" % (ip, "%.1f s" % d if d is not None else "never") for ip, d in sorted(moves.items()))
                or "none owned"))
        if flood:
            for tgt, st in sorted(flood.items()):
                p("      flood %-7s %s" % (tgt, ", ".join("%s %s" % (k, v) for k, v in sorted(st.items()))))
    p("")

    failures = []

    def check(ok, name, detail):
        p("  [%s] %s: %s" % ("ok" if ok else "FAIL", name, detail))
        if not ok:
            failures.append(name)

    p("invariants:")
    n_acc = len(run.accepted_keys)
    check(not run.lost, "no loss",
          "%d recipients of %d accepted messages, %d delivered at least once, %d lost"
          % (n_acc, len(run.accepted), n_acc - len(run.lost), len(run.lost)))
    bdat = sum(1 for r in run.msgs if r.get("bdat"))
    chunking = getattr(a, "sink_chunking", "none")
    if chunking != "none":
        check(bdat > 0 and (chunking == "all" or bdat < len(run.msgs)), "both delivery paths under faults",
              "%d transactions the sink took by pipelined BDAT (RFC 3030), %d by DATA (CHUNKING offered: %s connections)"
              % (bdat, len(run.msgs) - bdat, chunking))
    for k, t in sorted(run.lost.items(), key=lambda kv: kv[1])[:10]:
        p("        lost %s <%s> accepted at t+%.1f s (queue id %s)" % (k[0], k[1], t - ch.t0, run.accepted[k[0]].get("q")))
    faults, by_resub, unexplained = run.duplicates()
    over = [f for f in faults if len(f["charged"]) > f["capacity"]]
    check(not unexplained and not over, "duplicates only for deliveries in flight at a fault",
          "%d extra copies: %d after ambiguous client submissions (bound: 1 per submission whose end of data got no reply, "
          "%d such), %d in flight on a node at its kill -9/SIGSTOP (bound per fault: the node's lease capacity), %d unexplained"
          % (run.dup_total, by_resub, sum(run.ambiguous.values()), sum(len(f["charged"]) for f in faults), len(unexplained)))
    for f in faults:
        p("        %s %s pid %d: %d messages duplicated (bound %d = connections_per_ip %d x %d x %d IPs it may own)"
          % (f["kind"], f["node"], f["pid"], len(f["charged"]), f["capacity"], a.connections_per_ip, 2,
             f["capacity"] // (2 * a.connections_per_ip)))
    for u in unexplained[:10]:
        p("        unexplained: %s" % u)
    bad, unattributed, checked = run.overlaps()
    check(not bad and not unattributed, "one node per sending IP at a time",
          "%d transactions checked (MAIL .. end of data, or .. last octet of an aborted one), %d from two nodes at once, "
          "%d not attributed to a node process" % (checked, len(bad), unattributed))
    for b in bad[:10]:
        p("        overlap on %s: %s and %s" % (b["ip"], b["a"], b["b"]))
    p("        (informational: %d sessions opened from an IP while another node held an open session from it, idle ones included; "
      "%d deliveries from an IP the last /v1/ips poll showed owned by another node)"
      % (run.session_overlaps(), run.table_mismatches()))
    limit = a.mem_limit_mib * 1024
    worst = sorted(((e["hwm"], e["role"], pid) for pid, e in ch.mem.items()), reverse=True)
    over_mem = [w for w in worst if w[0] > limit]
    check(not over_mem, "memory bounded", "peak VmHWM per process <= %d MiB: %s" % (
        a.mem_limit_mib, ", ".join("%s %.0f MiB" % (r, hwm[r] / 1024) for r in roles if r in hwm)))
    check(not ch.crashes, "no crash", "%d unexpected exits (coordinator, nodes, sink, client); %d processes killed on purpose"
          % (len(ch.crashes), sum(1 for m in ch.members.values() for h in m.history if h["how"] == "killed")))
    for c in ch.crashes:
        p("        %s pid %d exited rc %s at t+%.1f s; log tail:\n%s" % (
            c["role"], c["pid"], c["rc"], c["t"] - ch.t0, "\n".join("          " + l for l in c["log_tail"].splitlines()[-15:])))
    # The coordinator stops cleanly on SIGTERM (exit 0). hato-node installs no SIGTERM handler
    # (docs/operations.md: drain, then SIGTERM), so a node ends by the signal's default action
    # (-15); either is fine, a SIGKILL after the 15 s wait (-9) or any other status is not.
    def clean(role, rc):
        return rc == 0 or (role != "coordinator" and rc == -signal.SIGTERM)
    unclean = {r: rc for r, rc in ch.clean_stops.items() if rc is not None and not clean(r, rc)}
    check(not unclean, "stop on SIGTERM", "coordinator exit 0, nodes exit 0 or end by SIGTERM, within 15 s: %s" % (
        ", ".join("%s rc %s" % kv for kv in sorted(ch.clean_stops.items()))))
    check(not run.dsns, "no DSN", "%d DSNs reached the sink (the sink accepts everything: no recipient may fail or expire)"
          % len(run.dsns))
    final = ch.final_nodes or {}
    states = {n: final.get(n, {}).get("state") for n in NODE_IDS}
    check(all(s == "active" for s in states.values()), "the cluster heals",
          "node states at the end: %s; queue: %s" % (", ".join("%s %s" % kv for kv in states.items()), ch.final_queue))
    fenced = []
    for ph in ch.phases:
        if ph["kind"] == "node-stop" and ph["info"].get("held"):
            o = run.held_outcome(ph["info"]["held"])
            fenced.append((ph, o))
    if fenced:
        done = [(ph, o) for ph, o in fenced if o["outcome"] == "completed"]
        check(not done, "fencing: no delivery after the lease deadline",
              "%d transactions frozen (SIGSTOP) before their content on a floating IP; %d completed after the node resumed past "
              "its lease deadline" % (len(fenced), len(done)))
    no_recovery = [r for r in rows if r["fault_end"] is not None and r["recover"] is None]
    check(not no_recovery, "recovery after every fault", "%d faults, %d without a delivery of a message accepted after it ended"
          % (sum(1 for r in rows if r["fault_end"] is not None), len(no_recovery)))
    for d in run.disk_checks():
        check(d["r452"] > 0 and d["drained"] == d["want"], "disk full: 452 4.3.1 and the queue drains",
              "%d MAILs refused with 452; %d of %d recipients accepted before the disk filled (or in its first seconds) and not yet "
              "delivered were delivered while it was full" % (d["r452"], d["drained"], d["want"]))
    for ph in ch.phases:
        if ph["kind"] == "flood-rejoin":
            i = ph["info"]
            check(i.get("rejoin_s") is not None and i.get("flood_left_s", -1) > 0, "a node rejoins under flood",
                  "%s killed and restarted during the flood: %s" % (ph["target"], "active again after %.1f s, %.1f s before the flood ended"
                                                                    % (i["rejoin_s"], i["flood_left_s"]) if i.get("rejoin_s") is not None
                                                                    else "not active again"))
    for r in rows:
        if r["kind"] in ("flood", "flood-rejoin"):
            check(r["accepted"] > 0, "service under flood", "%d messages accepted from the real client during the flood" % r["accepted"])
    p("")
    p("also: %d deliveries of messages whose 250 the client never saw (ambiguous or in flight when it stopped); "
      "%d sink messages without X-Chaos-ID; %d admin polls failed; IP owner changes seen in /v1/ips: %d"
      % (len(run.unconfirmed), len(run.unknown), ch.admin_errors,
         sum(1 for _ in ch.ip_timeline) - len(IP_PLAN)))
    p("")
    p("RESULT: %s (seed %d)" % ("PASS" if not failures else "FAIL: " + "; ".join(failures), a.seed))
    text = "\n".join(lines) + "\n"
    return text, failures, {"rows": rows, "failures": failures, "unexplained": unexplained, "overlaps": bad,
                            "lost": [list(k) for k in run.lost], "crashes": ch.crashes}


def _machine():
    try:
        load = " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        load = "?"
    return "%d cores, kernel %s, load average %s" % (os.cpu_count() or 0, os.uname().release, load)
