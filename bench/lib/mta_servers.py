"""The SMTP servers the `smtp` and `mem` phases measure: start, readiness, processes, queue, stop.

Each server offers the same small interface:

    key, label, host, port, rcpt     what smtp-source and the idle clients connect to
    start()                          start it fresh; returns when its port answers a 220
                                     banner (bounded); RuntimeError with its stderr if not
    root_pid()                       the pid whose process tree is the server
    remaining()                      messages it still holds in its queue (0: drained)
    drain(timeout) -> (ok, s, left)  bounded wait until remaining() == 0 (untimed work)
    stop()                           stop it and every process it left (only pids it started)
    describe()                       a JSON-able record of how it was run

Servers:

- PostfixSmtpd: a private Postfix (postfix_private.PrivatePostfix under
  bench/.work/postfix-smtp, `postfix -c DIR`) with an smtpd on 127.0.0.1:2625,
  chroot off, transport `discard.test -> discard:` (inline map), mynetworks
  127.0.0.0/8; everything else Debian's defaults (queue files fsynced before
  250, default_process_limit = 100, in_flow_delay = 1s). The system Postfix is
  untouched.
- PysendmailDaemon: `PYSENDMAIL_ROOT=<root> <venv>/bin/sendmail -bD -O
  'DaemonPortOptions=Port=2626,Addr=127.0.0.1,Name=MTA'` in the foreground, with
  <root>/etc/sendmail.cf = the installed shipped cf plus one ParseLocal rule
  routing discard.test to the discard mailer (checked with `sendmail -bt`) and
  RefuseLA/QueueLA lifted (as the baselines did for Sendmail 8.17).
- SmtpSink: Postfix's `smtp-sink -u nobody -m 20000 127.0.0.1:2627 1024`: accepts and
  forgets, the load generator's ceiling, and a stand-in target.

Security stance: needs root (Postfix); binds loopback ports only; signals only
the processes it started (found from their pids, never by name).
"""
import os
import shutil
import signal
import socket
import subprocess
import time

import proctree
from postfix_private import PrivatePostfix
from target import Instance

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
POSTSUPER = "/usr/sbin/postsuper"
HOST = "127.0.0.1"
PORTS = {"postfix": int(os.environ.get("BENCH_POSTFIX_PORT", 2625)),
         "pysendmail": int(os.environ.get("BENCH_PYSENDMAIL_PORT", 2626)),
         "sink": int(os.environ.get("BENCH_SINK_PORT", 2627))}
RCPT = "bench@discard.test"
DISCARD_RULE = "R$* < @ discard.test $* > $*\t$#discard $: $1 < @ discard.test >\tbench: queued, then dropped"
LA_LIFT = "O QueueLA=1000\nO RefuseLA=1000\n"


def port_free(port, host=HOST):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def banner(host, port, timeout=2.0):
    """One connection: the banner's last line (b'220 ...'), or None (refused, closed, slow)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            buf = b""
            while b"\n" not in buf[-200:] or buf.splitlines()[-1][3:4] == b"-":
                chunk = s.recv(4096)
                if not chunk or len(buf) > 8192:
                    break
                buf += chunk
            try:
                s.sendall(b"QUIT\r\n")
            except OSError:
                pass
            lines = buf.splitlines()
            return lines[-1] if lines else None
    except OSError:
        return None


def listening(port, host=HOST):
    """True when a socket is in LISTEN on host:port (from /proc/net/tcp: no connection made)."""
    want = "%s:%04X" % ("".join("%02X" % int(b) for b in reversed(host.split("."))), port)
    try:
        with open("/proc/net/tcp") as f:
            return any(ln.split()[1] == want and ln.split()[3] == "0A" for ln in list(f)[1:])
    except OSError:
        return False


def wait_ready(host, port, timeout, alive=lambda: True, probe="banner"):
    """probe "banner": wait_banner(); "listen": bounded wait for the LISTEN socket only (the
    mem phase: an idle figure with no session served yet). The line/"listening", or None."""
    if probe == "banner":
        return wait_banner(host, port, timeout, alive)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        if listening(port, host):
            return "listening"
        time.sleep(0.05)
    return None


def wait_banner(host, port, timeout, alive=lambda: True):
    """Bounded wait until host:port answers a 220 banner; returns the line or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        line = banner(host, port)
        if line and line.startswith(b"220"):
            return line.decode(errors="replace")
        time.sleep(0.1)
    return None


