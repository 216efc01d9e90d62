"""The other MTAs of bench/relay-vs-peers: Exim, OpenSMTPD and Haraka, each a private instance
on loopback relaying everything to one smtp-sink (Python 3 standard library only).

Debian's `exim4-daemon-light` and `opensmtpd` both conflict with `postfix` (each provides
`mail-transport-agent`), and Postfix must stay installed for `smtp-source`/`smtp-sink` and the
Postfix leg. So neither package is installed: `apt-get download` fetches the .deb and
`dpkg-deb -x` unpacks it under PEERS_DIR; only the shared libraries they need (which conflict
with nothing and start nothing) are installed with apt-get, under a policy-rc.d that forbids
starting services. The system accounts the packages' maintainer scripts would create
(`Debian-exim`, `opensmtpd`, `opensmtpq`) are created the same way (`useradd --system`), since
both binaries drop privileges to them. No system daemon is ever started.

Every process is started through benchlib.Procs with a new session; a relay is stopped by its
main PID (SIGTERM, bounded wait) and then every process still left in its session is killed by
PID (Exim's reception and delivery processes can outlive the daemon's exit).
"""
import glob
import os
import re
import shutil
import signal
import subprocess
import time

from benchlib import BenchError, Procs, free_port, say, wait_banner  # noqa: F401

PEERS_DIR = "/var/cache/hato-bench/peers"
OPENSMTPD_SPOOL = "/var/spool/smtpd"            # compiled into Debian's smtpd; no option moves it
OPENSMTPD_CHROOT = "/var/lib/opensmtpd/empty"    # compiled in as well

# What each relay writes as its 250 to DATA (for durability.check's strace analysis).
ACCEPT_REPLY = {
    "exim": re.compile(r'"250 OK id='),
    "opensmtpd": re.compile(r'"250 2\.0\.0 \S+ Message accepted'),
    "haraka": re.compile(r'"250 .*[Qq]ueued'),
}

# Shared libraries of the unpacked binaries (Debian 12 names), installed when ldd misses one.
LIBS = {
    "exim4-daemon-light": ["libidn12", "libgnutls-dane0", "libgnutls30", "libdb5.3", "libpcre2-8-0", "libnsl2", "libcrypt1"],
    "opensmtpd": ["libevent-2.1-7", "libssl3", "zlib1g", "libdb5.3", "libpam0g", "libcrypt1"],
}
USERS = {"exim4-daemon-light": ["Debian-exim"], "opensmtpd": ["opensmtpd", "opensmtpq"]}
BINARIES = {"exim4-daemon-light": "usr/sbin/exim4", "opensmtpd": "usr/sbin/smtpd"}


def _apt_env():
    return dict(os.environ, DEBIAN_FRONTEND="noninteractive")


class _NoServiceStarts:
    """A /usr/sbin/policy-rc.d that exits 101 ("action forbidden") while apt-get runs, unless one exists."""

    PATH = "/usr/sbin/policy-rc.d"

    def __enter__(self):
        self.created = False
        if not os.path.exists(self.PATH):
            with open(self.PATH, "w") as f:
                f.write("#!/bin/sh\n# hato bench: no service starts while it installs packages\nexit 101\n")
            os.chmod(self.PATH, 0o755)
            self.created = True
        return self

    def __exit__(self, *exc):
        if self.created:
            try:
                os.unlink(self.PATH)
            except OSError:
                pass


