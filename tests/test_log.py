"""Sendmail-format logging: byte-exact lines against real Sendmail's syslog capture,
datagrams to a syslog socket of our own, the file fallback, and fail2ban's filters."""
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from pysendmail.log import Logger, format_delay, from_line, to_line, syslog_time
from pysendmail.model import Envelope

from conftest import require_program

PYTHON = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A copy of Sendmail 8.17's reference log lines (tests carry their own data).
REF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "ref", "09_syslog.txt")


def reference_lines():
    with open(REF, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.startswith("<")]


REF_TIME = time.mktime((2026, 11, 26, 14, 45, 26, 0, 0, -1))   # local "Nov 26 14:45:26"


@pytest.fixture
def receiver(tmp_path):
    path = str(tmp_path / "log.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def env_for(sender, size, msgid, headers=None):
    hdrs = [b"Message-Id: " + msgid.encode()] + (headers or [])
    return Envelope(qid="x", sender=sender, size=size, headers=hdrs)


# (severity method, qid, text builder) -> the reference datagram, byte for byte.
CASES = [
    ("info", "6AQEjQR0019689",
     lambda: from_line(env_for("alice@example.com", 25,
                               "<202611261445.6AQEjQR0019689@mail.example.com>"),
                       1, "<202611261445.6AQEjQR0019689@mail.example.com>", "root@localhost"),
     19689),
    ("info", "6AQEjQR0019689",
     lambda: to_line("bob@example.org", 0, "relay", 30025, "queued"), 19689),
    ("info", "6AQEjQrU019692",
     lambda: to_line("Carol <carol@example.net>", 0, "relay", 120160, "queued"), 19692),
    ("info", "6AQEjQgO019699",
     lambda: from_line(env_for("", 25, "<202611261445.6AQEjQgO019699@mail.example.com>"),
                       1, "<202611261445.6AQEjQgO019699@mail.example.com>", "root@localhost"),
     19699),
    ("info", "6AQEjQAp019770",
     lambda: to_line("bad<addr", 0, "local", 0, "User unknown", dsn="5.1.1",
                     reply="550 5.1.1 User unknown"), 19770),
    ("info", "6AQEjRjI019825",
     lambda: from_line(env_for("root", 209, "<202611261445.6AQEjRjI019825@mail.example.com>"),
                       1, "<202611261445.6AQEjRjI019825@mail.example.com>", "root@localhost",
                       bodytype="8BITMIME"), 19825),
    ("info", "6AQEjReh019814",
     lambda: from_line(env_for("alice@www.example.org", 30,
                               "<202611261445.6AQEjReh019814@mail.example.com>"),
                       2, "<202611261445.6AQEjReh019814@mail.example.com>", "root@localhost",
                       proto="ESMTP"), 19814),
    ("info", "6AQEjRu1019839",
     lambda: to_line("root", 0, "local", 30209, "Operating system error", dsn="4.0.0",
                     xdelay=0, ctladdr="root (0/0)"), 19839),
    ("notice", "6AQEjQwp019737", lambda: "nosuchuser... User unknown", 19737),
    ("notice", "", lambda: "alias database /etc/mail/aliases rebuilt by root", 19673),
    ("info", "", lambda: "/etc/mail/aliases: 8 aliases, longest 40 bytes, 209 bytes total",
     19673),
]


LATER = {19825, 19814, 19839, 19844}      # these were logged a second later


@pytest.mark.parametrize("method,qid,build,pid", CASES)
def test_datagrams_match_sendmail_byte_for_byte(receiver, method, qid, build, pid):
    path, sock = receiver
    log = Logger(syslog_socket=path, log_file=None, pid=pid)
    getattr(log, method)(qid, build(), now=REF_TIME + (pid in LATER))
    got = sock.recv(65536).decode()
    assert got in reference_lines(), got
    assert log.lost == 0


def test_syserr_lines_match_sendmail(receiver):
    path, sock = receiver
    log = Logger(syslog_socket=path, pid=19680)
    log.syserr(None, "root", "/etc/mail/aliases: line 10: missing colon", now=REF_TIME)
    log.pid = 19844
    log.syserr("6AQEjRu1019839", "root",
               "Cannot exec /usr/bin/procmail: No such file or directory", now=REF_TIME + 1)
    lines = reference_lines()
    first, second = sock.recv(4096).decode(), sock.recv(4096).decode()
    assert first == ("<18>Nov 26 14:45:26 sendmail[19680]: NOQUEUE: SYSERR(root): "
                     "/etc/mail/aliases: line 10: missing colon")
    assert first in lines
    assert second.startswith("<18>") and second in lines


def test_severities_and_tag(receiver):
    path, sock = receiver
    log = Logger(tag="sm-mta", syslog_socket=path, pid=7)
    for method in ("crit", "err", "warning", "notice", "info", "debug"):
        getattr(log, method)("6AQEjQR0019689", method, now=REF_TIME)
    pris = [sock.recv(4096).decode() for _ in range(6)]
    assert [p.split(">")[0] for p in pris] == ["<18", "<19", "<20", "<21", "<22", "<23"]
    assert pris[0] == "<18>Nov 26 14:45:26 sm-mta[7]: 6AQEjQR0019689: crit"


def test_default_pid_is_the_writing_process(receiver):
    path, sock = receiver
    Logger(syslog_socket=path).info(None, "hello")
    assert "sendmail[%d]: NOQUEUE: hello" % os.getpid() in sock.recv(4096).decode()


def test_delay_format():
    assert format_delay(0) == "00:00:00"
    assert format_delay(3723) == "01:02:03"
    assert format_delay(86400 + 2 * 3600 + 3 * 60 + 4) == "1+02:03:04"
    assert format_delay(12 * 86400 + 59) == "12+00:00:59"
    assert to_line(["a@x", "b@y"], 93784, "esmtp", 120367, "Sent (OK)", dsn="2.0.0",
                   xdelay=1, relay="mx.y. [192.0.2.1]") == (
        "to=a@x,b@y, delay=1+02:03:04, xdelay=00:00:01, mailer=esmtp, pri=120367, "
        "relay=mx.y. [192.0.2.1], dsn=2.0.0, stat=Sent (OK)")


def test_from_line_fields_in_sendmails_order():
    env = Envelope(sender="a@x.example", size=7, headers=[b"Precedence: bulk"])
    assert from_line(env, 3, "", "c.example [192.0.2.9]", proto="ESMTP", bodytype="8BITMIME",
                     daemon="MTA") == (
        "from=<a@x.example>, size=7, class=-60, nrcpts=3, bodytype=8BITMIME, proto=ESMTP, "
        "daemon=MTA, relay=c.example [192.0.2.9]")


def test_control_characters_cannot_forge_a_line(receiver, tmp_path):
    path, sock = receiver
    evil = "x\nNov 26 14:00:00 mta sendmail[1]: 5AQE0012345678: AUTH failure\r"
    Logger(syslog_socket=path, pid=1).info("6AQEjQR0019689", evil, now=REF_TIME)
    got = sock.recv(4096).decode()
    assert "\n" not in got and "\r" not in got
    assert got.endswith("x#012Nov 26 14:00:00 mta sendmail[1]: 5AQE0012345678: AUTH failure#015")
    logfile = tmp_path / "f" / "maillog"
    Logger(syslog_socket=None, log_file=str(logfile), pid=1).info("Q" * 14, evil)
    assert logfile.read_text().count("\n") == 1


def test_file_fallback_format_and_modes(tmp_path):
    logfile = tmp_path / "state" / "log" / "maillog"
    log = Logger(log_file=str(logfile), syslog_socket=str(tmp_path / "no-such-socket"),
                 hostname="mail", pid=19689)
    log.info("6AQEjQR0019689", to_line("bob@example.org", 0, "relay", 30025, "queued"),
             now=REF_TIME)
    log.syserr(None, "root", "readcf: unknown option name NoSuchOption", now=REF_TIME)
    assert logfile.read_text() == (
        "Nov 26 14:45:26 mail sendmail[19689]: 6AQEjQR0019689: to=bob@example.org, "
        "delay=00:00:00, mailer=relay, pri=30025, stat=queued\n"
        "Nov 26 14:45:26 mail sendmail[19689]: NOQUEUE: SYSERR(root): "
        "readcf: unknown option name NoSuchOption\n")
    assert os.stat(logfile.parent).st_mode & 0o777 == 0o750
    assert os.stat(logfile).st_mode & 0o777 == 0o640


def test_dead_receiver_falls_back_to_file(tmp_path):
    path = str(tmp_path / "dead.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.close()                      # the socket file stays, nobody listens
    logfile = tmp_path / "maillog"
    log = Logger(log_file=str(logfile), syslog_socket=path, hostname="h", pid=5)
    log.info("6AQEjQR0019689", "one", now=REF_TIME)
    assert logfile.read_text() == "Nov 26 14:45:26 h sendmail[5]: 6AQEjQR0019689: one\n"
    # A receiver that comes back is used again.
    os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        log.info("6AQEjQR0019689", "two", now=REF_TIME)
        assert sock.recv(4096) == b"<22>Nov 26 14:45:26 sendmail[5]: 6AQEjQR0019689: two"
    finally:
        sock.close()
    assert logfile.read_text().count("\n") == 1


def test_receiver_restart_is_survived(receiver, tmp_path):
    path, sock = receiver
    log = Logger(syslog_socket=path, log_file=str(tmp_path / "maillog"), pid=3)
    log.info(None, "before")
    assert sock.recv(4096).endswith(b"NOQUEUE: before")
    sock.close()
    os.unlink(path)
    again = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    again.bind(path)
    again.settimeout(5)
    try:
        log.info(None, "after")
        assert again.recv(4096).endswith(b"NOQUEUE: after")
    finally:
        again.close()
    assert not (tmp_path / "maillog").exists()


def test_stream_syslog_socket(tmp_path):
    path = str(tmp_path / "stream.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.settimeout(5)
    try:
        log = Logger(syslog_socket=path, log_file=str(tmp_path / "maillog"), pid=9)
        log.notice("6AQEjQR0019689", "streamed", now=REF_TIME)
        conn, _ = server.accept()
        conn.settimeout(5)
        data = b""
        while not data.endswith(b"\0"):
            chunk = conn.recv(4096)
            assert chunk
            data += chunk
        conn.close()
        log.close()
    finally:
        server.close()
    assert data == b"<21>Nov 26 14:45:26 sendmail[9]: 6AQEjQR0019689: streamed\0"


def test_concurrent_writers_never_interleave(tmp_path):
    logfile = tmp_path / "maillog"
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from pysendmail.log import Logger\n"
        "log = Logger(log_file=%r, syslog_socket=None)\n"
        "for i in range(400):\n"
        "    log.info('6AQEjQR00%%05d' %% i, 'to=' + 'x' * 300 + ', stat=Sent')\n"
    ) % (ROOT, str(logfile))
    procs = [subprocess.Popen([PYTHON, "-c", code]) for _ in range(4)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    lines = logfile.read_text().split("\n")
    assert lines[-1] == ""
    pattern = re.compile(r"^\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ sendmail\[\d+\]: "
                         r"6AQEjQR00\d{5}: to=x{300}, stat=Sent$")
    assert len(lines) - 1 == 1600
    assert all(pattern.match(line) for line in lines[:-1])


def test_import_is_cheap():
    code = ("import sys; sys.path.insert(0, %r); import pysendmail.log; "
            "print(' '.join(sorted(sys.modules)))" % ROOT)
    out = subprocess.run([PYTHON, "-I", "-S", "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    for heavy in ("socket", "_socket", "syslog", "re", "email", "datetime", "logging"):
        assert heavy not in out


def test_syslog_time_pads_day_with_space():
    assert syslog_time(time.mktime((2026, 11, 6, 4, 5, 6, 0, 0, -1))) == "Nov  6 04:05:06"


FAIL2BAN_REJECT = "/etc/fail2ban/filter.d/sendmail-reject.conf"
FAIL2BAN_AUTH = "/etc/fail2ban/filter.d/sendmail-auth.conf"


def _fail2ban(logfile, filt):
    out = subprocess.run([require_program("fail2ban-regex"), "--print-all-matched", str(logfile), filt],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    m = re.search(r"^Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed",
                  out.stdout, re.M)
    assert m, out.stdout
    return int(m.group(3)), int(m.group(4)), out.stdout


def test_fail2ban_filters_match_our_lines(tmp_path):
    require_program("fail2ban-regex")
    logfile = tmp_path / "maillog"
    log = Logger(log_file=str(logfile), syslog_socket=None, hostname="mta")
    log.notice("6AQEjQR0019689",
               "ruleset=check_rcpt, arg1=<x@remote.example>, relay=client.example.test "
               "[192.0.2.3], reject=550 5.7.1 <x@remote.example>... Relaying denied. "
               "Proper authentication required.")
    log.notice("6AQEjQR1019689",
               "ruleset=check_rcpt, arg1=<nobody@example.com>, relay=[192.0.2.4], "
               "reject=550 5.1.1 <nobody@example.com>... User unknown")
    log.info("6AQEjQR6019689", "<someone@example.com>... No such user here")
    log.info("6AQEjQR2019689", "[192.0.2.5]: VRFY root [rejected]")
    match, missed, text = _fail2ban(logfile, FAIL2BAN_REJECT)
    assert (match, missed) == (4, 0), text

    auth = tmp_path / "authlog"
    log = Logger(log_file=str(auth), syslog_socket=None, hostname="mta")
    log.warning("6AQEjQR3019689",
                "AUTH failure (PLAIN): authentication failure (-13) SASL(-13): authentication "
                "failure: Password verification failed, user=test, relay=client.example.test "
                "[192.0.2.2]")
    log.warning("6AQEjQR4019689",
                "[192.0.2.1]: possible SMTP attack: command=AUTH, count=5")
    log.info("6AQEjQR5019689", to_line("root", 0, "local", 30025, "Sent", dsn="2.0.0"))
    match, missed, text = _fail2ban(auth, FAIL2BAN_AUTH)
    assert (match, missed) == (2, 1), text
    assert "192.0.2.2" in text and "192.0.2.1" in text


def test_forked_child_logs_its_own_pid(receiver):
    path, sock = receiver
    log = Logger(syslog_socket=path)
    log.info(None, "parent")
    child = os.fork()
    if child == 0:
        code = 1
        try:
            log.info(None, "child")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert status == 0
    got = [sock.recv(4096).decode() for _ in range(2)]
    assert got[0].endswith("sendmail[%d]: NOQUEUE: parent" % os.getpid())
    assert got[1].endswith("sendmail[%d]: NOQUEUE: child" % child)


def test_dsn_line():
    from pysendmail.log import dsn_line
    assert dsn_line("6AQFjQS0019700", "DSN", "User unknown") == "6AQFjQS0019700: DSN: User unknown"