def _stop_popen(proc, timeout=15.0):
    """SIGTERM, then SIGKILL, a process this module started; then any of its descendants
    still there (found before the signal: they are ours too)."""
    if proc is None:
        return
    left = proctree.tree(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for pid in left:
        if pid != proc.pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class _Server:
    key = label = "?"
    rcpt = RCPT
    host = HOST

    def drain(self, timeout=60.0, poll=0.05):
        t0 = time.monotonic()
        left = self.remaining()
        while left and time.monotonic() - t0 < timeout:
            time.sleep(poll)
            left = self.remaining()
        return left == 0, time.monotonic() - t0, left

    def remaining(self):
        return 0

    def target(self):
        return f"{self.host}:{self.port}"


class SmtpSink(_Server):
    key, label = "sink", "smtp-sink (accepts and forgets: the client's ceiling)"

    def __init__(self, port=None, log_path=os.devnull):
        self.port = port or PORTS["sink"]
        self.proc = None
        self.log_path = log_path
        self.argv = [SMTP_SINK, "-u", "nobody", "-m", "20000", f"{self.host}:{self.port}", "1024"]

    def start(self, probe="banner"):
        if not port_free(self.port):
            raise RuntimeError(f"port {self.port} is in use")
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err)
        if not wait_ready(self.host, self.port, 10, lambda: self.proc.poll() is None, probe):
            self.stop()
            raise RuntimeError(f"smtp-sink did not answer on port {self.port}")

    def root_pid(self):
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def stop(self):
        _stop_popen(self.proc)
        self.proc = None

    def describe(self):
        return {"key": self.key, "label": self.label, "argv": self.argv, "target": self.target()}


class PostfixSmtpd(_Server):
    key, label = "postfix", "Postfix smtpd (queue + fsync, then discard:)"
    QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

    def __init__(self, workdir, port=None):
        self.port = port or PORTS["postfix"]
        self.pf = PrivatePostfix(
            workdir, disable_pickup=False,
            extra_main=("# the smtp/mem phases: an smtpd on loopback, discard.test dropped after queueing\n"
                        "transport_maps = inline:{ discard.test=discard: }\n"
                        "mynetworks = 127.0.0.0/8\n"
                        "smtpd_relay_restrictions = permit_mynetworks, reject\n"),
            extra_master=f"{self.host}:{self.port} inet n - n - - smtpd\n")

    def start(self, probe="banner"):
        if self.pf.master_pid():
            self.pf.stop()
        if not port_free(self.port):
            raise RuntimeError(f"port {self.port} is in use")
        self.pf.start()
        # leftovers of an interrupted run must not be drained inside a timed run
        subprocess.run([POSTSUPER, "-c", self.pf.etc, "-d", "ALL"], capture_output=True, timeout=60)
        if not wait_ready(self.host, self.port, 20, lambda: self.pf.master_pid() is not None, probe):
            self.pf.stop()
            raise RuntimeError(f"private postfix smtpd did not answer on port {self.port}")

    def root_pid(self):
        return self.pf.master_pid()

    def remaining(self):
        n = 0
        for q in self.QUEUES:
            for _, _, files in os.walk(os.path.join(self.pf.queue, q)):
                n += len(files)
        return n

    def stop(self):
        self.pf.stop()

    def describe(self):
        return {"key": self.key, "label": self.label, "target": self.target(),
                "version": self.pf.known_version(), "config": self.pf.etc,
                "main_cf_extra": self.pf.extra_main, "master_cf_extra": self.pf.extra_master}