def _missing_libs(binary):
    r = subprocess.run(["ldd", binary], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    return [line.split()[0] for line in r.stdout.decode(errors="replace").splitlines() if "not found" in line]


def unpacked_binary(package):
    """The path of `package`'s daemon unpacked under PEERS_DIR (fetched and unpacked when missing), or raises BenchError."""
    rel = BINARIES[package]
    found = sorted(glob.glob(os.path.join(PEERS_DIR, package + "_*", rel)))
    if not found:
        os.makedirs(PEERS_DIR, exist_ok=True)
        debs = os.path.join(PEERS_DIR, "debs")
        os.makedirs(debs, exist_ok=True)
        os.chmod(debs, 0o777)   # apt-get download runs as _apt where it can
        say("fetching %s from Debian (apt-get download; not installed: it conflicts with postfix)" % package)
        r = subprocess.run(["apt-get", "download", package], cwd=debs, env=_apt_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=300)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=_apt_env(), timeout=600)
            r = subprocess.run(["apt-get", "download", package], cwd=debs, env=_apt_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=300)
        if r.returncode != 0:
            raise BenchError("apt-get download %s: %s" % (package, r.stdout.decode(errors="replace")[-500:]))
        deb = sorted(glob.glob(os.path.join(debs, package + "_*.deb")))[-1]
        dest = os.path.join(PEERS_DIR, os.path.basename(deb)[:-len(".deb")])
        subprocess.run(["dpkg-deb", "-x", deb, dest], check=True, timeout=120)
        found = [os.path.join(dest, rel)]
    binary = found[-1]
    missing = _missing_libs(binary)
    if missing:
        say("installing the libraries of %s from Debian: %s" % (package, " ".join(LIBS[package])))
        with _NoServiceStarts():
            subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + LIBS[package], env=_apt_env(),
                           stdout=subprocess.DEVNULL, timeout=900)
        missing = _missing_libs(binary)
        if missing:
            raise BenchError("%s still misses %s" % (binary, ", ".join(missing)))
    for user in USERS[package]:
        if subprocess.run(["id", user], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
            say("creating the system account %s (as the %s package would)" % (user, package))
            subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                            "--shell", "/usr/sbin/nologin", "--user-group", user], check=True, timeout=60)
    return binary


def package_version(binary):
    """The Debian version in the unpacked directory's name (exim4-daemon-light_4.96-15+deb12u11_amd64 -> 4.96-15+deb12u11)."""
    for part in binary.split(os.sep):
        if "_" in part and part.split("_")[0] in BINARIES:
            return part.split("_")[1]
    return "?"


# ---------------------------------------------------------------- processes of one session

def session_pids(sid):
    """Every live process whose session id is `sid` (a relay started with start_new_session)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return out


def stop_session(procs, p, timeout=10.0):
    """Stops a relay started as Popen `p` (its own session): SIGTERM to it, bounded wait, then SIGKILL by PID to
    whatever is left of its session (children reparented elsewhere included)."""
    procs.stop(p, timeout=timeout)
    deadline = time.time() + 5
    while time.time() < deadline:
        left = session_pids(p.pid)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


# ---------------------------------------------------------------- CPU of every process, reaped or not

class CgroupCpu:
    """CPU time of a relay's processes from a cgroup v1 `cpuacct` group of its own.

    /proc's cutime/cstime only holds the CPU of children their parent reaped with wait();
    a child that is reaped automatically (SIGCHLD ignored) or reparented to init on its
    parent's exit takes its CPU with it. A cgroup counts every task that ran in it.
    Processes are moved into the group by PID (`adopt`); their children inherit it.
    Unavailable (None from `create`) where no writable cpuacct hierarchy is mounted.
    """

    ROOT = "/sys/fs/cgroup/cpuacct"

    @classmethod
    def create(cls, procs, name):
        if not os.access(os.path.join(cls.ROOT, "cgroup.procs"), os.W_OK):
            return None
        path = os.path.join(cls.ROOT, "hato-bench-%d-%s" % (os.getpid(), name))
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            return None
        g = cls(path)
        procs.add_cleanup(g.remove)
        return g

    def __init__(self, path):
        self.path = path
        self.start = None

    def adopt(self, pids):
        for pid in pids:
            try:
                with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                    f.write(str(pid))
            except OSError:
                pass   # exited meanwhile

    def usage(self):
        with open(os.path.join(self.path, "cpuacct.usage")) as f:
            return int(f.read().strip()) / 1e9

    def mark(self):
        self.start = self.usage()

    def finish(self):
        return self.usage() - self.start

    def remove(self):
        """Moves any task left back to the root group and removes the group; never raises."""
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                left = [line.strip() for line in f if line.strip()]
            for pid in left:
                try:
                    with open(os.path.join(self.ROOT, "cgroup.procs"), "w") as f:
                        f.write(pid)
                except OSError:
                    pass
            os.rmdir(self.path)
        except OSError:
            pass


# ---------------------------------------------------------------- Exim

# Every setting that differs from Exim's built-in default, and why a fair operator would set it.
EXIM_CONF = """\
# Exim {version} (Debian exim4-daemon-light, unpacked), a private instance for bench/relay-vs-peers.
# Only settings that differ from Exim's compiled-in defaults; each says why.

