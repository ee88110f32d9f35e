"""Starting the SMTP daemon (`sendmail -bD`) of a private instance for tests.

    d = SMTPDaemon(inst, extra=["-O", "MaxMessageSize=1000"])   # a free loopback port
    with smtplib.SMTP("127.0.0.1", d.port) as s: ...
    d.stop()

The `daemon` fixture (conftest.py) starts them with -odq on the test's `sm_root` and
stops them afterwards: `d = daemon(["-O", "ClientConn=2"], modifiers="Ea")`.

The daemon logs to the instance's maillog (no syslog socket: see _no_syslog).
"""
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import IS_ROOT


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(pred, timeout, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def no_syslog(argv):
    if not os.path.exists("/dev/log"):
        return argv
    if not IS_ROOT:
        pytest.skip("a syslog socket exists and hiding it needs root")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind /dev/null /dev/log && exec "$0" "$@"'] + argv


def banner_ready(port, addr="127.0.0.1", tls=False):
    try:
        with socket.create_connection((addr, port), timeout=2) as s:
            s.settimeout(2)
            if tls:
                import ssl
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                with ctx.wrap_socket(s, server_hostname="localhost") as t:
                    return t.recv(512).startswith(b"220")
            return s.recv(512).startswith(b"220")
    except OSError:
        return False


def children_of(pid):
    """PIDs whose parent is `pid` (from /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(name))
        except (OSError, IndexError, ValueError):
            continue
    return out


class SMTPDaemon:
    def __init__(self, inst, extra=(), port=None, ports=None, queue_interval="1h",
                 name="MTA", modifiers="", wait_banner=True):
        self.inst = inst
        self.port = port or free_port()
        self.pid_file = os.path.join(inst.path, "run", "sendmail.pid")
        self.log = os.path.join(inst.path, "state", "log", "maillog")
        opts = "Port=%d,Addr=127.0.0.1,Name=%s" % (self.port, name)
        if modifiers:
            opts += ",M=" + modifiers
        argv = no_syslog([inst.command(), "-bD", "-q" + queue_interval,
                          "-O", "DaemonPortOptions=" + opts] + list(extra))
        self.proc = subprocess.Popen(argv, env=inst.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if wait_banner:
            tls = "s" in modifiers
            ok = wait_for(lambda: banner_ready(self.port, tls=tls) or self.proc.poll() is not None,
                          15)
            if not ok or self.proc.poll() is not None:
                out, err = self.stop()
                pytest.fail("daemon did not start: status %r\n%r\n%r\n%s" % (
                    self.proc.returncode, out, err, self.log_text()))

    @property
    def pid(self):
        return self.proc.pid

    def children(self):
        return children_of(self.proc.pid)

    def log_text(self):
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        out, err = self.proc.stdout.read(), self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return out, err


def queued(inst):
    q = os.path.join(inst.path, "spool", "queue")
    return sorted(n[2:] for n in os.listdir(q) if n.startswith("qf")) if os.path.isdir(q) else []


def read_qf(inst, qid):
    with open(os.path.join(inst.path, "spool", "queue", "qf" + qid), "rb") as f:
        return f.read()


def read_df(inst, qid):
    with open(os.path.join(inst.path, "spool", "queue", "df" + qid), "rb") as f:
        return f.read()
