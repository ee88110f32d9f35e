"""Hardening of the sans-I/O SMTP server core (issue 4): smuggling, injection, limits.

Byte-level tests of pysendmail.proto.smtp_server, no sockets:
  * SMTP smuggling (CVE-2023-51764/5/6): only <CRLF>.<CRLF> ends DATA; every
    near-miss end marker, split at every receive_data boundary, ends the session
    with a 554 and never lets the smuggled "MAIL FROM" through; BDAT octets are
    opaque (length-framed), so a smuggled command inside a chunk stays data.
  * STARTTLS command injection (CVE-2011-0411).
  * RFC 2920 pipelining after failed commands: one reply per command, in order.
  * RFC 5321 4.5.3.1 limits and the extensions EHLO offers.
"""
import base64

import pytest

from pysendmail.proto import smtp_events as ev
from pysendmail.proto import smtp_reply as R
from pysendmail.proto.smtp_events import NEED_DATA
from pysendmail.proto.smtp_reply import Reply
from pysendmail.proto.smtp_server import CLOSED, ServerConfig, SMTPServerConnection

HOST = "mx.example.org"
QID = "6AQEjReh019814"


class Driver:
    """Answers like the -bs driver does; `refuse` maps an event class to a Reply."""

    def __init__(self, refuse=None, **kw):
        self.conn = SMTPServerConnection(ServerConfig(HOST, **kw))
        self.refuse = refuse or {}
        self.events = []
        self.data = bytearray()
        self.messages = []
        self.greeting = self.pump()

    def answer(self, e):
        kind = type(e)
        if kind in self.refuse:
            return self.refuse[kind]
        if kind is ev.Rejected:
            return e.reply
        simple = {
            ev.Greeting: Reply(220, None, "%s ESMTP test" % HOST),
            ev.DataStart: R.start_data(), ev.Rset: R.reset_ok(), ev.Noop: R.noop_ok(),
            ev.Quit: R.closing(HOST), ev.StartTls: R.tls_ready(), ev.Auth: R.auth_ok(),
            ev.Vrfy: Reply(250, "2.1.5", "<root@%s>" % HOST),
            ev.Expn: Reply(250, "2.1.5", "<root@%s>" % HOST),
        }
        if kind in simple:
            return simple[kind]
        if kind is ev.Helo:
            return R.ehlo_ok(HOST, "client", self.conn.ehlo_keywords()) if e.esmtp \
                else R.helo_ok(HOST, "client")
        if kind is ev.MailFrom:
            return R.sender_ok(e.raw)
        if kind is ev.RcptTo:
            return R.recipient_ok(e.raw)
        if kind is ev.BdatChunk:
            return R.chunk_ok(e.size)
        if kind is ev.MessageComplete:
            self.messages.append(bytes(self.data))
            self.data.clear()
            return R.accepted(QID)
        if kind is ev.Help:
            return R.help_reply(e.topic, "pysendmail")
        raise AssertionError("unexpected %r" % (e,))

    def pump(self):
        out = bytearray()
        for _ in range(10000):
            e = self.conn.next_event()
            if e is NEED_DATA:
                return bytes(out)
            self.events.append(e)
            if type(e) is ev.ConnectionClosed:
                return bytes(out)
            if type(e) is ev.DataChunk:
                self.data += e.data
                continue
            if type(e) is ev.Rejected:
                self.data.clear()
            out += self.conn.send(self.answer(e))
        raise AssertionError("no NEED_DATA after 10000 events")

    def feed(self, data):
        self.conn.receive_data(data)
        return self.pump()

    def feed_split(self, pieces):
        return b"".join(self.feed(p) for p in pieces)

    def lines(self, data):
        return self.feed(data).decode("utf-8").split("\r\n")[:-1]

    def of(self, kind):
        return [e for e in self.events if type(e) is kind]


