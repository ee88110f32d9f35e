"""The daemon's process and connection rules: limits shared by all workers, several
listeners, SIGHUP reloads, and the privilege drop."""
import os
import pwd
import signal
import smtplib
import socket
import time

from conftest import IS_ROOT, root_only
from smtpd_helpers import SMTPDaemon, free_port, queued, wait_for


def _greeting(port, source="127.0.0.1"):
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(source, 0)) as c:
        return c.makefile("rb").readline()


def test_client_conn_limits_sessions_per_client(daemon):
    d = daemon(["-O", "ClientConn=2", "-O", "DaemonWorkers=2"])
    held = [socket.create_connection(("127.0.0.1", d.port), timeout=10) for _ in range(2)]
    try:
        for c in held:
            assert c.makefile("rb").readline().startswith(b"220")
        line = _greeting(d.port)
        assert line.startswith(b"421 4.3.2") and b"Too many open connections." in line
        assert _greeting(d.port, "127.0.0.5").startswith(b"220")   # another client is fine
    finally:
        for c in held:
            c.close()
    assert wait_for(lambda: _greeting(d.port).startswith(b"220"), 5)


def test_client_rate_limits_connections_per_window(daemon):
    d = daemon(["-O", "ClientRate=3", "-O", "ConnectionRateWindowSize=60s"])
    got = [_greeting(d.port, "127.0.0.6") for _ in range(4)]
    assert all(g.startswith(b"220") for g in got[:3]), got
    assert got[3].startswith(b"421 4.3.2") and b"Connection rate limit exceeded." in got[3]
    assert "Connection rate limit exceeded." in d.log_text()


def test_max_daemon_children_limits_sessions_overall(daemon):
    d = daemon(["-O", "MaxDaemonChildren=2", "-O", "DaemonWorkers=2"])
    held = [socket.create_connection(("127.0.0.1", d.port), timeout=10,
                                     source_address=("127.0.0.%d" % (10 + i), 0))
            for i in range(2)]
    try:
        for c in held:
            assert c.makefile("rb").readline().startswith(b"220")
        line = _greeting(d.port, "127.0.0.20")
        assert line.startswith(b"421 4.3.2") and b"Too many concurrent" in line
    finally:
        for c in held:
            c.close()


def test_connection_rate_throttle_delays_greetings(daemon):
    d = daemon(["-O", "ConnectionRateThrottle=2"])
    time.sleep(1.0 - time.time() % 1.0 + 0.05)          # at the start of a second
    t0 = time.monotonic()
    got = [_greeting(d.port) for _ in range(3)]
    assert all(g.startswith(b"220") for g in got)          # delayed, not refused
    assert time.monotonic() - t0 >= 0.8


def test_two_listeners_mta_and_msa(sm_root, with_two_ports=None):
    mta, msa = free_port(), free_port()
    d = SMTPDaemon(sm_root, ["-odq", "-O", "DaemonPortOptions=Port=%d,Addr=127.0.0.1,Name=MSA,"
                             "M=Ea" % msa], port=mta)
    try:
        assert wait_for(lambda: _greeting(msa).startswith(b"220"), 10)
        with smtplib.SMTP("127.0.0.1", mta) as s:
            s.sendmail("a@example.org", ["root@localhost"], b"Subject: mta\r\n\r\nx\r\n")
        with smtplib.SMTP("127.0.0.1", msa) as s:
            s.ehlo()
            assert s.mail("a@example.org")[0] == 530       # M=a: AUTH first (none set up)
        assert len(queued(sm_root)) == 1
        assert "on MTA 127.0.0.1:%d, MSA 127.0.0.1:%d" % (mta, msa) in d.log_text()
    finally:
        d.stop()