# The unpacked binary (the compiled-in /usr/sbin/exim4 is not installed: the package conflicts with postfix).
exim_path = {binary}
# Private spool, logs and pid file in the run's temporary directory (the compiled-in /var/spool/exim4 is not used).
spool_directory = {dir}/spool
log_file_path = {dir}/log/%slog
pid_file_path = {dir}/exim.pid
# A fixed name: no lookup of the machine's own name.
primary_hostname = exim-bench.test
# Listen on one loopback address and port, like the other relays.
local_interfaces = {host}
daemon_smtp_ports = {port}
# No ident (RFC 1413) call back to every client: nobody runs an ident server, and the other relays make no such call.
rfc1413_hosts =
# Remote SMTP delivery needs no root. Without this, the receiving process re-executes Exim for every
# message's immediate delivery to regain root, and with a private -C configuration that re-exec drops
# root and writes a panic-log line per message. A documented hardening setting; it saves Exim work.
deliver_drop_privilege = true
# The default (20) equals the client's 20 sessions: a new connection arriving before the daemon has
# reaped the process of a session that just ended would get 421. Headroom, not more concurrency.
smtp_accept_max = 100
# Defaults 10 and 1000: after 10 messages on one connection Exim queues the rest without delivering them
# (until the next queue run, 30 min), and it ends a connection after 1000 messages. With `--reuse`
# (smtp-source -d, about 1000 messages per session) both would stall or refuse mail that the other
# relays take; an operator relaying for applications that keep connections open turns both off.
smtp_accept_queue_per_connection = 0
smtp_accept_max_per_connection = 0
# Accept relaying from loopback only (the equivalent of Postfix's mynetworks = 127.0.0.0/8).
acl_smtp_rcpt = acl_check_rcpt
# Left at their defaults: host_lookup unset (no reverse DNS of clients), the spool files fsync'd before
# the 250 (disable_fsync = false), immediate delivery by a process forked per message, remote_max_parallel,
# no split spool directory, message_size_limit 50M.

begin acl

acl_check_rcpt:
  accept hosts = 127.0.0.0/8
  deny   message = relay not permitted

begin routers

# Everything to the sink: a manual route to an IP literal (no DNS).
to_sink:
  driver = manualroute
  route_list = * 127.0.0.1
  transport = to_sink_smtp
  # The sink runs on this host: deliver to it rather than treat it as a routing loop.
  self = send
  no_more

begin transports

to_sink_smtp:
  driver = smtp
  port = {sink_port}
  # One outbound source address, as Postfix's smtp_bind_address.
  interface = {bind}
  # The sink is on a loopback address, which Exim otherwise refuses as "the local host".
  allow_localhost

begin retry