def in_data(**kw):
    d = Driver(**kw)
    d.feed(b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n")
    assert d.conn.phase == "DATA"
    return d


def splits(wire):
    """Every way of cutting `wire` in two, plus byte by byte."""
    for i in range(1, len(wire)):
        yield [wire[:i], wire[i:]]
    yield [wire[i:i + 1] for i in range(len(wire))]


SMUGGLE = b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@y.example>\r\nDATA\r\n" \
          b"From: ceo@y.example\r\n\r\nforged\r\n.\r\n"

# (fake end-of-data marker, what the 554 names)
NEAR_MISSES = [
    (b"\n.\n", "linefeed (LF)"),
    (b"\n.\r\n", "linefeed (LF)"),
    (b"\r.\r", "carriage return (CR)"),
    (b"\r\n.\n", "linefeed (LF)"),
    (b"\r\n.\r", "carriage return (CR)"),
    (b"\r\n.\r\r\n", "carriage return (CR)"),
    (b"\r\r\n.\r\n", "carriage return (CR)"),
    (b"\r\n.\n\r\n", "linefeed (LF)"),
]


# --- SMTP smuggling in DATA ---------------------------------------------------------------

@pytest.mark.parametrize("marker, what", NEAR_MISSES, ids=[repr(m) for m, _ in NEAR_MISSES])
def test_near_miss_end_markers_close_the_session_at_every_split(marker, what):
    wire = b"Subject: hi\r\n\r\nbody" + marker + SMUGGLE + b"QUIT\r\n"
    want = b"554 5.5.2 Bare %s not allowed\r\n" % what.encode()
    for pieces in splits(wire):
        d = in_data()
        assert d.feed_split(pieces) == want, pieces
        assert d.conn.phase == CLOSED
        assert [m.addr for m in d.of(ev.MailFrom)] == ["a@x.example"]
        assert d.of(ev.MessageComplete) == [] and d.messages == []
        assert type(d.events[-1]) is ev.ConnectionClosed
        assert not d.conn.in_transaction or d.conn.phase == CLOSED


def test_near_miss_right_after_354():
    for marker, what in NEAR_MISSES:
        wire = marker.lstrip(b"\r\n") + SMUGGLE if marker.startswith(b"\r\n") else \
            marker + SMUGGLE
        d = in_data()
        out = d.feed(wire)
        assert out.startswith(b"554 5.5.2 Bare "), (marker, out)
        assert len(d.of(ev.MailFrom)) == 1


def test_lone_bare_lf_or_cr_inside_a_line():
    for body, what in ((b"a\nb\r\n.\r\n", b"linefeed (LF)"),
                       (b"a\rb\r\n.\r\n", b"carriage return (CR)")):
        for pieces in splits(body):
            d = in_data()
            assert d.feed_split(pieces) == b"554 5.5.2 Bare %s not allowed\r\n" % what
            assert d.messages == []


def test_genuine_end_at_every_split_and_stuffed_dots():
    body = b"Subject: x\r\n\r\n..\r\n.MAIL FROM:<e@x>\r\nend\r\n"
    wire = body + b".\r\nNOOP\r\n"
    for pieces in splits(wire):
        d = in_data()
        out = d.feed_split(pieces)
        assert out == b"250 2.0.0 %s Message accepted for delivery\r\n250 2.0.0 OK\r\n" \
            % QID.encode()
        assert d.messages == [b"Subject: x\r\n\r\n.\r\nMAIL FROM:<e@x>\r\nend\r\n"]
        assert len(d.of(ev.MailFrom)) == 1


def test_input_after_the_smuggling_refusal_is_ignored():
    d = in_data()
    d.feed(b"x\n.\n")
    assert d.conn.phase == CLOSED
    assert d.feed(SMUGGLE) == b""
    assert len(d.of(ev.MailFrom)) == 1


# --- BDAT: length-framed, octets opaque (RFC 3030) -----------------------------------------

@pytest.mark.parametrize("marker", [m for m, _ in NEAR_MISSES] + [b"\r\n.\r\n"])
def test_bdat_chunk_content_is_never_a_command(marker):
    content = b"Subject: hi\r\n\r\nbody" + marker + SMUGGLE
    wire = b"BDAT %d LAST\r\n" % len(content) + content + b"NOOP\r\n"
    for pieces in splits(wire):
        d = Driver()
        d.feed(b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n")
        out = d.feed_split(pieces)
        assert out == b"250 2.0.0 %s Message accepted for delivery\r\n250 2.0.0 OK\r\n" \
            % QID.encode()
        assert d.messages == [content]
        assert [m.addr for m in d.of(ev.MailFrom)] == ["a@x"]


def test_bdat_refused_chunk_is_consumed_not_executed():
    d = Driver()
    content = b"x\n.\n" + SMUGGLE
    out = d.lines(b"BDAT %d\r\n" % len(content) + content + b"NOOP\r\n")
    assert out == ["503 5.0.0 Need MAIL command", "250 2.0.0 OK"]
    assert d.of(ev.MailFrom) == [] and d.of(ev.DataChunk) == []


def test_bdat_size_limit_consumes_the_chunk():
    d = Driver(max_size=50)
    d.feed(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n")
    content = b"y" * 40 + SMUGGLE
    assert d.lines(b"BDAT %d LAST\r\n" % len(content) + content + b"NOOP\r\n") == [
        "552 5.2.3 Message exceeds maximum fixed size (50)", "250 2.0.0 OK"]
    assert len(d.of(ev.MailFrom)) == 1 and not d.conn.in_transaction


# --- STARTTLS injection (CVE-2011-0411) -----------------------------------------------------

def test_starttls_rset_in_one_packet():
    d = Driver(starttls=True)
    d.feed(b"EHLO c\r\n")
    assert d.feed(b"STARTTLS\r\nRSET\r\n") == b"220 2.0.0 Ready to start TLS\r\n"
    assert len(d.of(ev.StartTls)) == 1
    assert d.conn.next_event() is NEED_DATA
    d.conn.tls_started()
    assert d.pump() == b""
    assert d.of(ev.Rset) == []
    assert d.conn.discarded_bytes == len(b"RSET\r\n")
    # the first command really sent over TLS is served
    assert d.lines(b"EHLO c\r\nRSET\r\n")[-1] == "250 2.0.0 Reset state"


@pytest.mark.parametrize("late", [b"", b"MAIL FROM:<evil@x>\r\n"])
def test_starttls_input_before_the_handshake_is_discarded(late):
    wire = b"STARTTLS\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\n"
    for pieces in splits(wire):
        d = Driver(starttls=True)
        d.feed(b"EHLO c\r\n")
        out = d.feed_split(pieces + [late])
        assert out == b"220 2.0.0 Ready to start TLS\r\n"
        d.conn.tls_started()
        assert d.pump() == b""
        assert d.of(ev.MailFrom) == [] and d.of(ev.RcptTo) == []
        assert d.conn.discarded_bytes == len(wire) - len(b"STARTTLS\r\n") + len(late)
        assert d.conn.helo is None and not d.conn.in_transaction


def test_input_fed_while_starttls_reply_is_owed_is_discarded():
    conn = SMTPServerConnection(ServerConfig(HOST, starttls=True))
    assert type(conn.next_event()) is ev.Greeting
    conn.send(Reply(220, None, "hi"))
    conn.receive_data(b"STARTTLS\r\n")
    assert type(conn.next_event()) is ev.StartTls
    conn.receive_data(b"MAIL FROM:<evil@x>\r\n")          # arrives before the 220 goes out
    conn.send(R.tls_ready())
    conn.tls_started()
    assert conn.next_event() is NEED_DATA
    assert conn.discarded_bytes == len(b"MAIL FROM:<evil@x>\r\n")


def test_starttls_refused_keeps_the_pipelined_input():
    d = Driver(starttls=True, refuse={ev.StartTls: Reply(454, "4.3.3", "TLS not available now")})
    assert d.lines(b"STARTTLS\r\nNOOP\r\n") == ["454 4.3.3 TLS not available now",
                                                "250 2.0.0 OK"]


# --- pipelining after failures (RFC 2920) -------------------------------------------------

def test_failed_mail_then_pipelined_rcpts_and_data():
    d = Driver()
    d.feed(b"EHLO c\r\n")
    got = d.lines(b"MAIL FROM:<bad<x>\r\nRCPT TO:<a@y>\r\nRCPT TO:<b@y>\r\nDATA\r\n"
                  b"body\r\n.\r\nQUIT\r\n")
    assert got == ["553 5.0.0 <bad<x>... Unbalanced '<'",
                   "503 5.0.0 Need MAIL before RCPT", "503 5.0.0 Need MAIL before RCPT",
                   "503 5.0.0 Need MAIL command",
                   '500 5.5.1 Command unrecognized: "body"',
                   '500 5.5.1 Command unrecognized: "."',
                   "221 2.0.0 %s closing connection" % HOST]
    assert d.of(ev.RcptTo) == [] and d.of(ev.DataStart) == []


def test_mail_refused_by_the_driver_then_pipelined_rcpts():
    d = Driver(refuse={ev.MailFrom: Reply(550, "5.7.1", "<a@x>... Access denied")})
    got = d.lines(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 4 LAST\r\nabcdNOOP\r\n")
    assert got == ["550 5.7.1 <a@x>... Access denied", "503 5.0.0 Need MAIL before RCPT",
                   "503 5.0.0 Need MAIL command", "250 2.0.0 OK"]


def test_data_after_no_valid_recipient():
    d = Driver(refuse={ev.RcptTo: Reply(550, "5.1.1", "User unknown")})
    got = d.lines(b"MAIL FROM:<a@x>\r\nRCPT TO:<n1@y>\r\nRCPT TO:<n2@y>\r\nDATA\r\nRSET\r\n")
    assert got == ["250 2.1.0 <a@x>... Sender ok", "550 5.1.1 User unknown",
                   "550 5.1.1 User unknown", "503 5.0.0 Need RCPT (recipient)",
                   "250 2.0.0 Reset state"]
    assert d.conn.phase == "COMMAND" and not d.conn.in_transaction


def test_data_refused_by_the_driver_leaves_command_mode():
    d = Driver(refuse={ev.DataStart: Reply(554, "5.5.1", "No valid recipients")})
    got = d.lines(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nMAIL FROM:<c@x>\r\n")
    assert got[-2:] == ["554 5.5.1 No valid recipients", "503 5.5.0 Sender already specified"]
    assert d.conn.phase == "COMMAND"


# --- limits (RFC 5321 4.5.3.1) ------------------------------------------------------------

def test_path_limits_when_configured():
    d = Driver(max_path=256, max_local_part=64)
    d.feed(b"EHLO c\r\n")
    local64, dom = b"l" * 64, b"d" * 63 + b"." + b"e" * 63 + b"." + b"f" * 60   # 188
    assert d.lines(b"MAIL FROM:<" + local64 + b"@" + dom + b">\r\n")[0].startswith("250")
    d.feed(b"RSET\r\n")
    assert d.lines(b"MAIL FROM:<" + b"l" * 65 + b"@x>\r\n") == [
        '553 5.1.7 <%s@x>... Local part of address "%s" too long (64 bytes max)'
        % ("l" * 65, "l" * 65)]
    long_path = b"<" + local64 + b"@" + b"d" * 190 + b">"               # 257 octets
    assert d.lines(b"MAIL FROM:" + long_path + b"\r\n") == [
        '553 5.1.0 Address "%s" too long (256 bytes max)' % R.show(long_path.decode())]
    d.feed(b"MAIL FROM:<a@x>\r\n")
    assert d.lines(b"RCPT TO:<" + b"r" * 65 + b"@y>\r\n")[0].startswith("553 5.1.3 ")
    # a source route counts towards the path
    route = b"@" + b"r" * 130 + b",@" + b"s" * 130 + b":u@y"     # 269 octets
    assert d.lines(b"RCPT TO:<" + route + b">\r\n")[0].startswith("553 5.1.0 Address")
    assert d.lines(b"RCPT TO:<u@y>\r\n") == ["250 2.1.5 <u@y>... Recipient ok"]


def test_domain_over_255_octets_refused_by_default():
    d = Driver()
    dom = ".".join(["a" * 63] * 4).encode()                                 # 255
    assert d.lines(b"MAIL FROM:<u@" + dom + b">\r\n")[0].startswith("250")
    d.feed(b"RCPT TO:<u@" + dom + b"b>\r\n")
    assert d.events[-1].reply.code == 553
    assert str(d.events[-1].reply).startswith("553 5.1.2 <u@")
    assert str(d.events[-1].reply).endswith("too long (255 bytes max)")
    # UTF-8 counts in octets
    d.feed(b"RSET\r\n")
    got = d.lines(("MAIL FROM:<u@%s> SMTPUTF8\r\n" % ("\u00e9" * 128)).encode())
    assert got[0].startswith("553 5.1.8 ")


def test_too_many_recipients():
    d = Driver(max_rcpts=100)
    d.feed(b"MAIL FROM:<a@x>\r\n")
    out = d.lines(b"".join(b"RCPT TO:<r%d@y>\r\n" % i for i in range(102)))
    assert out[:100] == ["250 2.1.5 <r%d@y>... Recipient ok" % i for i in range(100)]
    assert out[100:] == ["452 4.5.3 Too many recipients"] * 2
    assert d.conn.rcpt_count == 100
    assert d.lines(b"DATA\r\nx\r\n.\r\n")[-1].startswith("250 2.0.0")


def test_command_line_and_reply_line_limits():
    d = Driver()
    assert d.lines(b"NOOP " + b"a" * 505 + b"\r\n") == ["250 2.0.0 OK"]            # 512
    assert d.lines(b"NOOP " + b"a" * 506 + b"\r\n") == ["500 5.5.2 Line too long"]  # 513
    # a reply line is at most 512 octets, cut at a UTF-8 character boundary
    long_text = Reply(550, "5.1.1", "\u00e9" * 400).to_bytes()
    assert len(long_text) <= 512 and long_text.endswith(b"\r\n")
    long_text.decode("utf-8")
    wire = Reply(250, None, ["x" * 600, "y"]).to_bytes()
    assert [len(line) + 2 for line in wire.split(b"\r\n")[:-1]] == [512, 7]


def test_text_line_limit_and_size_limit_consume_to_the_end():
    d = in_data(max_size=2000)
    wire = b"z" * 1200 + b"\r\nMAIL FROM:<evil@x>\r\n.\r\nNOOP\r\n"
    assert d.lines(wire) == ["554 5.6.0 Line too long", "250 2.0.0 OK"]
    d.feed(b"MAIL FROM:<a@x> SIZE=2001\r\n")
    assert str(d.events[-1].reply) == \
        "552 5.2.3 Message size exceeds fixed maximum message size (2000)"
    d.feed(b"MAIL FROM:<a@x> SIZE=2000\r\nRCPT TO:<b@y>\r\nDATA\r\n")
    body = (b"w" * 98 + b"\r\n") * 25 + b"MAIL FROM:<evil@x>\r\n"
    assert d.lines(body + b".\r\nNOOP\r\n") == [
        "552 5.2.3 Message exceeds maximum fixed size (2000)", "250 2.0.0 OK"]
    assert [m.addr for m in d.of(ev.MailFrom)] == ["a@x.example", "a@x"]
    assert d.messages == []


# --- DSN parameters (RFC 3461) --------------------------------------------------------------

@pytest.mark.parametrize("line, reply", [
    (b"MAIL FROM:<a@x> SIZE=1 SIZE=2", "501 5.5.0 Duplicate SIZE parameter"),
    (b"MAIL FROM:<a@x> BODY=7BIT BODY=8BITMIME", "501 5.5.0 Duplicate BODY parameter"),
    (b"MAIL FROM:<a@x> ENVID=" + b"e" * 101, "501 5.5.4 Syntax error in ENVID parameter value"),
    (b"MAIL FROM:<a@x> ENVID=a+2", "501 5.5.4 Syntax error in ENVID parameter value"),
    (b"MAIL FROM:<a@x> ENVID=a+zz", "501 5.5.4 Syntax error in ENVID parameter value"),
    (b"MAIL FROM:<a@x> ENVID=A ENVID=B", "501 5.5.0 Duplicate ENVID parameter"),
])
def test_dsn_mail_parameter_validation(line, reply):
    d = Driver()
    d.feed(b"EHLO c\r\n")
    assert d.lines(line + b"\r\n") == [reply]


@pytest.mark.parametrize("param, reply", [
    (b"NOTIFY=SUCCESS NOTIFY=FAILURE", "501 5.5.0 Duplicate NOTIFY parameter"),
    (b"NOTIFY=", '501 5.5.4 Bad argument ""  to NOTIFY'),
    (b"NOTIFY=FAILURE,NEVER", '501 5.5.4 Bad argument "NEVER"  to NOTIFY'),
    (b"ORCPT=rfc822;" + b"o" * 494, "501 5.5.4 Syntax error in ORCPT parameter value"),
    (b"ORCPT=;a@b", "501 5.5.4 Syntax error in ORCPT parameter value"),
    (b"ORCPT=rfc 822;a@b", "555 5.5.4 822;a@b parameter unrecognized"),
    (b"ORCPT=utf-8;a\\x{110000}@b", "501 5.5.4 Syntax error in UTF-8 ORCPT parameter value"),
    (b"ORCPT=utf-8;a\\x{D800}@b", "501 5.5.4 Syntax error in UTF-8 ORCPT parameter value"),
    (b"ORCPT=utf-8;a\\x{}@b", "501 5.5.4 Syntax error in UTF-8 ORCPT parameter value"),
    (b"ORCPT=utf-8;a\xff@b", "501 5.5.4 Syntax error in UTF-8 ORCPT parameter value"),
])
def test_dsn_rcpt_parameter_validation(param, reply):
    d = Driver()
    d.feed(b"EHLO c\r\nMAIL FROM:<a@x>\r\n")
    assert d.lines(b"RCPT TO:<b@y> " + param + b"\r\n") == [reply]


def test_dsn_parameters_accepted():
    d = Driver()
    d.feed(b"EHLO c\r\n")
    d.feed(b"MAIL FROM:<a@x> RET=FULL ENVID=" + b"e" * 100 + b"\r\n")
    assert d.of(ev.MailFrom)[0].params == {"RET": "FULL", "ENVID": "e" * 100}
    d.feed(b"RCPT TO:<b@y> NOTIFY=FAILURE,FAILURE ORCPT=rfc822;" + b"o" * 493 + b"\r\n"
           b"RCPT TO:<c@y> ORCPT=utf-8;\\x{1F600}@y NOTIFY=never\r\n")
    first, second = [e.params for e in d.of(ev.RcptTo)]
    assert first == {"NOTIFY": "FAILURE", "ORCPT": "rfc822;" + "o" * 493}
    assert second == {"ORCPT": "utf-8;\U0001F600@y", "NOTIFY": "NEVER"}


# --- extensions offered ------------------------------------------------------------------------

def test_ehlo_keywords_full_set_and_auth_only_over_tls():
    kw = dict(max_size=10485760, starttls=True, auth_mechanisms=("PLAIN", "LOGIN"))
    d = Driver(**kw)
    before = d.lines(b"EHLO c\r\n")
    assert before[1:] == ["250-ENHANCEDSTATUSCODES", "250-PIPELINING", "250-8BITMIME",
                          "250-SIZE 10485760", "250-DSN", "250-SMTPUTF8", "250-CHUNKING",
                          "250-STARTTLS", "250 HELP"]
    assert d.lines(b"AUTH PLAIN\r\n") == ["503 5.3.3 AUTH not available"]
    d.feed(b"STARTTLS\r\n")
    d.conn.tls_started()
    after = d.lines(b"EHLO c\r\n")
    assert "250-AUTH PLAIN LOGIN" in after and "250-STARTTLS" not in after
    token = base64.b64encode(b"\0u\0p")
    assert d.lines(b"AUTH PLAIN " + token + b"\r\n") == ["235 2.0.0 OK Authenticated"]
    assert d.conn.authenticated and d.conn.tls
    # loopback: the daemon sets auth_requires_tls=False
    lo = Driver(auth_mechanisms=("PLAIN", "LOGIN"), auth_requires_tls=False)
    assert "250-AUTH PLAIN LOGIN" in lo.lines(b"EHLO c\r\n")


def test_vrfy_expn_driver_or_privacy_options():
    d = Driver()
    assert "250-EXPN" not in d.lines(b"EHLO c\r\n")
    assert d.lines(b"VRFY root\r\n") == ["250 2.1.5 <root@%s>" % HOST]      # the driver's
    p = Driver(novrfy=True, noexpn=True, expn=True)
    assert "250-EXPN" not in p.lines(b"EHLO c\r\n")
    assert p.lines(b"VRFY root\r\nEXPN root\r\n") == [
        "252 2.5.2 Cannot VRFY user; try RCPT to attempt delivery (or try finger)",
        "502 5.7.0 Sorry, we do not allow this operation"]
    assert p.of(ev.Vrfy) == [] and p.of(ev.Expn) == []
    assert R.vrfy_cannot() == Reply(252, "2.5.2", "Cannot VRFY user; try RCPT to attempt "
                                    "delivery (or try finger)")
    assert R.expn_refused() == Reply(502, "5.7.0", "Sorry, we do not allow this operation")


def test_help_and_extension_switches():
    d = Driver(pipelining=False, eightbitmime=False, smtputf8=False, dsn=False,
               chunking=False, help=False, enhancedstatuscodes=False)
    assert d.lines(b"EHLO c\r\n")[1:] == ["250 SIZE"]
    assert d.lines(b"MAIL FROM:<a@x> BODY=8BITMIME\r\n") == ["501 Unknown BODY type 8BITMIME"]
    assert d.lines(b"MAIL FROM:<a@x> SMTPUTF8\r\n") == ["504 Sorry, SMTPUTF8 not supported"]
    h = Driver()
    assert h.lines(b"HELP\r\n")[-1] == "214 2.0.0 End of HELP info"