class PysendmailDaemon(_Server):
    key, label = "pysendmail", "pysendmail daemon (sendmail -bD)"

    def __init__(self, venv, root, port=None, log_path=os.devnull, extra_args=()):
        self.venv = venv
        self.port = port or PORTS["pysendmail"]
        self.inst = Instance(venv, root)
        self.root = self.inst.root
        self.cf = os.path.join(self.root, "etc", "sendmail.cf")
        self.log_path = log_path
        self.argv = [venv.sendmail, "-bD", "-O", f"DaemonPortOptions=Port={self.port},Addr={self.host},Name=MTA",
                     *extra_args]
        self.proc = None
        self.cf_check = None
        self.log_summaries = []
        self.kicks = []

    # -- the instance's configuration -------------------------------------------------------
    def shipped_cf(self):
        r = subprocess.run([self.venv.python, "-c", "import pysendmail.layout as l; print(l.DEFAULT_CF)"],
                           capture_output=True, text=True, timeout=30, cwd="/")
        path = r.stdout.strip()
        if r.returncode or not os.path.exists(path):
            raise RuntimeError("cannot find the installed shipped sendmail.cf: " + (r.stderr.strip()[-300:]))
        return path

    def write_cf(self):
        """<root>/etc/sendmail.cf: the shipped cf, the discard rule at the top of ParseLocal,
        the load-average limits lifted. Checked with `sendmail -bt`: 3,0 bench@discard.test
        must resolve to the discard mailer."""
        src = self.shipped_cf()
        out, added = [], False
        with open(src) as f:
            for line in f:
                out.append(line)
                if not added and line.split("=")[0].strip() == "SParseLocal":
                    out.append(DISCARD_RULE + "\n")
                    added = True
        if not added:
            raise RuntimeError(f"no SParseLocal ruleset in {src}: cannot add the discard.test rule")
        out.append("\n# bench: no load-average throttling (as the baselines ran Sendmail 8.17)\n" + LA_LIFT)
        # like for like with Postfix, which checks no SPF/DKIM/DMARC by itself: phase
        # authcheck measures the checks (its own O AuthChecks line comes later and wins)
        out.append("O AuthChecks=none\n")
        os.makedirs(os.path.dirname(self.cf), exist_ok=True)
        with open(self.cf, "w") as f:
            f.writelines(out)
        r = subprocess.run([self.venv.sendmail, "-bt", "-C", self.cf], input=f"3,0 {self.rcpt}\n",
                           capture_output=True, text=True, timeout=60, env=self.inst.env, cwd="/")
        result = [ln for ln in r.stdout.splitlines() if "returns:" in ln and ln.lstrip().startswith("parse")]
        self.cf_check = {"input": f"3,0 {self.rcpt}", "parse_returns": result[-1].split("returns:")[1].strip()
                         if result else None, "exit": r.returncode, "stderr": r.stderr[-500:]}
        if not result or "$# discard" not in result[-1]:
            raise RuntimeError(f"`sendmail -bt -C {self.cf}`: 3,0 {self.rcpt} does not give $# discard: "
                               f"{r.stdout[-600:]} {r.stderr[-300:]}")
        return self.cf_check

    # -- process ----------------------------------------------------------------------------
    def start(self, probe="banner", timeout=30.0):
        if not os.path.exists(self.venv.sendmail):
            raise RuntimeError(f"{self.venv.sendmail} is missing (pysendmail not installed in the venv)")
        if self.cf_check is None:
            self.write_cf()
        if not port_free(self.port):
            raise RuntimeError(f"port {self.port} is in use")
        self.inst.clean()
        with open(self.log_path, "ab") as err:
            err.write(f"--- {time.strftime('%H:%M:%S')} start {' '.join(self.argv)}\n".encode())
            err.flush()
            self.proc = subprocess.Popen(self.argv, env=self.inst.env, cwd="/", stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err)
        line = wait_ready(self.host, self.port, timeout, lambda: self.proc.poll() is None, probe)
        if not line:
            code = self.proc.poll()
            self.stop()
            tail = open(self.log_path, errors="replace").read()[-1200:] if os.path.exists(self.log_path) else ""
            what = "answer a 220 banner" if probe == "banner" else "listen"
            raise RuntimeError(f"the pysendmail daemon did not {what} on port {self.port} "
                               f"within {timeout:.0f} s ({'exit ' + str(code) if code is not None else 'still running'})"
                               f": {tail.strip()}")
        self.banner = line
        return line

    def root_pid(self):
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def pid_file_pid(self):
        """The pid in <root>/run/sendmail.pid (layout.run_dir), or None."""
        path = os.path.join(self.root, "run", "sendmail.pid")
        try:
            return int(open(path).read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def remaining(self):
        return self.inst.queued() + len(self.inst._files(self.inst.maildrop))

    def drain(self, timeout=30.0, poll=0.05, stall=5.0):
        """As _Server.drain, but when the count has not moved for `stall` seconds (messages
        the daemon left in its queue until the next queue interval), start one queue run
        (`sendmail -q`, the administrator's command) and keep waiting; each kick is
        recorded (time, messages left, their queue files) for the report."""
        t0 = time.monotonic()
        left = last = self.remaining()
        moved, kicked = t0, False
        while left and time.monotonic() - t0 < timeout:
            time.sleep(poll)
            left = self.remaining()
            now = time.monotonic()
            if left != last:
                last, moved = left, now
            elif not kicked and now - moved > stall:
                kicked = True
                stuck = sorted(self.inst._files(self.inst.queue, ("qf", "hf", "tf", "Qf")))[:5]
                r = subprocess.run([self.venv.sendmail, "-q"], env=self.inst.env, cwd="/", capture_output=True,
                                   text=True, timeout=120)
                self.kicks.append({"at": time.strftime("%H:%M:%S"), "left": left, "files": stuck,
                                   "exit": r.returncode, "stderr": r.stderr[-300:]})
                left = self.remaining()
        return left == 0, time.monotonic() - t0, left

    def stop(self):
        _stop_popen(self.proc)
        if self.proc is not None:
            self.log_summaries.append(self.maillog_summary())
        self.proc = None

    def maillog_summary(self, keep=40):
        """What the instance's maillog says about this start: messages received (from=
        lines), recipients discarded, and the first `keep` other lines (warnings, errors,
        deferrals); the full list of other lines is appended to the daemon's stderr log."""
        received = discarded = 0
        other = []
        try:
            with open(self.inst.log_file, errors="replace") as f:
                for line in f:
                    if ": from=<" in line:
                        received += 1
                    elif line.rstrip().endswith("... discarded"):
                        discarded += 1
                    else:
                        other.append(line.rstrip())
        except OSError as e:
            other.append(f"(maillog not readable: {e})")
        if other and self.log_path != os.devnull:
            with open(self.log_path, "a") as f:
                f.write("--- maillog lines other than from=/discarded:\n" + "\n".join(other) + "\n")
        return {"received": received, "discarded": discarded, "other_lines": len(other), "other": other[:keep]}

    def describe(self):
        return {"key": self.key, "label": self.label, "target": self.target(), "argv": self.argv,
                "maillog": self.log_summaries, "queue_run_kicks": self.kicks,
                "env": {"PYSENDMAIL_ROOT": self.root}, "cf": self.cf, "cf_rule": DISCARD_RULE,
                "cf_options_added": LA_LIFT.split("\n")[:2], "cf_check": self.cf_check,
                "pysendmail": self.venv.pysendmail_version()}