def _own_cf(sm_root, extra=""):
    """The instance's own copy of the shipped cf (the daemon reads it at SIGHUP)."""
    from pysendmail import layout as L
    shipped = os.path.join(os.path.dirname(L.__file__), "data", "sendmail.cf")
    etc = os.path.join(sm_root.path, "etc")
    os.makedirs(etc, exist_ok=True)
    with open(shipped) as f:
        text = f.read()
    path = os.path.join(etc, "sendmail.cf")
    with open(path, "w") as f:
        f.write(text + extra)
    return path


def test_sighup_with_a_broken_cf_keeps_serving(daemon, sm_root):
    path = _own_cf(sm_root)
    d = daemon()
    with open(path, "w") as f:
        f.write("V10/Berkeley\nR$+ $: $1\nOServerCertFile=/nonexistent/cert.pem\n")
    d.signal(signal.SIGHUP)
    assert wait_for(lambda: "configuration not reloaded" in d.log_text(), 15), d.log_text()
    with smtplib.SMTP("127.0.0.1", d.port) as s:
        s.sendmail("a@example.org", ["root@localhost"], b"Subject: still\r\n\r\nx\r\n")
    assert len(queued(sm_root)) == 1


def test_sighup_with_a_good_cf_starts_new_workers(daemon, sm_root):
    _own_cf(sm_root)
    d = daemon()
    assert wait_for(lambda: len(d.children()) == 1, 10)
    old = d.children()
    _own_cf(sm_root, "\nO SmtpGreetingMessage=$j Reloaded test greeting\n")
    d.signal(signal.SIGHUP)
    assert wait_for(lambda: b"Reloaded test greeting" in _greeting(d.port), 15)
    assert wait_for(lambda: not set(old) & set(d.children()), 15)


@root_only
def test_workers_drop_to_run_as_user(sm_bin, workdir):
    """As root: the worker runs as RunAsUser, and the queue is that user's."""
    from conftest import Instance
    inst = Instance(sm_bin, workdir)
    nobody = pwd.getpwnam("nobody")
    d = SMTPDaemon(inst, ["-odq", "-O", "RunAsUser=nobody"])
    try:
        assert wait_for(lambda: len(d.children()) == 1, 10)
        with open("/proc/%d/status" % d.children()[0]) as f:
            uids = [line.split()[1:] for line in f if line.startswith("Uid:")][0]
        assert set(uids) == {str(nobody.pw_uid)}
        with open("/proc/%d/status" % d.pid) as f:
            assert [line.split()[1] for line in f if line.startswith("Uid:")] == ["0"]
        with smtplib.SMTP("127.0.0.1", d.port) as s:
            s.sendmail("a@example.org", ["root@localhost"], b"Subject: drop\r\n\r\nx\r\n")
        q = os.path.join(inst.path, "spool", "queue")
        assert os.stat(q).st_uid == nobody.pw_uid
        qids = queued(inst)
        assert len(qids) == 1
        assert os.stat(os.path.join(q, "qf" + qids[0])).st_uid == nobody.pw_uid
    finally:
        d.stop()
    assert IS_ROOT


def test_an_ipv6_listener_on_loopback(sm_root):
    probe = socket.socket(socket.AF_INET6)
    probe.bind(("::1", 0))
    port6 = probe.getsockname()[1]
    probe.close()
    d = SMTPDaemon(sm_root, ["-odq", "-O", "DaemonPortOptions=Port=%d,Addr=::1,Family=inet6,"
                             "Name=MTA6" % port6])
    try:
        assert wait_for(lambda: "MTA6 ::1:%d" % port6 in d.log_text(), 10), d.log_text()
        with smtplib.SMTP("::1", port6) as s:
            code, text = s.ehlo("v6.example")
            assert code == 250 and b"[::1]" in text.split(b"\n")[0]
            s.sendmail("a@example.org", ["root@localhost"], b"Subject: v6\r\n\r\nx\r\n")
        qids = queued(sm_root)
        assert len(qids) == 1
        with open(os.path.join(sm_root.path, "spool", "queue", "qf" + qids[0]), "rb") as f:
            qf = f.read()
        assert b"[IPv6:::1])" in qf                  # Sendmail's way of writing it
    finally:
        d.stop()
