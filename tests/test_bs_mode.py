"""`sendmail -bs`: the stdin/stdout SMTP driver (pysendmail.cli.smtp_stdio).

run_stdio() is driven over real OS pipes with an in-memory SessionBackend (a
test double of the CLI's backend: it keeps messages in a list); the last test
runs the installed `sendmail -bs -odq` and checks the queue with `mailq`.
"""
import email.utils
import os
import re
import select
import threading
import time

import pytest

from pysendmail.cli.smtp_stdio import SessionBackend, run_stdio
from pysendmail.dates import rfc5322
from pysendmail.errors import EX_SOFTWARE, EX_TEMPFAIL, EX_UNAVAILABLE, MTAError
from pysendmail.proto.smtp_reply import Reply

REF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "ref")
HOST = "mail.example.com"


class MemoryBackend(SessionBackend):
    """Keeps accepted messages in memory; refuses what a test tells it to."""

    hostname = HOST

    def __init__(self, fail=None, max_message_size=0):
        self.messages = []
        self.fail = fail
        self.max_message_size = max_message_size
        self.checked = []

    def check_sender(self, addr, params):
        self.checked.append(("from", addr, params))
        if addr == "spammer@bad.example":
            return Reply(553, "5.1.8", "<%s>... Domain of sender address does not exist" % addr)
        return None

    def check_recipient(self, addr, params):
        self.checked.append(("to", addr, params))
        if addr.startswith("nosuch"):
            return Reply(550, "5.1.1", "<%s>... User unknown" % addr)
        return None

    def accept_message(self, sender, recipients, params, data):
        if self.fail is not None:
            raise self.fail
        self.messages.append((sender, recipients, params, data))
        return "6AQEjReh%06d" % len(self.messages)

    def verify(self, arg):
        return Reply(250, "2.1.5", "root <root@%s>" % HOST)

    expand = verify


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def run_over_pipes(backend, data):
    """Whole input at once (stdin closed after it); returns (exit status, output bytes)."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        os.write(in_w, data)
        os.close(in_w)
        in_w = -1
        status = run_stdio(backend, in_r, out_w)
        os.close(out_w)
        out_w = -1
        chunks = []
        while True:
            chunk = os.read(out_r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        return status, b"".join(chunks)
    finally:
        for fd in (in_r, in_w, out_r, out_w):
            if fd >= 0:
                os.close(fd)


def lines(out):
    return out.decode().split("\r\n")[:-1]


def test_reference_session_over_pipes():
    session = read_file(os.path.join(REF, "input_smtp_session.txt")).replace(b"\n", b"\r\n")
    backend = MemoryBackend()
    status, out = run_over_pipes(backend, session)
    assert status == 0
    got = lines(out)
    assert re.fullmatch(r"220 mail\.example\.com ESMTP pysendmail 0\.1\.0; "
                        r"\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d (?:GMT|[+-]\d{4})", got[0])
    assert got[1:10] == [
        "250-mail.example.com Hello root@localhost, pleased to meet you",
        "250-ENHANCEDSTATUSCODES", "250-PIPELINING", "250-8BITMIME", "250-SIZE", "250-DSN",
        "250-SMTPUTF8", "250-CHUNKING", "250 HELP"]
    assert got[10:18] == [
        "250 2.1.0 <alice@www.example.org>... Sender ok",
        "250 2.1.5 <root>... Recipient ok",
        "250 2.1.5 <bob@example.org>... Recipient ok",
        "553 5.0.0 <bad<addr>... Unbalanced '<'",
        "354 End data with <CR><LF>.<CR><LF>",
        "250 2.0.0 6AQEjReh000001 Message accepted for delivery",
        "250 2.1.5 root <root@mail.example.com>",
        "250 2.1.5 root <root@mail.example.com>"]
    assert got[18].startswith("214-2.0.0 ") and "214 2.0.0 End of HELP info" in got
    assert got[-3:] == ["250 2.0.0 OK", "250 2.0.0 Reset state",
                        "221 2.0.0 mail.example.com closing connection"]
    assert backend.messages == [(
        "alice@www.example.org", [("root", {}), ("bob@example.org", {})], {"SIZE": 100},
        b"Subject: smtp\n\nhello over -bs\n")]


def test_replies_flushed_after_each_batch():
    """An interactive client waits for each reply: the driver must not hold them back."""
    backend = MemoryBackend()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    result = []
    worker = threading.Thread(target=lambda: result.append(run_stdio(backend, in_r, out_w)))
    worker.start()
    buf = bytearray()

    def expect(count):
        deadline = time.monotonic() + 10
        while buf.count(b"\r\n") < count:
            left = deadline - time.monotonic()
            assert left > 0, "no reply within 10 s; got %r" % bytes(buf)
            ready, _, _ = select.select([out_r], [], [], left)
            if ready:
                buf.extend(os.read(out_r, 65536))
        got = bytes(buf).split(b"\r\n")[:count]
        del buf[:sum(len(x) + 2 for x in got)]
        return [x.decode() for x in got]

    try:
        assert expect(1)[0].startswith("220 ")
        os.write(in_w, b"HELO client.example.org\r\n")
        assert expect(1) == ["250 mail.example.com Hello root@localhost, pleased to meet you"]
        os.write(in_w, b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<nosuch@y>\r\nDATA\r\n")
        assert expect(4) == ["250 2.1.0 <a@x>... Sender ok", "250 2.1.5 <b@y>... Recipient ok",
                             "550 5.1.1 <nosuch@y>... User unknown",
                             "354 End data with <CR><LF>.<CR><LF>"]
        os.write(in_w, b"line 1\r\n..dot\r\n")
        os.write(in_w, b".\r\n")
        assert expect(1) == ["250 2.0.0 6AQEjReh000001 Message accepted for delivery"]
        os.write(in_w, b"QUIT\r\n")
        assert expect(1) == ["221 2.0.0 mail.example.com closing connection"]
        worker.join(10)
        assert not worker.is_alive() and result == [0]
    finally:
        os.close(in_w)
        worker.join(10)
        for fd in (in_r, out_r, out_w):
            os.close(fd)
    assert backend.messages == [("a@x", [("b@y", {})], {}, b"line 1\n.dot\n")]


def test_eof_without_quit_mid_message_delivers_nothing():
    backend = MemoryBackend()
    status, out = run_over_pipes(backend, b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nhalf")
    assert status == 0
    assert lines(out)[-1] == "354 End data with <CR><LF>.<CR><LF>"
    assert backend.messages == []


def test_bare_lf_data_is_refused_and_session_ends():
    backend = MemoryBackend()
    status, out = run_over_pipes(
        backend, b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nhi\n.\nMAIL FROM:<e@x>\r\n"
                 b"RCPT TO:<victim@y>\r\nDATA\r\nevil\r\n.\r\nQUIT\r\n")
    assert status == 0
    assert lines(out)[-1] == "554 5.5.2 Bare linefeed (LF) not allowed"
    assert backend.messages == []
    assert ("to", "victim@y", {}) not in backend.checked


def test_backend_refusals_and_parameters():
    backend = MemoryBackend()
    status, out = run_over_pipes(
        backend, b"EHLO c\r\nMAIL FROM:<spammer@bad.example>\r\n"
                 b"MAIL FROM:<a@x> RET=HDRS ENVID=id+2B1\r\n"
                 b"RCPT TO:<b@y> NOTIFY=FAILURE ORCPT=rfc822;b+40y\r\nDATA\r\nx\r\n.\r\nQUIT\r\n")
    assert status == 0
    got = lines(out)
    assert "553 5.1.8 <spammer@bad.example>... Domain of sender address does not exist" in got
    assert backend.messages == [("a@x", [("b@y", {"NOTIFY": "FAILURE", "ORCPT": "rfc822;b@y"})],
                                 {"RET": "HDRS", "ENVID": "id+1"}, b"x\n")]


@pytest.mark.parametrize("error, reply", [
    (MTAError("Cannot create qf file", EX_TEMPFAIL), "451 4.3.0 Cannot create qf file"),
    (MTAError("Queue is full", EX_UNAVAILABLE), "554 5.5.0 Queue is full"),
])
def test_queue_failures_become_replies(error, reply):
    status, out = run_over_pipes(
        MemoryBackend(fail=error),
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nx\r\n.\r\nRSET\r\nQUIT\r\n")
    assert status == 0
    assert lines(out)[-3:] == [reply, "250 2.0.0 Reset state",
                               "221 2.0.0 mail.example.com closing connection"]


def test_bug_in_backend_is_reported_as_one(capfd):
    status, out = run_over_pipes(
        MemoryBackend(fail=ZeroDivisionError("oops")),
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n")
    assert status == EX_SOFTWARE
    assert lines(out)[-1] == "421 4.3.0 mail.example.com Internal error; closing connection"
    assert "internal error" in capfd.readouterr().err


def test_size_limit_from_backend():
    status, out = run_over_pipes(MemoryBackend(max_message_size=100),
                                 b"EHLO c\r\nMAIL FROM:<a@x> SIZE=101\r\nQUIT\r\n")
    got = lines(out)
    assert "250-SIZE 100" in got
    assert "552 5.2.3 Message size exceeds fixed maximum message size (100)" in got


def test_bdat_over_stdin():
    backend = MemoryBackend()
    status, out = run_over_pipes(
        backend, b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 9\r\nSubject: BDAT 6 LAST\r\n"
                 b"\r\nbodyQUIT\r\n")
    assert status == 0
    assert lines(out)[-3:] == ["250 2.0.0 9 octets received",
                               "250 2.0.0 6AQEjReh000001 Message accepted for delivery",
                               "221 2.0.0 mail.example.com closing connection"]
    assert backend.messages[0][3] == b"Subject: \nbody"


@pytest.mark.parametrize("ts", [0, 951782400, 1795704327, 4107542399, 1709251199, 1582934400])
@pytest.mark.parametrize("tz", ["UTC0", "CET-1", "EST5", "IST-5:30", "NST3:30"])
def test_rfc5322_date_matches_email_utils(ts, tz, monkeypatch):
    """pysendmail.dates.rfc5322 against email.utils, in several local time zones."""
    import datetime
    import time

    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        offset = time.localtime(ts).tm_gmtoff
        zone = datetime.timezone(datetime.timedelta(seconds=offset))
        want = email.utils.format_datetime(datetime.datetime.fromtimestamp(ts, zone))
        # email.utils pads the day to two digits and writes +0000; Sendmail and we do not
        want = re.sub(r", 0(\d) ", r", \1 ", want).replace(" +0000", " GMT")
        assert rfc5322(ts) == want
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_installed_sendmail_bs_queues_the_message(sm_root):
    """End to end: the installed `sendmail -bs -odq` takes a session on stdin and queues."""
    session = read_file(os.path.join(REF, "input_smtp_session.txt")).replace(b"\n", b"\r\n")
    proc = sm_root.run(["-bs", "-odq"], input=session, check=True)
    got = lines(proc.stdout)
    assert re.fullmatch(r"220 \S+ ESMTP pysendmail 0\.1\.0; .+", got[0])
    assert "250 2.1.0 <alice@www.example.org>... Sender ok" in got
    assert "250 2.1.5 <bob@example.org>... Recipient ok" in got
    assert "553 5.0.0 <bad<addr>... Unbalanced '<'" in got
    accepted = [m for m in (re.fullmatch(r"250 2\.0\.0 (\S+) Message accepted for delivery", x)
                            for x in got) if m]
    assert len(accepted) == 1
    qid = accepted[0].group(1)
    assert re.fullmatch(r"221 2\.0\.0 \S+ closing connection", got[-1])
    queue = sm_root.mailq()
    assert qid in queue
    assert "alice@www.example.org" in queue and "bob@example.org" in queue
    assert "Total requests: 1" in queue