# Exim's usual default rule (never used in a run: the sink accepts everything).
*  *  F,2h,15m; G,16h,1h,1.5; F,4d,6h
"""


class EximInstance:
    """`exim4 -C CONF -bdf -q30m`: a foreground daemon with a private configuration, spool and logs.

    Listens on `host`:port; relays everything to `sink_host:sink_port` from `bind_address`.
    `-q30m`: a queue runner every 30 minutes, Debian's default (QUEUEINTERVAL in /etc/default/exim4);
    it never runs within a benchmark run (everything is delivered immediately).
    """

    def __init__(self, procs, workdir, binary, sink_port, host="127.0.0.22", bind_address="127.0.0.23"):
        self.procs = procs
        self.dir = os.path.join(workdir, "exim")
        self.spool = os.path.join(self.dir, "spool")
        for d in (self.spool, os.path.join(self.dir, "log")):
            os.makedirs(d, exist_ok=True)
            shutil.chown(d, "Debian-exim", "Debian-exim")
        os.chmod(self.dir, 0o755)
        self.host = host
        self.port = free_port(host)
        self.config = os.path.join(self.dir, "exim.conf")
        with open(self.config, "w") as f:
            f.write(EXIM_CONF.format(version=package_version(binary), binary=binary, dir=self.dir, host=host,
                                     port=self.port, sink_port=sink_port, bind=bind_address))
        os.chmod(self.config, 0o644)   # Exim refuses a configuration writable by others
        self.p = procs.spawn([binary, "-C", self.config, "-bdf", "-q30m"], os.path.join(self.dir, "exim.stderr"))
        procs.add_cleanup(self.stop)   # on Ctrl-C or an error too: what is left of its session, by PID
        try:
            wait_banner(host, self.port, 20)
        except BenchError:
            log = ""
            for name in ("exim.stderr", "log/paniclog", "log/mainlog"):
                path = os.path.join(self.dir, name)
                if os.path.exists(path):
                    log += open(path, errors="replace").read()[-1000:]
            self.stop()
            raise BenchError("Exim did not start: %s" % log)

    def roots(self):
        return [self.p.pid]

    def queue_empty(self):
        for _root, _dirs, files in os.walk(os.path.join(self.spool, "input")):
            if files:
                return False
        return True

    def stop(self):
        stop_session(self.procs, self.p)

    def describe(self):
        return self.config


# ---------------------------------------------------------------- OpenSMTPD

OPENSMTPD_CONF = """\
# OpenSMTPD {version} (Debian opensmtpd, unpacked), a private instance for bench/relay-vs-peers.
# `smtpd -d` runs in the foreground and logs to stderr, which the benchmark writes to a file.
# It runs in a private mount namespace where the run's own directories are mounted over the
# compiled-in queue path {spool} and over /etc/resolv.conf (see OpenSmtpdInstance).

# One loopback address and port, like the other relays.
listen on {host} port {port}
# Default 100 messages per session: with `--reuse` (smtp-source -d, about 1000 messages per session)
# the 101st would be refused; an operator relaying for applications that keep connections open raises it.
smtp limit max-mails 100000
# Everything to the sink, an IP literal (no MX lookup), plain SMTP as with the other relays (the sink
# offers no STARTTLS), from one outbound source address (as Postfix's smtp_bind_address).
action "to_sink" relay host smtp://127.0.0.1:{sink_port} src {bind}
# Relay for loopback clients only (the equivalent of Postfix's mynetworks = 127.0.0.0/8).
match from src 127.0.0.0/8 for any action "to_sink"
# Left at their defaults: the scheduler and mta limits, the queue without compression or encryption.
# Not settable: OpenSMTPD has no setting that syncs its queue files before the 250, and it listens with
# a compiled-in backlog of 5 (SMTPD_BACKLOG), so connects beyond it wait for the client's SYN
# retransmission (about 1 s) when 20 sessions connect at once (see bench/README.md).
"""

# Run inside `unshare --mount`: the run's spool over the compiled-in queue path, and a resolv.conf that
# makes OpenSMTPD's own resolver (asr, default "lookup bind file": DNS first) answer from /etc/hosts only.
_OPENSMTPD_NS = 'mount --bind "$1" "$2" && mount --bind "$3" /etc/resolv.conf && exec "$4" -f "$5" -d'

# "lookup file": /etc/hosts only. OpenSMTPD looks up every client's name (PTR) and then that name;
# glibc (Postfix) reads /etc/hosts first and finds 127.0.0.1 there, asr would ask the network's DNS
# server first (5 s timeouts seen on this machine). Every address in the benchmark is 127.0.0.0/8.
_OPENSMTPD_RESOLV = "# bench/relay-vs-peers: no DNS, /etc/hosts only (OpenSMTPD's asr resolver)\nlookup file\n"


def system_opensmtpd_pids():
    """Processes of an OpenSMTPD started from the system's /usr/sbin/smtpd (a system service)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.readlink("/proc/%s/exe" % d) == "/usr/sbin/smtpd":
                    out.append(int(d))
            except OSError:
                pass
    return out


