"""Shared helpers for Hato's benchmarks (Python 3 standard library only).

Everything here runs on loopback. Every process started through `Procs` is
remembered by PID and stopped by PID (SIGTERM, then SIGKILL after a bounded
wait); every wait loop has a deadline.
"""
import atexit
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def say(msg):
    sys.stderr.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- processes

class Procs:
    """Processes started by this benchmark, stopped by PID on exit."""

    def __init__(self):
        self.popen = []      # subprocess.Popen objects we started
        self.extra = []      # (pid, name) of daemons that detached (Postfix master)
        self.cleanups = []   # callables run once by stop_all, after the processes (a PostgreSQL server)
        atexit.register(self.stop_all)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame):
        self.stop_all()
        sys.exit(128 + signum)

    def spawn(self, args, log_path, env=None, cwd=None, stdout_path=None):
        out = open(stdout_path or log_path, "ab")
        err = out if stdout_path is None else open(log_path, "ab")
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=cwd,
                             start_new_session=True)
        out.close()
        if err is not out:
            err.close()
        self.popen.append(p)
        return p

    def adopt(self, pid, name):
        self.extra.append((pid, name))

    def add_cleanup(self, fn):
        """Runs `fn` once at `stop_all` (exit, Ctrl-C, an error), after every process is stopped."""
        self.cleanups.append(fn)

    @staticmethod
    def _alive(pid):
        try:
            with open("/proc/%d/stat" % pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def stop(self, p, timeout=10.0):
        """Stops one Popen by PID: SIGTERM, bounded wait, SIGKILL."""
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)
        if p in self.popen:
            self.popen.remove(p)

    def stop_pid(self, pid, timeout=10.0, kill_tree=()):
        """Stops a detached daemon by PID; then SIGKILLs any listed leftover PIDs."""
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.time() + timeout
        while time.time() < deadline and self._alive(pid):
            time.sleep(0.05)
        for q in (pid,) + tuple(kill_tree):
            if self._alive(q):
                try:
                    os.kill(q, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.extra = [(p, n) for (p, n) in self.extra if p != pid]

    def stop_all(self):
        for p in list(reversed(self.popen)):
            try:
                self.stop(p, timeout=5)
            except Exception:
                pass
        for pid, _ in list(self.extra):
            self.stop_pid(pid, timeout=5, kill_tree=descendants(pid))
        while self.cleanups:
            fn = self.cleanups.pop()
            try:
                fn()
            except Exception as e:
                say("cleanup failed: %s" % e)


# ---------------------------------------------------------------- /proc

def _stat_fields(pid):
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    return s.rsplit(")", 1)[1].split()


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def ppid_map():
    m = {}
    for pid in all_pids():
        try:
            m[pid] = int(_stat_fields(pid)[1])
        except (OSError, IndexError, ValueError):
            pass
    return m


def descendants(root):
    m = ppid_map()
    kids = {}
    for pid, pp in m.items():
        kids.setdefault(pp, []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def cpu_seconds(pid):
    """utime+stime+cutime+cstime of one process (its reaped children included), seconds."""
    f = _stat_fields(pid)
    return (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / CLK_TCK


def status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def pss_kib(pid):
    """Proportional set size (shared pages divided among their users), KiB."""
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def proc_name(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return "?"


class TreeMeter:
    """Samples a process tree (roots and all their descendants) for CPU and peak memory.

    CPU: sum over live processes of utime+stime+cutime+cstime (Linux adds a reaped
    child's totals to its parent's cutime/cstime, so exited workers still count),
    as a difference between `mark()` and `finish()`.
    Memory: for every PID ever seen, its last VmHWM; reported as the sum (an upper
    bound of the tree's peak, shared pages counted per process) and the largest one.
    """

    def __init__(self, roots, interval=0.5):
        self.roots = list(roots)
        self.interval = interval
        self.pss_peak_kib = 0
        self.hwm = {}
        self.names = {}
        self._stop = threading.Event()
        self._thread = None
        self.cpu_start = None
        self.cpu_end = None

    def pids(self):
        out = []
        for r in self.roots:
            out.append(r)
            out.extend(descendants(r))
        return out

    def cpu_now(self):
        return sum(self.cpu_by_root().values())

    def cpu_by_root(self):
        out = {}
        for r in self.roots:
            total = 0.0
            for pid in [r] + descendants(r):
                try:
                    total += cpu_seconds(pid)
                except OSError:
                    pass
            out[r] = total
        return out

    def sample(self):
        pss = 0
        for pid in self.pids():
            try:
                self.hwm[pid] = max(self.hwm.get(pid, 0), status_kib(pid, "VmHWM"))
                self.names.setdefault(pid, proc_name(pid))
                pss += pss_kib(pid)
            except OSError:
                pass
        self.pss_peak_kib = max(self.pss_peak_kib, pss)

    def _run(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def mark(self):
        self.sample()
        self.root_start = self.cpu_by_root()
        self.cpu_start = sum(self.root_start.values())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def finish(self):
        self.root_end = self.cpu_by_root()
        self.cpu_end = sum(self.root_end.values())
        self.sample()
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        return self.cpu_end - self.cpu_start

    def cpu_split(self):
        """CPU seconds per root (and its descendants) between mark() and finish()."""
        return {r: self.root_end.get(r, 0) - self.root_start.get(r, 0) for r in self.roots}

    def pss_peak_mib(self):
        return self.pss_peak_kib / 1024.0

    def hwm_sum_mib(self):
        return sum(self.hwm.values()) / 1024.0

    def hwm_max_mib(self):
        return max(self.hwm.values() or [0]) / 1024.0

    def by_name(self):
        agg = {}
        for pid, kib in self.hwm.items():
            n = self.names.get(pid, "?")
            c, m = agg.get(n, (0, 0))
            agg[n] = (c + 1, max(m, kib))
        return agg


# ---------------------------------------------------------------- network

def free_port(host="127.0.0.1"):
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_banner(host, port, timeout=30.0):
    """Waits until host:port answers with an SMTP 220 greeting."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.settimeout(2)
                data = s.recv(512)
                if data.startswith(b"220"):
                    try:
                        s.sendall(b"QUIT\r\n")
                    except OSError:
                        pass
                    return
                last = data
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise BenchError("no SMTP greeting from %s:%d within %.0fs (%r)" % (host, port, timeout, last))


# ---------------------------------------------------------------- dependencies and build

def ensure_debian_packages():
    """Installs the peers from Debian's packages when missing (needs root)."""
    need = []
    if not os.path.exists("/usr/sbin/smtp-sink") or not os.path.exists("/usr/sbin/postfix"):
        need.append("postfix")
    if shutil.which("sqlite3") is None:
        need.append("sqlite3")
    if shutil.which("strace") is None:
        need.append("strace")
    if not need:
        return
    say("installing from Debian: %s" % " ".join(need))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.check_call(["apt-get", "update", "-qq"], env=env)
    subprocess.check_call(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + need, env=env,
                          stdout=subprocess.DEVNULL)
    # The system Postfix instance is never used: keep it stopped.
    subprocess.call(["postfix", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def build_hato(scratch=None, skip=False):
    """`swift build -c release`; returns the binary directory."""
    cmd = ["swift", "build", "-c", "release"]
    if scratch:
        cmd += ["--scratch-path", scratch]
    if not skip:
        say("building Hato (release): %s" % " ".join(cmd))
        t = time.time()
        r = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1800)
        if r.returncode != 0:
            sys.stderr.write(r.stdout.decode(errors="replace")[-4000:])
            raise BenchError("swift build -c release failed")
        say("built in %.0fs" % (time.time() - t))
    out = subprocess.run(cmd + ["--show-bin-path"], cwd=REPO, stdout=subprocess.PIPE, check=True, timeout=300)
    bindir = out.stdout.decode().strip()
    for b in ("hato-coordinator", "hato-node"):
        if not os.path.exists(os.path.join(bindir, b)):
            raise BenchError("%s missing in %s" % (b, bindir))
    return bindir


# ---------------------------------------------------------------- smtp-sink

class SmtpSink:
    """Postfix's smtp-sink with a running counter (-c) written to a file we poll."""

    def __init__(self, procs, workdir, host="127.0.0.1", port=None, extra=()):
        self.host = host
        self.port = port or free_port(host)
        self.out = os.path.join(workdir, "smtp-sink.out")
        args = ["/usr/sbin/smtp-sink", "-c"] + list(extra)
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        args += ["%s:%d" % (self.host, self.port), "1024"]
        self.p = procs.spawn(args, os.path.join(workdir, "smtp-sink.err"), stdout_path=self.out)
        self.procs = procs
        wait_banner(self.host, self.port, 10)

    _re = re.compile(rb"mesg=(\d+)")

    def count(self):
        try:
            with open(self.out, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - 128))
                tail = f.read()
        except OSError:
            return 0
        m = self._re.findall(tail)
        return int(m[-1]) if m else 0

    def wait_count(self, n, timeout, poll=0.005):
        """Polls until the sink counted n messages; returns the time it saw the n-th (or None)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.count() >= n:
                return time.time()
            time.sleep(poll)
        return None

    def stop(self):
        self.procs.stop(self.p)


# ---------------------------------------------------------------- Postfix

POSTFIX_MASTER_CF = """\
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance:
    """A private Postfix instance (`postfix -c DIR`) relaying everything to a relayhost.

    Own config, queue and data directories under `workdir`; smtpd on `listen_host:port`;
    outbound connections bound to one address (`smtp_bind_address`); Postfix's
    defaults otherwise (its queue files are fsync'd before smtpd answers 250).
    """

    def __init__(self, procs, workdir, relay_host, relay_port, listen_host="127.0.0.20", bind_address="127.0.0.21",
                 extra_main=""):
        self.procs = procs
        self.dir = os.path.join(workdir, "postfix")
        self.etc = os.path.join(self.dir, "etc")
        self.queue = os.path.join(self.dir, "queue")
        data = os.path.join(self.dir, "data")
        for d in (self.etc, self.queue, data):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.dir, 0o755)
        shutil.chown(data, "postfix")
        self.host = listen_host
        self.port = free_port(listen_host)
        self.maillog = os.path.join(self.dir, "maillog")
        main = """\
compatibility_level = 3.6
config_directory = {etc}
queue_directory = {queue}
data_directory = {data}
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix-bench.test
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [{rh}]:{rp}
smtp_bind_address = {bind}
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file_prefixes = {dir}
maillog_file = {maillog}
{extra}
""".format(etc=self.etc, queue=self.queue, data=data, rh=relay_host, rp=relay_port, bind=bind_address,
           dir=self.dir, maillog=self.maillog, extra=extra_main)
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(main)
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(POSTFIX_MASTER_CF.format(listen="%s:%d" % (listen_host, self.port)))
        # `postfix check` creates the queue's subdirectories with Postfix's ownership.
        r = subprocess.run(["/usr/sbin/postfix", "-c", self.etc, "check"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        r = subprocess.run(["/usr/sbin/postfix", "-c", self.etc, "start"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        pidfile = os.path.join(self.queue, "pid", "master.pid")
        deadline = time.time() + 20
        self.master = None
        while time.time() < deadline:
            try:
                with open(pidfile) as f:
                    self.master = int(f.read().strip())
                break
            except (OSError, ValueError):
                time.sleep(0.05)
        if self.master is None:
            log = open(self.maillog).read()[-2000:] if os.path.exists(self.maillog) else ""
            raise BenchError("Postfix did not start: %s %s" % (r.stdout.decode(errors="replace"), log))
        procs.adopt(self.master, "postfix master")
        wait_banner(self.host, self.port, 20)

    def roots(self):
        return [self.master]

    def stop(self):
        self.procs.stop_pid(self.master, timeout=10, kill_tree=descendants(self.master))


# ---------------------------------------------------------------- Hato

HATO_YML = """\
cluster:
  name: bench
  secret: "bench-secret-not-for-production"
coordinator:
  listen: {coord}
  admin_listen: {admin}
  admin_token: "bench-admin-token"
  data_dir: {dir}/coordinator
  lease_time: 5m
  node_timeout: 10s
  heartbeat_interval: 2s
smtp:
  listen: [{smtp}]
  hostname: hato-bench.test
  relay_networks: [127.0.0.0/8]
  max_message_size: 25MiB
  max_recipients: 1000
{smtp_extra}nodes:
{nodes}
pools:
  - name: bench
ips:
{ips}
routing:
  default_pool: bench
routes:
  - domain: {domain}
    next_hop: "{next_hop}"
dns:
  timeout: 5s
retry:
  schedule: [1m, 5m, 15m, 1h]
  max_age: 5d
delivery:
  connections_per_ip: {cpi}
  connect_timeout: 10s
  command_timeout: 5m
  data_timeout: 10m
{top_extra}"""


class HatoCluster:
    """`hato-coordinator serve` plus `nodes` × `hato-node run`, each node with `ips_per_node` sending IPs.

    Everything on loopback; a route sends `domain` to `next_hop`.
    """

    def __init__(self, procs, bindir, workdir, next_hop, domain="bench.test", nodes=2, ips_per_node=2,
                 connections_per_ip=8, ip_base=30, smtp_host="127.0.0.40", start=True, start_nodes=True,
                 smtp_extra=(), top_extra=""):
        """`smtp_extra` (lines for the smtp: section) and `top_extra` (top-level YAML) are optional
        settings: when this build's config loader does not know one of their keys, they are left
        out and `dropped_settings` says so (the benchmarks then report what the build does)."""
        self.procs = procs
        self.bindir = bindir
        self.dir = os.path.join(workdir, "hato")
        os.makedirs(self.dir, exist_ok=True)
        self.smtp_host = smtp_host
        self.smtp_port = free_port(smtp_host)
        self.node_ids = ["node-%d" % (i + 1) for i in range(nodes)]
        node_lines, ip_lines = [], []
        k = ip_base
        for nid in self.node_ids:
            node_lines.append("  - id: %s\n    data_dir: %s/%s" % (nid, self.dir, nid))
            for _ in range(ips_per_node):
                ip_lines.append("  - { address: 127.0.0.%d, helo: mta%d.hato-bench.test, pool: bench, nodes: [%s] }" % (k, k, nid))
                k += 1
        self.sending_ips = ["127.0.0.%d" % i for i in range(ip_base, k)]
        self.config = os.path.join(self.dir, "cluster.yml")
        self.admin = "127.0.0.1:%d" % free_port()
        self.dropped_settings = []
        coord = "127.0.0.1:%d" % free_port()

        def write(se, te):
            with open(self.config, "w") as f:
                f.write(HATO_YML.format(coord=coord, admin=self.admin, dir=self.dir,
                                        smtp="%s:%d" % (smtp_host, self.smtp_port), nodes="\n".join(node_lines),
                                        ips="\n".join(ip_lines), domain=domain, next_hop=next_hop,
                                        cpi=connections_per_ip, smtp_extra="".join("  %s\n" % l for l in se), top_extra=te))
        write(smtp_extra, top_extra)
        if smtp_extra or top_extra:
            problem = self.config_problem()
            if problem:
                self.dropped_settings = list(smtp_extra) + ([top_extra.strip()] if top_extra else [])
                say("this build does not accept %s (%s); running without" % (self.dropped_settings, problem))
                write((), "")
        problem = self.config_problem()
        if problem:
            raise BenchError("cluster.yml rejected: %s" % problem)
        self.coordinator = None
        self.nodes = []
        if start:
            self.start_coordinator()
            if start_nodes:
                self.start_nodes()

    def config_problem(self):
        """The config loader's complaint about cluster.yml, or None (uses a CLI command with no server running)."""
        r = subprocess.run([os.path.join(self.bindir, "hato-coordinator"), "queue", "--config", self.config],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        err = (r.stdout + r.stderr).decode(errors="replace")
        for line in err.splitlines():
            if "unknown key" in line or "cluster.yml:" in line or "invalid" in line:
                return line.strip()
        return None

    def start_coordinator(self, timeout=30.0):
        self.coordinator = self.procs.spawn([os.path.join(self.bindir, "hato-coordinator"), "serve", "--config", self.config],
                                            os.path.join(self.dir, "coordinator.log"))
        t = time.time()
        wait_banner(self.smtp_host, self.smtp_port, timeout)
        return time.time() - t

    def start_nodes(self, timeout=30.0):
        for nid in self.node_ids:
            self.nodes.append(self.procs.spawn([os.path.join(self.bindir, "hato-node"), "run", "--config", self.config, "--id", nid],
                                               os.path.join(self.dir, nid + ".log")))
        self.wait_nodes_active(len(self.node_ids), timeout)

    def admin_cli(self, *args, timeout=20):
        r = subprocess.run([os.path.join(self.bindir, "hato-coordinator")] + list(args) + ["--config", self.config],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        return r.returncode, r.stdout.decode(errors="replace")

    def wait_nodes_active(self, n, timeout):
        deadline = time.time() + timeout
        out = ""
        while time.time() < deadline:
            try:
                rc, out = self.admin_cli("nodes")
                if rc == 0 and out.count(" active ") >= n:
                    return
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.2)
        raise BenchError("Hato nodes did not become active within %.0fs:\n%s" % (timeout, out))

    def roots(self):
        return [p.pid for p in [self.coordinator] + self.nodes if p is not None]

    def stop(self):
        for p in self.nodes:
            self.procs.stop(p)
        if self.coordinator is not None:
            self.procs.stop(self.coordinator)
        self.nodes = []
        self.coordinator = None


# ---------------------------------------------------------------- the queue store's commits

def sqlite_wal_commits(db_path, tries=20):
    """SQLite's count of write transactions committed to `db_path`'s WAL, or None.

    Read from the wal-index header at the start of `DB-shm` (`WalIndexHdr.iChange`, a u32
    that SQLite's wal.c increments once for every commit that writes frames, and that a WAL
    restart after a checkpoint leaves alone). Transactions that wrote nothing are not counted.
    The header is kept twice (written second copy first); the two copies must agree.
    """
    for _ in range(tries):
        try:
            with open(db_path + "-shm", "rb") as f:
                h = f.read(96)
        except OSError:
            return None
        if len(h) < 96:
            return None
        if h[:48] == h[48:96]:
            version, _unused, change = struct.unpack("<III", h[:12])
            return change if version == 3007000 else None
        time.sleep(0.001)
    return None


# ---------------------------------------------------------------- PostgreSQL

PG_SCRIPT = os.path.join(REPO, "scripts", "pg-test-server.sh")


def postgres_bindir():
    """The newest /usr/lib/postgresql/*/bin with initdb, else initdb's directory on PATH, else None."""
    def version(d):
        return [int(x) if x.isdigit() else 0 for x in d.split("/")[-2].split(".")]
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if os.access(os.path.join(d, "initdb"), os.X_OK):
            return d
    w = shutil.which("initdb")
    return os.path.dirname(w) if w else None


def postgres_unavailable():
    """Why `PostgresServer` cannot start on this machine, or None when it can."""
    d = postgres_bindir()
    if d is None:
        return "no PostgreSQL server binaries (initdb) in /usr/lib/postgresql/*/bin or on PATH (apt-get install postgresql)"
    if not os.access(os.path.join(d, "psql"), os.X_OK) and shutil.which("psql") is None:
        return "no psql (apt-get install postgresql-client)"
    if os.geteuid() == 0:
        user = os.environ.get("HATO_PG_TEST_USER", "postgres")
        try:
            pwd.getpwnam(user)
        except KeyError:
            return "user %r does not exist (PostgreSQL refuses to run as root; set HATO_PG_TEST_USER)" % user
    return None


class PostgresServer:
    """A private PostgreSQL server for one benchmark run (`scripts/pg-test-server.sh start --durable`).

    Durable settings (fsync, synchronous_commit, full_page_writes on): a fair operator keeps
    durability on, and the SQLite store it is compared with fsyncs before every 250. The server
    is stopped by its postmaster's PID (the script's `stop`) through `procs` at exit, on Ctrl-C
    and on errors; a watchdog stops it too should this process die without cleaning up.
    Queries run as the `postgres` superuser over the server's unix socket (trust), so the
    bench never handles the `hato` role's password: Hato reads it from `password_file`.
    """

    ROLE = "hato"

    def __init__(self, procs):
        self.dir = None
        r = subprocess.run(["bash", PG_SCRIPT, "start", "--durable", "--owner", str(os.getpid())],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
        err = r.stderr.decode(errors="replace").strip()
        if r.returncode != 0:
            raise BenchError("could not start a PostgreSQL server: %s" % err[-2000:])
        self.dir = r.stdout.decode().strip().splitlines()[-1]
        procs.add_cleanup(self.stop)
        if err:
            say(err.splitlines()[-1])
        with open(os.path.join(self.dir, "port")) as f:
            self.port = int(f.read().strip())
        with open(os.path.join(self.dir, "data", "postmaster.pid")) as f:
            self.postmaster = int(f.readline().strip())
        self.password_file = os.path.join(self.dir, "password")
        bindir = postgres_bindir()
        self.psql_bin = os.path.join(bindir, "psql") if os.access(os.path.join(bindir, "psql"), os.X_OK) else shutil.which("psql")
        self.version = self.query("SHOW server_version")[0][0]

    def query(self, sql, db="postgres", timeout=120):
        """Rows (lists of text fields) of `sql`, run as the superuser over the unix socket."""
        r = subprocess.run([self.psql_bin, "-h", self.dir, "-p", str(self.port), "-U", "postgres", "-d", db,
                            "-X", "-A", "-t", "-q", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        if r.returncode != 0:
            raise BenchError("psql: %s: %s" % (sql[:80], r.stderr.decode(errors="replace").strip()[-500:]))
        return [line.split("\t") for line in r.stdout.decode().splitlines() if line]

    def settings(self):
        """The server's settings that decide what a commit costs, as `name=value` strings."""
        rows = self.query("SELECT name, current_setting(name) FROM pg_settings WHERE name IN "
                          "('fsync', 'synchronous_commit', 'full_page_writes', 'wal_sync_method', 'shared_buffers',"
                          " 'max_wal_size', 'checkpoint_timeout', 'wal_level') ORDER BY name")
        return ["%s=%s" % (n, v) for n, v in rows]

    def create_database(self, name):
        """A new empty database owned by the `hato` role; returns its URL (no password in it).

        A checkpoint follows, so that each run starts with nothing of earlier runs left to write.
        """
        self.query('CREATE DATABASE "%s" OWNER %s' % (name, self.ROLE))
        self.query("CHECKPOINT")
        return "postgresql://%s@127.0.0.1:%d/%s" % (self.ROLE, self.port, name)

    def drop_database(self, name):
        self.query('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)

    def counters(self, db):
        """The bench database's committed and rolled back transactions (pg_stat_database; read-only
        transactions included), the server's next transaction id (ids are assigned only to
        transactions that write) and its WAL position in bytes.

        pg_stat_database lags: a backend reports its counts at most once a second (an idle one
        within a second). Read it a moment after the activity to count.
        """
        row = self.query("SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = '%s'),"
                         " (SELECT xact_rollback FROM pg_stat_database WHERE datname = '%s'),"
                         " pg_snapshot_xmax(pg_current_snapshot())::text::bigint,"
                         " pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint" % (db, db))[0]
        keys = ("xact_commit", "xact_rollback", "next_xid", "wal_bytes")
        return {k: int(v) if v != "" else None for k, v in zip(keys, row)}

    def pids(self):
        return [self.postmaster] + descendants(self.postmaster)

    def stop(self):
        """Stops the server by its postmaster.pid (fast shutdown) and removes its directory."""
        if self.dir is None:
            return
        d, self.dir = self.dir, None
        r = subprocess.run(["bash", PG_SCRIPT, "stop", d], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        if r.returncode != 0:
            say("stopping the PostgreSQL server in %s failed: %s" % (d, r.stdout.decode(errors="replace").strip()))


def make_workdir(prefix):
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o755)
    return d


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def machine_line():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    load = "?"
    try:
        load = " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        pass
    return "%s; %d cores (%s); %d MiB RAM; kernel %s; load average %s" % (
        time.strftime("%Y-%m-%d %H:%M %Z"), os.cpu_count() or 0, cpu, mem, os.uname().release, load)
