"""The long-running service: `sendmail -bD -q1m` in the foreground on a private instance.

Started as a subprocess of the test (every wait bounded): it writes its pid file and binds
the pickup socket; a message queued with -odq waits until the socket is poked (an AF_UNIX
datagram to <root>/spool/public/pickup), then is delivered within 3 s; SIGHUP with a -C
file that was broken meanwhile keeps the daemon running (and working) and logs the
refusal; SIGTERM ends it with status 0 and removes the pid file and the socket.
Log lines go to <root>/state/log/maillog: where a syslog socket exists, the daemon runs
in a private mount namespace with /dev/log hidden, so it falls back to that file.
"""
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import IS_ROOT
from smtpd_helpers import free_port, no_syslog, wait_for

MSG = b"Subject: daemon test\n\nhello from the queue\n"


class Daemon:
    def __init__(self, inst, extra=()):
        self.inst = inst
        self.pid_file = os.path.join(inst.path, "run", "sendmail.pid")
        self.socket = os.path.join(inst.path, "spool", "public", "pickup")
        self.log = os.path.join(inst.path, "state", "log", "maillog")
        # The SMTP listener on a free loopback port (the default 127.0.0.1:2525 may be taken).
        self.smtp_port = free_port()
        argv = no_syslog([inst.command(), "-bD", "-q1m", "-O",
                           "DaemonPortOptions=Port=%d,Addr=127.0.0.1" % self.smtp_port]
                          + list(extra))
        self.proc = subprocess.Popen(argv, env=inst.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ok = wait_for(lambda: os.path.exists(self.pid_file) and os.path.exists(self.socket)
                      or self.proc.poll() is not None, 10)
        if not ok or self.proc.poll() is not None:
            out, err = self.stop()
            pytest.fail("daemon did not start: status %r\n%r\n%r" % (self.proc.returncode, out, err))

    def poke(self):
        """One datagram to the pickup socket (through /proc/self/fd when its path is too
        long for sockaddr_un)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        dfd = None
        try:
            target = self.socket
            if len(target) > 100:
                dfd = os.open(os.path.dirname(target), os.O_PATH)
                target = "/proc/self/fd/%d/%s" % (dfd, os.path.basename(target))
            s.sendto(b"W", target)
        finally:
            s.close()
            if dfd is not None:
                os.close(dfd)

    def log_text(self):
        if not os.path.exists(self.log):
            return ""
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        out, err = self.proc.stdout.read(), self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return out, err


@pytest.fixture
def short_dir():
    """A 0755 directory with a short path under /tmp (reachable by nobody; the pickup
    socket path must fit in sockaddr_un's 108 bytes, see test_daemon_under_a_long_root)."""
    import tempfile
    path = tempfile.mkdtemp(prefix="psm", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon_factory(sm_root):
    started = []

    def start(extra=()):
        d = Daemon(sm_root, extra)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def _queued(inst):
    q = os.path.join(inst.path, "spool", "queue")
    return sorted(n for n in os.listdir(q) if n.startswith("qf")) if os.path.isdir(q) else []


def test_pid_file_and_socket(daemon_factory, sm_root):
    d = daemon_factory()
    with open(d.pid_file) as f:
        assert f.read() == "%d\n" % d.proc.pid
    import stat
    st = os.stat(d.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o666
    assert "starting daemon" in d.log_text()


def test_poke_delivers_a_queued_message_within_3_seconds(daemon_factory, sm_root):
    d = daemon_factory()
    time.sleep(0.5)                                  # let the start-up queue run finish
    sm_root.run(["-odq", "root"], input=MSG, check=True)
    assert len(_queued(sm_root)) == 1
    time.sleep(1.0)
    assert len(_queued(sm_root)) == 1, "delivered without a poke: the -q1m run came early"
    assert sm_root.messages("root") == []
    t0 = time.monotonic()
    d.poke()
    assert wait_for(lambda: len(sm_root.messages("root")) == 1, 3), "not delivered within 3 s"
    assert time.monotonic() - t0 < 3
    assert wait_for(lambda: _queued(sm_root) == [], 3)
    msg = sm_root.messages("root")[0]
    assert msg["Subject"] == "daemon test"
    assert msg.get_payload() == "hello from the queue\n"
    assert d.proc.poll() is None


def test_sigterm_removes_pid_file_and_socket(daemon_factory, sm_root):
    d = daemon_factory()
    time.sleep(0.5)                                  # idle, waiting in its loop
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    d.proc.wait(10)
    took = time.monotonic() - t0
    assert d.proc.returncode == 0
    # An idle daemon has no message to finish: it must stop at once, not at its next
    # wake-up (select() is restarted after a signal handler returns, PEP 475).
    assert took < 2, "SIGTERM took %.1f s to stop an idle daemon" % took
    assert not os.path.exists(d.pid_file)
    assert not os.path.exists(d.socket)
    assert "stopping daemon" in d.log_text()


@pytest.mark.parametrize("breakage", ["directory", "missing"])
def test_sighup_with_a_broken_cf_keeps_running(daemon_factory, sm_root, tmp_path, breakage):
    from pysendmail.layout import DEFAULT_CF
    cf = str(tmp_path / "test.cf")
    shutil.copyfile(DEFAULT_CF, cf)
    d = daemon_factory(["-C", cf])
    os.unlink(cf)
    if breakage == "directory":
        os.mkdir(cf)
    before = d.log_text()
    d.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "not reloaded" in d.log_text()[len(before):], 7), d.log_text()
    time.sleep(0.3)
    assert d.proc.poll() is None, "daemon died on SIGHUP with a broken cf"
    assert os.path.exists(d.pid_file)
    # and it still works with the old configuration
    sm_root.run(["-odq", "-C", DEFAULT_CF, "root"], input=MSG, check=True)
    d.poke()
    assert wait_for(lambda: len(sm_root.messages("root")) == 1, 3)


def test_sighup_with_a_good_cf_reloads(daemon_factory, sm_root, tmp_path):
    from pysendmail.layout import DEFAULT_CF
    cf = str(tmp_path / "test.cf")
    shutil.copyfile(DEFAULT_CF, cf)
    d = daemon_factory(["-C", cf])
    before = d.log_text()
    d.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "restarting" in d.log_text()[len(before):], 7), d.log_text()
    assert d.proc.poll() is None


@pytest.mark.root
def test_maildrop_submission_wakes_the_daemon(sm_bin, short_dir, require_program):
    """A non-root submission into the maildrop pokes the socket itself: the daemon (root)
    picks it up and delivers it within 3 s, long before its -q1m interval."""
    if not IS_ROOT:
        pytest.skip("needs root")
    require_program("setpriv")
    from conftest import Instance
    base = os.path.join(short_dir, "inst")
    inst = Instance(sm_bin, base)
    for d in ("spool/maildrop", "spool/queue"):
        os.makedirs(os.path.join(base, d))
    os.chmod(base, 0o755)
    os.chmod(os.path.join(base, "spool"), 0o755)
    os.chmod(os.path.join(base, "spool", "maildrop"), 0o1733)
    os.chmod(os.path.join(base, "spool", "queue"), 0o700)
    d = Daemon(inst)
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        p = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            "env", "PYSENDMAIL_ROOT=" + base, inst.command(), "-i", "root"],
                           input=MSG, capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert wait_for(lambda: len(inst.messages("root")) == 1, 3), "not delivered within 3 s"
        assert time.monotonic() - t0 < 4
        msg = inst.messages("root")[0]
        assert msg["Subject"] == "daemon test"
        assert msg.get_from().split()[0] == "nobody"
        assert os.listdir(os.path.join(base, "spool", "maildrop")) == []
    finally:
        d.stop()


def test_daemon_under_a_long_root(sm_bin, tmp_path):
    """An instance whose path is long (pytest's tmp dirs, deep home directories) must still
    get its daemon: the pickup socket path may exceed sockaddr_un's 108 bytes."""
    from conftest import Instance
    base = tmp_path / ("x" * 60) / ("y" * 60)
    base.mkdir(parents=True)
    inst = Instance(sm_bin, base)
    assert len(os.path.join(inst.path, "spool", "public", "pickup")) > 108
    d = Daemon(inst)
    try:
        inst.run(["-odq", "root"], input=MSG, check=True)
        d.poke()
        assert wait_for(lambda: len(inst.messages("root")) == 1, 3)
    finally:
        d.stop()


# ---- the submit socket (cli.relay -> daemon.submitd) ----------------------------------------

def _from_pids(text):
    """The pids of the processes that logged a from= line."""
    import re
    return {int(m.group(1)) for m in re.finditer(r"sendmail\[(\d+)\]: \w+: from=", text)}


def test_submissions_go_through_the_service_socket(daemon_factory, sm_root):
    """With the service running for the caller's own instance, `sendmail` hands the message
    to it over <root>/spool/public/submit (0600): the service logs the from= line, and the
    command's exit status and messages are the service's answer."""
    d = daemon_factory()
    sub = os.path.join(sm_root.path, "spool", "public", "submit")
    st = os.stat(sub)
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.geteuid()
    sm_root.run(["-odq", "root"], input=MSG, check=True)
    assert len(_queued(sm_root)) == 1
    assert wait_for(lambda: d.proc.pid in _from_pids(d.log_text()), 3), d.log_text()
    # -odi: delivered before the answer comes back
    proc = sm_root.run(["-odi", "root"], input=b"Subject: odi via service\n\nbody\n", check=True)
    assert [m["Subject"] for m in sm_root.messages("root")] == ["odi via service"]
    # an error is told and the status passed through, as without the service
    home = os.path.join(sm_root.path, "home")
    os.makedirs(home, exist_ok=True)
    env = dict(sm_root.env, HOME=home)
    proc = subprocess.run([sm_root.command(), "-odq", "nosuchuser"], input=MSG, env=env,
                          capture_output=True, timeout=30)
    assert proc.returncode == 67
    assert proc.stdout.decode().splitlines() == [
        "nosuchuser... User unknown",
        "%s/dead.letter... Saved message in %s/dead.letter" % (home, home)]
    assert os.path.exists(os.path.join(home, "dead.letter"))


def test_a_stale_submit_socket_falls_back_to_direct_submission(sm_root):
    """A socket left by a dead service refuses connections: the command submits directly."""
    sub = os.path.join(sm_root.path, "spool", "public", "submit")
    os.makedirs(os.path.dirname(sub), exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sub)
    s.close()                       # bound, never listening: connect() is refused
    os.chmod(sub, 0o600)
    sm_root.run(["-odq", "root"], input=MSG, check=True)
    assert len(_queued(sm_root)) == 1


def test_a_large_message_through_the_service_is_kept_whole(daemon_factory, sm_root):
    """10 MB through the socket: queued byte for byte, the service's memory stays flat."""
    d = daemon_factory()
    body = b"".join(b"line %07d of a large body\n" % i for i in range(400000))
    sm_root.run(["-odq", "root"], input=b"Subject: big\n\n" + body, check=True)
    (qf,) = _queued(sm_root)
    with open(os.path.join(sm_root.path, "spool", "queue", "df" + qf[2:]), "rb") as f:
        assert f.read() == body
    with open("/proc/%d/status" % d.proc.pid) as f:
        rss = [int(l.split()[1]) for l in f if l.startswith("VmHWM:")][0]
    assert rss < 40 * 1024, "service peak RSS %d KiB" % rss


def test_the_service_hands_back_what_is_not_a_plain_submission(daemon_factory, sm_root):
    """The service takes only plain submissions; for anything else (another mode, a usage
    error, no recipients) it says NO before the message is sent, and the command does the
    work itself with the same output as without a service."""
    daemon_factory()
    bad = sm_root.run(["-Z", "root"], input=MSG)
    assert (bad.returncode, bad.stderr) == (64, b"sendmail: illegal option -- Z\n")
    none = sm_root.run(["-odq"], input=MSG)
    assert (none.returncode, none.stdout) == (64, b"Recipient names must be specified\n")
    verify = sm_root.run(["-bv", "root"])
    assert (verify.returncode, verify.stdout) == (0, b"root... deliverable: mailer local, user root\n")
    listing = sm_root.run([], prog="mailq")
    assert listing.returncode == 0 and b"is empty" in listing.stdout