class OpenSmtpdInstance:
    """`smtpd -f CONF -d`: a foreground OpenSMTPD with a private configuration, queue and resolver settings.

    The queue directory (/var/spool/smtpd) is compiled in and no option moves it: smtpd runs in a
    private mount namespace (`unshare --mount --propagation private`) in which the run's own spool
    directory is bind-mounted over /var/spool/smtpd (created empty as a mount point when missing,
    removed again at exit if this created it), and a resolv.conf with "lookup file" over
    /etc/resolv.conf. Nothing of the system's is used or changed, except that a running system
    OpenSMTPD (from /usr/sbin/smtpd) is stopped first by the PIDs of its processes (said on stderr):
    it would hold the control socket /var/run/smtpd.sock. The chroot /var/lib/opensmtpd/empty
    (compiled in) is created when missing, as the package would.
    """

    def __init__(self, procs, workdir, binary, sink_port, host="127.0.0.24", bind_address="127.0.0.25"):
        self.procs = procs
        self.dir = os.path.join(workdir, "opensmtpd")
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        system = system_opensmtpd_pids()
        if system:
            say("stopping the system OpenSMTPD (PIDs %s): it holds /var/run/smtpd.sock" % system)
            for pid in system:
                procs.stop_pid(pid, timeout=10)
        if not os.path.isdir(OPENSMTPD_SPOOL):
            os.makedirs(OPENSMTPD_SPOOL, mode=0o711)
            procs.add_cleanup(lambda: os.rmdir(OPENSMTPD_SPOOL) if not os.listdir(OPENSMTPD_SPOOL) else None)
        os.makedirs(OPENSMTPD_CHROOT, exist_ok=True)
        self.spool = os.path.join(self.dir, "spool")
        os.makedirs(self.spool, mode=0o711)
        os.chmod(self.spool, 0o711)
        resolv = os.path.join(self.dir, "resolv.conf")
        with open(resolv, "w") as f:
            f.write(_OPENSMTPD_RESOLV)
        self.host = host
        self.port = free_port(host)
        self.config = os.path.join(self.dir, "smtpd.conf")
        with open(self.config, "w") as f:
            f.write(OPENSMTPD_CONF.format(version=package_version(binary), spool=OPENSMTPD_SPOOL, host=host, port=self.port,
                                          sink_port=sink_port, bind=bind_address))
        r = subprocess.run([binary, "-f", self.config, "-n"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        if r.returncode != 0:
            raise BenchError("OpenSMTPD rejects its configuration: %s" % r.stdout.decode(errors="replace")[-1000:])
        self.log = os.path.join(self.dir, "smtpd.log")
        # unshare and sh exec into smtpd: the Popen's PID is smtpd's.
        self.p = procs.spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", _OPENSMTPD_NS, "sh",
                              self.spool, OPENSMTPD_SPOOL, resolv, binary, self.config], self.log)
        procs.add_cleanup(self.stop)   # on Ctrl-C or an error too: what is left of its session, by PID
        try:
            wait_banner(host, self.port, 20)
        except BenchError:
            self.stop()
            raise BenchError("OpenSMTPD did not start: %s" % open(self.log, errors="replace").read()[-1000:])

    def roots(self):
        return [self.p.pid]

    def queue_empty(self):
        for d in ("queue", "incoming"):
            for _root, _dirs, files in os.walk(os.path.join(self.spool, d)):
                if files:
                    return False
        return True

    def stop(self):
        stop_session(self.procs, self.p)

    def describe(self):
        return self.config


# ---------------------------------------------------------------- Haraka

def haraka_unavailable():
    """Why Haraka cannot be measured here, or None. Haraka comes from npm (`npm install -g Haraka`):
    used when `haraka` is on PATH; else the registry is asked (bounded) and its answer is the reason."""
    if shutil.which("haraka"):
        return None
    if shutil.which("npm") is None:
        return "no haraka and no npm on this machine (Haraka is installed with `npm install -g Haraka`)"
    try:
        r = subprocess.run(["npm", "view", "Haraka", "version", "--fetch-retries=0", "--fetch-timeout=10000"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=40)
    except subprocess.TimeoutExpired:
        return "the npm registry did not answer within 40 s (`npm install -g Haraka` is needed)"
    out = r.stdout.decode(errors="replace")
    if r.returncode != 0:
        code = re.search(r"npm (?:error|ERR!) code (\S+)", out)
        return "the npm registry is not reachable from this machine (npm view Haraka: %s)" % (
            code.group(1) if code else out.strip().splitlines()[-1] if out.strip() else "exit %d" % r.returncode)
    return "Haraka %s is in the registry but not installed: run `npm install -g Haraka` first" % out.strip()


class HarakaInstance:
    """`haraka -c DIR` (NOT run on the project's machine so far: the npm registry is unreachable there).

    Settings (config/ files written below): listen on one loopback address; the `relay` plugin with an
    ACL for 127.0.0.0/8; `queue/smtp_forward` to the sink with enable_outbound, so relayed mail goes
    through Haraka's outbound queue on disk (outbound mode) and is delivered from there; outbound
    allowed to a loopback next hop (local_mx_ok). Whether Haraka syncs its outbound queue file before
    the 250 is not known here: the strace check will say.
    """

    def __init__(self, procs, workdir, sink_port, host="127.0.0.26", bind_address="127.0.0.27"):
        self.procs = procs
        self.dir = os.path.join(workdir, "haraka")
        self.host = host
        self.port = free_port(host)
        subprocess.run(["haraka", "-i", self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=120, check=True)
        cfg = os.path.join(self.dir, "config")
        files = {
            "smtp.ini": "; one loopback listener; one process (nodes unset), Haraka's default\nlisten=%s:%d\n" % (host, self.port),
            "plugins": "# relay for loopback clients, then forward via the outbound queue\nrelay\nqueue/smtp_forward\n",
            "relay.ini": "[relay]\nacl=true\n",
            "relay_acl_allow": "127.0.0.0/8\n",
            "smtp_forward.ini": "; everything to the sink (IP literal: no DNS), through Haraka's outbound queue\n"
                                "host=127.0.0.1\nport=%d\nenable_outbound=true\n" % sink_port,
            "outbound.ini": "; the next hop is a loopback address; one outbound source address\nlocal_mx_ok=true\n"
                            "local_address=%s\n" % bind_address,
            "me": "haraka-bench.test\n",
        }
        for name, text in files.items():
            with open(os.path.join(cfg, name), "w") as f:
                f.write(text)
        self.p = procs.spawn(["haraka", "-c", self.dir], os.path.join(self.dir, "haraka.log"))
        procs.add_cleanup(self.stop)
        try:
            wait_banner(host, self.port, 30)
        except BenchError:
            self.stop()
            raise

    def roots(self):
        return [self.p.pid]

    def queue_empty(self):
        q = os.path.join(self.dir, "queue")
        return not os.path.isdir(q) or not [f for f in os.listdir(q) if not f.startswith(".")]

    def stop(self):
        stop_session(self.procs, self.p)

    def describe(self):
        return os.path.join(self.dir, "config")
