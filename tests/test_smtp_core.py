"""Byte-table tests of the sans-I/O SMTP server core (pysendmail.proto.smtp_server).

No sockets, no processes: bytes go in, events come out, replies go back, and the
bytes the core would write are compared with what Sendmail 8.17 writes
(/work/shared/sendmail-ref/formats/08_bs_session.txt, the smtp_dialog part).
"""
import ast
import base64
import os

import pytest

from pysendmail.proto import smtp_events as ev
from pysendmail.proto import smtp_reply as R
from pysendmail.proto.smtp_events import LocalProtocolError, NEED_DATA
from pysendmail.proto.smtp_params import xtext_decode, xtext_ok
from pysendmail.proto.smtp_reply import Reply
from pysendmail.proto.smtp_server import CLOSED, ServerConfig, SMTPServerConnection

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "ref")
HOST = "mail.example.com"
QID = "6AQEjReh019814"


class Harness:
    """Drives the core like a driver would; answers with Sendmail's texts.
    `answers` maps an event class to a function(event) -> Reply to override."""

    def __init__(self, config=None, answers=None, **kw):
        self.conn = SMTPServerConnection(config or ServerConfig(HOST, **kw))
        self.answers = answers or {}
        self.events = []
        self.messages = []
        self.data = bytearray()
        self.greeting = self.pump()

    def answer(self, event):
        kind = type(event)
        if kind in self.answers:
            return self.answers[kind](event)
        if kind is ev.Greeting:
            return Reply(220, None, "%s ESMTP pysendmail 0.1.0; DATE" % HOST)
        if kind is ev.Rejected:
            return event.reply
        if kind is ev.Helo:
            if event.esmtp:
                return R.ehlo_ok(HOST, "root@localhost", self.conn.ehlo_keywords())
            return R.helo_ok(HOST, "root@localhost")
        if kind is ev.MailFrom:
            return R.sender_ok(event.raw)
        if kind is ev.RcptTo:
            return R.recipient_ok(event.raw)
        if kind is ev.DataStart:
            self.data.clear()
            return R.start_data()
        if kind is ev.BdatChunk:
            return R.chunk_ok(event.size)
        if kind is ev.MessageComplete:
            self.messages.append(bytes(self.data))
            self.data.clear()
            return R.accepted(QID)
        if kind is ev.Rset:
            return R.reset_ok()
        if kind is ev.Noop:
            return R.noop_ok()
        if kind is ev.Quit:
            return R.closing(HOST)
        if kind in (ev.Vrfy, ev.Expn):
            return Reply(250, "2.1.5", "root <root@%s>" % HOST)
        if kind is ev.Help:
            return R.help_reply(event.topic, "pysendmail 0.1.0")
        if kind is ev.StartTls:
            return R.tls_ready()
        if kind in (ev.Auth, ev.AuthResponse):
            return R.auth_ok()
        raise AssertionError("unexpected %r" % (event,))

    def pump(self):
        out = bytearray()
        for _ in range(100000):
            event = self.conn.next_event()
            if event is NEED_DATA:
                return bytes(out)
            self.events.append(event)
            if type(event) is ev.ConnectionClosed:
                return bytes(out)
            if type(event) is ev.DataChunk:
                if not self.data and not self.conn.in_transaction:
                    raise AssertionError("data outside a transaction")
                self.data += event.data
                continue
            out += self.conn.send(self.answer(event))
        raise AssertionError("event loop did not settle")

    def feed(self, data):
        self.conn.receive_data(data)
        return self.pump()

    def lines(self, data):
        return self.feed(data).decode().split("\r\n")[:-1]

    def kinds(self):
        return [type(e).__name__ for e in self.events]


def read(path):
    with open(path) as f:
        return f.read()


def crlf(text):
    return text.replace("\n", "\r\n").encode()


# --- the reference dialog -----------------------------------------------------

def reference_dialog():
    """[(client lines, server lines)] from 08_bs_session.txt's smtp_dialog run."""
    text = read(os.path.join(REF, "08_bs_session.txt"))
    text = text[text.index("smtp_dialog.py"):]
    steps, client, server = [], [], []
    for line in text.splitlines():
        if line.startswith("C: "):
            if server:
                steps.append((client, server))
                client, server = [], []
            client.append(line[3:])
        elif line == "C:":
            client.append("")
        elif line.startswith("S: "):
            server.append(line[3:])
    steps.append((client, server))
    return steps


def _same_except_product(got, want, client):
    """Equal, except the lines the brief lets differ: banner product, HELP text,
    and the EHLO extension list (ours: no EXPN/VERB/ETRN/AUTH/DELIVERBY over stdin)."""
    if client and client[0].upper().startswith("HELP"):
        assert got[-1] == "214 2.0.0 End of HELP info"
        return
    if client and client[0].upper().startswith("EHLO"):
        assert got[0] == want[0]
        assert got[1:] == ["250-ENHANCEDSTATUSCODES", "250-PIPELINING", "250-8BITMIME",
                           "250-SIZE", "250-DSN", "250-SMTPUTF8", "250-CHUNKING", "250 HELP"]
        return
    assert got == want


def test_reference_dialog_replies_match_sendmail():
    steps = reference_dialog()
    h = Harness()
    banner = h.greeting.decode()
    assert banner.startswith("220 mail.example.com ESMTP pysendmail 0.1.0; ")
    assert steps[0][1][0].startswith("220 mail.example.com ESMTP Sendmail")
    for client, want in steps[1:]:
        got = h.lines(crlf("".join(line + "\n" for line in client)))
        _same_except_product(got, want, client)
    assert h.conn.phase == CLOSED
    assert h.messages == [b"Subject: smtp\r\n\r\nhello over -bs\r\n"]


def test_reference_session_pipelined_whole_and_bytewise_agree():
    session = crlf(read(os.path.join(REF, "input_smtp_session.txt")))
    whole = Harness()
    out_whole = whole.feed(session)
    bytewise = Harness()
    out_bytes = b"".join(bytewise.feed(session[i:i + 1]) for i in range(len(session)))
    assert out_whole == out_bytes
    assert out_whole.count(b"\r\n") == 27
    assert b"553 5.0.0 <bad<addr>... Unbalanced '<'\r\n" in out_whole
    assert b"250 2.0.0 6AQEjReh019814 Message accepted for delivery\r\n" in out_whole
    assert whole.messages == bytewise.messages == [b"Subject: smtp\r\n\r\nhello over -bs\r\n"]


def test_pipelined_batch_replies_in_order():
    h = Harness()
    h.feed(b"EHLO c.example\r\n")
    got = h.lines(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<>\r\nRCPT TO:<c@z>\r\nDATA\r\n"
                  b"hi\r\n.\r\nQUIT\r\n")
    assert got == ["250 2.1.0 <a@x>... Sender ok", "250 2.1.5 <b@y>... Recipient ok",
                   "501 5.0.0 Missing recipient", "250 2.1.5 <c@z>... Recipient ok",
                   "354 End data with <CR><LF>.<CR><LF>",
                   "250 2.0.0 %s Message accepted for delivery" % QID,
                   "221 2.0.0 mail.example.com closing connection"]
    assert h.messages == [b"hi\r\n"]


# --- driver contract ------------------------------------------------------------

def test_greeting_comes_first_and_replies_are_owed():
    conn = SMTPServerConnection(ServerConfig(HOST))
    first = conn.next_event()
    assert isinstance(first, ev.Greeting)
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    conn.send(Reply(220, None, "hi"))
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(250, "2.0.0", "OK"))
    conn.receive_data(b"NOOP\r\n")
    assert isinstance(conn.next_event(), ev.Noop)
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(354, None, "go ahead"))     # 354 answers only DATA


def test_greeting_554_serves_only_quit():
    h = Harness(answers={ev.Greeting: lambda e: Reply(554, "5.3.2", "no service here")})
    assert h.greeting == b"554 5.3.2 no service here\r\n"
    assert h.lines(b"EHLO x\r\nQUIT\r\n") == [
        "503 5.5.0 No service", "221 2.0.0 mail.example.com closing connection"]


def test_421_reply_closes_and_later_input_is_ignored():
    h = Harness(answers={ev.Noop: lambda e: Reply(421, "4.3.2", "shutting down")})
    assert h.lines(b"NOOP\r\nMAIL FROM:<a@x>\r\n") == ["421 4.3.2 shutting down"]
    assert h.conn.phase == CLOSED
    assert h.feed(b"RSET\r\n") == b""


def test_quit_ends_session_and_eof_mid_command_closes():
    h = Harness()
    assert h.lines(b"QUIT\r\nNOOP\r\n") == ["221 2.0.0 mail.example.com closing connection"]
    assert isinstance(h.conn.next_event(), ev.ConnectionClosed)
    h2 = Harness()
    h2.feed(b"NOO")
    h2.conn.receive_data(b"")
    assert isinstance(h2.conn.next_event(), ev.ConnectionClosed)


# --- DATA framing: smuggling, dot-stuffing, lines ------------------------------------------

def _in_data(**kw):
    h = Harness(**kw)
    h.feed(b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
    assert h.conn.phase == "DATA"
    return h


@pytest.mark.parametrize("body, what", [
    (b"Subject: x\r\n\r\nline\n.\nMAIL FROM:<evil@x>\r\n", "linefeed (LF)"),
    (b"Subject: x\r\n\r\nline\r\n.\nMAIL FROM:<evil@x>\r\n", "linefeed (LF)"),
    (b"Subject: x\r\n\r\nline\n.\r\nMAIL FROM:<evil@x>\r\n", "linefeed (LF)"),
    (b"Subject: x\r\n\r\nline\r.\r\nMAIL FROM:<evil@x>\r\n", "carriage return (CR)"),
    (b"Subject: x\r\n\r\nbare\rCR in a line\r\n.\r\n", "carriage return (CR)"),
])
def test_bare_lf_and_bare_cr_in_data_end_the_session(body, what):
    for chunks in ([body], [body[i:i + 1] for i in range(len(body))]):
        h = _in_data()
        out = b"".join(h.feed(c) for c in chunks)
        assert out == b"554 5.5.2 Bare %s not allowed\r\n" % what.encode()
        assert h.conn.phase == CLOSED
        assert h.messages == []
        assert not any(isinstance(e, ev.MailFrom) and e.addr == "evil@x" for e in h.events)
        assert not any(isinstance(e, ev.MessageComplete) for e in h.events)


def test_lf_dot_lf_is_not_end_of_data():
    h = _in_data()
    out = h.feed(b"text\r\n\n.\n")
    assert out.startswith(b"554 5.5.2 Bare linefeed")
    assert h.messages == []


def test_end_only_at_crlf_dot_crlf_across_chunk_boundaries():
    h = _in_data()
    assert h.feed(b"one\r\n.") == b""
    assert h.feed(b"\r") == b""
    assert h.feed(b"\n") == b"250 2.0.0 %s Message accepted for delivery\r\n" % QID.encode()
    assert h.messages == [b"one\r\n"]


def test_dot_unstuffing():
    h = _in_data()
    h.feed(b"..hidden\r\n.x\r\n...\r\n. \r\nend\r\n.\r\n")
    assert h.messages == [b".hidden\r\nx\r\n..\r\n \r\nend\r\n"]


def test_empty_message_and_crlf_dot_in_body_middle():
    h = _in_data()
    h.feed(b".\r\n")
    assert h.messages == [b""]
    h.feed(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\na.\r\n.a\r\n.\r\n")
    assert h.messages[-1] == b"a.\r\na\r\n"


def test_text_line_limit_1000_octets():
    h = _in_data()
    ok_line = b"x" * 998 + b"\r\n"
    assert h.feed(ok_line + b".\r\n").startswith(b"250 ")
    assert h.messages == [ok_line]
    h.feed(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
    long_line = b"y" * 999 + b"\r\n"
    out = b"".join(h.feed(long_line[i:i + 300]) for i in range(0, len(long_line), 300))
    assert out == b""
    assert h.feed(b"after\r\n.\r\n") == b"554 5.6.0 Line too long\r\n"
    assert len(h.messages) == 1 and not h.conn.in_transaction
    assert h.lines(b"RCPT TO:<b@y>\r\n") == ["503 5.0.0 Need MAIL before RCPT"]


def test_long_partial_lines_stream_without_losing_bytes():
    h = _in_data(max_text_line=0)
    big = b"z" * 20000 + b"\r\n"
    for i in range(0, len(big), 777):
        h.feed(big[i:i + 777])
    h.feed(b".\r\n")
    assert h.messages == [big]


def test_command_line_limits():
    h = Harness()
    assert h.lines(b"NOOP " + b"a" * 600 + b"\r\n") == ["500 5.5.2 Line too long"]
    # MAIL and RCPT get the parameter allowance (RFC 1870, 3461, 4954)
    envid = b"E" * 100
    assert h.lines(b"MAIL FROM:<" + b"a" * 300 + b"@x> ENVID=" + envid + b"\r\n")[0].startswith(
        "250 2.1.0")
    # a line that never ends within the limit is dropped, answered once its end comes
    assert h.feed(b"VRFY " + b"b" * 5000) == b""
    assert h.lines(b"bbb\r\nNOOP\r\n") == ["500 5.5.2 Line too long", "250 2.0.0 OK"]


def test_message_size_limit():
    h = Harness(max_size=1000)
    ehlo = h.lines(b"EHLO c\r\n")
    assert "250-SIZE 1000" in ehlo
    assert h.lines(b"MAIL FROM:<a@x> SIZE=2000\r\n") == [
        "552 5.2.3 Message size exceeds fixed maximum message size (1000)"]
    assert h.lines(b"MAIL FROM:<a@x> SIZE=900\r\nRCPT TO:<b@y>\r\nDATA\r\n")[0].startswith("250")
    out = h.lines(b"x" * 500 + b"\r\n" + b"y" * 600 + b"\r\n.\r\n")
    assert out == ["552 5.2.3 Message exceeds maximum fixed size (1000)"]
    assert h.messages == [] and not h.conn.in_transaction


# --- BDAT (RFC 3030) ---------------------------------------------------------------------

def test_bdat_chunks_and_last():
    h = Harness()
    h.feed(b"EHLO c\r\nMAIL FROM:<a@x> BODY=8BITMIME\r\nRCPT TO:<b@y>\r\n")
    got = h.lines(b"BDAT 7\r\nhi\nthe\rBDAT 6\r\nre\r\n.\n")
    assert got == ["250 2.0.0 7 octets received", "250 2.0.0 6 octets received"]
    assert h.conn.in_transaction
    assert h.lines(b"BDAT 0 LAST\r\nNOOP\r\n") == [
        "250 2.0.0 %s Message accepted for delivery" % QID, "250 2.0.0 OK"]
    assert h.messages == [b"hi\nthe\rre\r\n.\n"]      # octets as sent: no unstuffing, no checks
    assert [e for e in h.events if isinstance(e, ev.MessageComplete)] == [
        ev.MessageComplete(13, chunked=True)]


def test_bdat_bytewise_and_last_in_one_command():
    h = Harness()
    h.feed(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n")
    wire = b"BDAT 5 LAST\r\nhello"
    out = b"".join(h.feed(wire[i:i + 1]) for i in range(len(wire)))
    assert out == b"250 2.0.0 %s Message accepted for delivery\r\n" % QID.encode()
    assert h.messages == [b"hello"]


def test_bdat_errors_consume_the_chunk():
    h = Harness()
    assert h.lines(b"BDAT 11\r\nMAIL FROM\r\nNOOP\r\n") == [
        "503 5.0.0 Need MAIL command", "250 2.0.0 OK"]
    h.feed(b"MAIL FROM:<a@x>\r\n")
    assert h.lines(b"BDAT 6\r\nRCPT\r\n") == ["503 5.0.0 Need RCPT (recipient)"]
    assert h.lines(b"BDAT x\r\n") == ["501 5.5.4 Syntax error in parameters scanning \"BDAT\""]
    h.feed(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n")
    assert h.lines(b"BDAT 3\r\nabcDATA\r\n") == ["250 2.0.0 3 octets received",
                                                  "503 5.5.1 DATA not allowed after BDAT"]
    h2 = Harness(chunking=False)
    assert h2.lines(b"BDAT 3\r\n") == ['500 5.5.1 Command unrecognized: "BDAT 3"']


def test_bdat_over_size_limit():
    h = Harness(max_size=10)
    h.feed(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n")
    assert h.lines(b"BDAT 8\r\n12345678BDAT 8 LAST\r\n12345678NOOP\r\n") == [
        "250 2.0.0 8 octets received", "552 5.2.3 Message exceeds maximum fixed size (10)",
        "250 2.0.0 OK"]
    assert h.messages == [] and not h.conn.in_transaction


# --- MAIL / RCPT parameters ------------------------------------------------------------------

def test_xtext():
    assert xtext_ok("abc+2B+3Dx") and not xtext_ok("a=b") and not xtext_ok("a+2") \
        and not xtext_ok("a b")
    assert xtext_decode("QQ+2B314+40") == "QQ+314@"


def test_dsn_parameters_parsed_and_decoded():
    h = Harness()
    h.feed(b"EHLO c\r\n")
    out = h.lines(b"MAIL FROM:<a@x> RET=hdrs ENVID=QQ+2B314 SIZE=12 BODY=7bit\r\n"
                  b"RCPT TO:<b@y> NOTIFY=success,delay ORCPT=rfc822;b+2Bext+40y\r\n"
                  b"RCPT TO:<c@y> NOTIFY=NEVER\r\n"
                  b"RCPT TO:<d@y> ORCPT=utf-8;d\\x{E9}@y\r\n")
    assert [line[:3] for line in out] == ["250"] * 4
    mail = next(e for e in h.events if isinstance(e, ev.MailFrom))
    assert mail.params == {"RET": "HDRS", "ENVID": "QQ+314", "SIZE": 12, "BODY": "7BIT"}
    rcpts = [e for e in h.events if isinstance(e, ev.RcptTo)]
    assert rcpts[0].params == {"NOTIFY": "SUCCESS,DELAY", "ORCPT": "rfc822;b+ext@y"}
    assert rcpts[1].params == {"NOTIFY": "NEVER"}
    assert rcpts[2].params == {"ORCPT": "utf-8;d\u00e9@y"}


@pytest.mark.parametrize("line, reply", [
    (b"MAIL FROM:<a@x> RET=ALL", '501 5.5.2 Bad argument "ALL" to RET'),
    (b"MAIL FROM:<a@x> RET=FULL RET=HDRS", "501 5.5.0 Duplicate RET parameter"),
    (b"MAIL FROM:<a@x> ENVID=a=b", "501 5.5.4 Syntax error in ENVID parameter value"),
    (b"MAIL FROM:<a@x> ENVID", "501 5.5.2 ENVID requires a value"),
    (b"MAIL FROM:<a@x> BODY=BINARYMIME", "501 5.5.4 Unknown BODY type BINARYMIME"),
    (b"MAIL FROM:<a@x> SIZE", "501 5.5.2 SIZE requires a value"),
    (b"MAIL FROM:<a@x> SIZE=-1", "552 5.2.3 Message size invalid"),
    (b"MAIL FROM:<a@x> FOO=BAR", "555 5.5.4 FOO parameter unrecognized"),
    (b"MAIL FROM:<a@x> AUTH=<>", "555 5.5.4 AUTH parameter unrecognized"),
    (b"MAIL FROM <a@x>", '501 5.5.2 Syntax error in parameters scanning "FROM"'),
    (b"MAIL", '501 5.5.2 Syntax error in parameters scanning ""'),
    (b"MAIL TO:<a@x>", '501 5.5.2 Syntax error in parameters scanning "TO"'),
    (b"MAIL from:", '501 5.5.2 Syntax error in parameters scanning "from"'),
    (b"MAIL FROM:<a@x", "553 5.0.0 <a@x... Unbalanced '<'"),
    (b"MAIL FROM:a@x>", "553 5.0.0 a@x>... Unbalanced '>'"),
    (b'MAIL FROM:<"a@x>', "553 5.0.0 <\"a@x>... Unbalanced '\"'"),
    (b"MAIL FROM:<a@x> " + b" ".join(b"X%d=1" % i for i in range(19)),
     "501 5.5.4 Too many parameters"),
    ("MAIL FROM:<j\u00f6rg@x>".encode(), "553 5.6.7 Address requires SMTPUTF8"),
])
def test_mail_parameter_errors(line, reply):
    h = Harness()
    h.feed(b"EHLO c\r\n")
    assert h.lines(line + b"\r\n") == [reply]
    assert not h.conn.in_transaction


@pytest.mark.parametrize("line, reply", [
    (b"RCPT TO:<b@y> NOTIFY=NEVER,SUCCESS", '501 5.5.4 Bad argument "NEVER"  to NOTIFY'),
    (b"RCPT TO:<b@y> NOTIFY=SOMETIMES", '501 5.5.4 Bad argument "SOMETIMES"  to NOTIFY'),
    (b"RCPT TO:<b@y> ORCPT=b@y", "501 5.5.4 Syntax error in ORCPT parameter value"),
    (b"RCPT TO:<b@y> ORCPT=rfc822;a=b", "501 5.5.4 Syntax error in ORCPT parameter value"),
    (b"RCPT TO:<b@y> ORCPT=rfc822;a ORCPT=rfc822;b", "501 5.5.0 Duplicate ORCPT parameter"),
    (b"RCPT TO:<b@y> SIZE=1", "555 5.5.4 SIZE parameter unrecognized"),
    (b"RCPT TO:<bad<addr>", "553 5.0.0 <bad<addr>... Unbalanced '<'"),
    (b"RCPT TO:<>", "501 5.0.0 Missing recipient"),
    (b"RCPT TO:", '501 5.5.2 Syntax error in parameters scanning "TO"'),
])
def test_rcpt_parameter_errors(line, reply):
    h = Harness()
    h.feed(b"EHLO c\r\nMAIL FROM:<a@x>\r\n")
    assert h.lines(line + b"\r\n") == [reply]
    assert h.conn.rcpt_count == 0


def test_dsn_off_refuses_dsn_parameters():
    h = Harness(dsn=False)
    assert "250-DSN" not in h.lines(b"EHLO c\r\n")
    assert h.lines(b"MAIL FROM:<a@x> RET=FULL\r\n") == [
        "504 5.7.0 Sorry, RET not supported, we do not allow DSN"]


def test_paths_null_sender_source_route_and_smtputf8():
    h = Harness()
    h.feed(b"EHLO c\r\n")
    assert h.lines(b"MAIL FROM:<>\r\n") == ["250 2.1.0 <>... Sender ok"]
    assert h.lines(b"RCPT TO:<@relay.example,@r2.example:u@dest.example>\r\n") == [
        "250 2.1.5 <@relay.example,@r2.example:u@dest.example>... Recipient ok"]
    assert h.lines(b"RCPT TO: plain@y\r\n") == ["250 2.1.5 plain@y... Recipient ok"]
    assert h.lines(b'RCPT TO:<"with space"@y>\r\n')[0].startswith("250")
    mail, *rcpts = [e for e in h.events if isinstance(e, (ev.MailFrom, ev.RcptTo))]
    assert mail.addr == "" and [r.addr for r in rcpts] == [
        "u@dest.example", "plain@y", '"with space"@y']
    h.feed(b"RSET\r\n")
    out = h.lines("MAIL FROM:<jörg@x> SMTPUTF8\r\nRCPT TO:<bö@y>\r\n".encode())
    assert out == ["250 2.1.0 <jörg@x>... Sender ok", "250 2.1.5 <bö@y>... Recipient ok"]


# --- order of commands -------------------------------------------------------------------

def test_commands_out_of_order():
    h = Harness()
    assert h.lines(b"RCPT TO:<b@y>\r\nDATA\r\nMAIL FROM:<a@x>\r\nDATA\r\n"
                   b"MAIL FROM:<c@x>\r\n") == [
        "503 5.0.0 Need MAIL before RCPT", "503 5.0.0 Need MAIL command",
        "250 2.1.0 <a@x>... Sender ok", "503 5.0.0 Need RCPT (recipient)",
        "503 5.5.0 Sender already specified"]
    assert h.lines(b"RSET\r\nRCPT TO:<b@y>\r\n") == [
        "250 2.0.0 Reset state", "503 5.0.0 Need MAIL before RCPT"]


def test_refused_recipient_does_not_count():
    h = Harness(answers={ev.RcptTo: lambda e: Reply(550, "5.1.1", "%s... User unknown" % e.raw)})
    assert h.lines(b"MAIL FROM:<a@x>\r\nRCPT TO:<nobody>\r\nDATA\r\n") == [
        "250 2.1.0 <a@x>... Sender ok", "550 5.1.1 <nobody>... User unknown",
        "503 5.0.0 Need RCPT (recipient)"]


def test_helo_checks_and_helo_resets_transaction():
    h = Harness(helo_required=True)
    assert h.lines(b"MAIL FROM:<a@x>\r\nHELO\r\nEHLO bad name!\r\nHELO c.example\r\n") == [
        "503 5.0.0 Polite people say HELO first", "501 5.0.0 HELO requires domain address",
        "501 5.0.0 Invalid domain name",
        "250 mail.example.com Hello root@localhost, pleased to meet you"]
    h.feed(b"MAIL FROM:<a@x>\r\n")
    assert h.conn.in_transaction
    h.feed(b"EHLO [127.0.0.1]\r\n")
    assert not h.conn.in_transaction and h.conn.helo == "[127.0.0.1]" and h.conn.esmtp


def test_unknown_commands_and_misc():
    h = Harness()
    assert h.lines(b"\r\nFOO bar\r\nVRFY\r\nEXPN\r\nHELP nosuch\r\nHELP mail\r\n") == [
        '500 5.5.1 Command unrecognized: ""', '500 5.5.1 Command unrecognized: "FOO bar"',
        "501 5.5.2 Argument required", "501 5.5.2 Argument required",
        '504 5.3.0 HELP topic "nosuch" unknown',
        "214-2.0.0 MAIL FROM: <sender> [ <parameters> ]",
        "214-2.0.0 \tSpecifies the sender.  Parameters are ESMTP extensions:",
        "214-2.0.0 \tSIZE=<n> BODY=7BIT|8BITMIME SMTPUTF8 RET=FULL|HDRS ENVID=<xtext>",
        "214 2.0.0 End of HELP info"]
    assert h.lines(b"\x01\x02 x\r\n") == ['500 5.5.1 Command unrecognized: "^A^B x"']
    assert h.lines(b"noop\nrset\n") == ["250 2.0.0 OK", "250 2.0.0 Reset state"]
    strict = Harness(bare_lf_commands=False)
    assert strict.lines(b"NOOP\n") == ["500 5.5.2 Bare linefeed (LF) not allowed"]


# --- STARTTLS (RFC 3207, CVE-2011-0411) -------------------------------------------------------

def test_starttls_discards_buffered_input():
    h = Harness(starttls=True)
    assert "250-STARTTLS" in h.lines(b"EHLO c\r\n")
    # the injected command arrives in the same packet as STARTTLS
    assert h.lines(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n") == ["220 2.0.0 Ready to start TLS"]
    assert h.conn.phase == "TLS_HANDSHAKE"
    assert h.conn.next_event() is NEED_DATA
    assert h.feed(b"RCPT TO:<evil@y>\r\n") == b""       # still plaintext: thrown away
    h.conn.tls_started()
    assert h.conn.discarded_bytes == len(b"MAIL FROM:<evil@x>\r\nRCPT TO:<evil@y>\r\n")
    assert not any(isinstance(e, (ev.MailFrom, ev.RcptTo)) for e in h.events)
    assert h.conn.tls and h.conn.helo is None
    ehlo = h.lines(b"EHLO c\r\n")
    assert "250-STARTTLS" not in ehlo
    assert h.lines(b"STARTTLS\r\n") == ["503 5.5.0 TLS not available"]


def test_starttls_refusals():
    h = Harness(starttls=True)
    assert h.lines(b"STARTTLS now\r\n") == ["501 5.5.2 Syntax error (no parameters allowed)"]
    h.feed(b"MAIL FROM:<a@x>\r\n")
    assert h.lines(b"STARTTLS\r\n") == ["503 5.5.0 TLS not permitted during a mail transaction"]
    assert Harness().lines(b"STARTTLS\r\n") == ["503 5.5.0 TLS not available"]
    with pytest.raises(LocalProtocolError):
        Harness().conn.tls_started()


def test_tls_required_blocks_mail_before_starttls():
    h = Harness(starttls=True, tls_required=True)
    assert h.lines(b"EHLO c\r\nMAIL FROM:<a@x>\r\n")[-1] == \
        "530 5.7.0 Must issue a STARTTLS command first"
    h.feed(b"STARTTLS\r\n")
    h.conn.tls_started()
    assert h.lines(b"MAIL FROM:<a@x>\r\n") == ["250 2.1.0 <a@x>... Sender ok"]


# --- AUTH (RFC 4954) -----------------------------------------------------------------------

def test_auth_plain_with_initial_response():
    h = Harness(auth_mechanisms=("PLAIN", "LOGIN"), auth_requires_tls=False, auth_required=True)
    assert "250-AUTH PLAIN LOGIN" in h.lines(b"EHLO c\r\n")
    assert h.lines(b"MAIL FROM:<a@x>\r\n") == ["530 5.7.0 Authentication required"]
    token = base64.b64encode(b"\0user\0secret")
    assert h.lines(b"AUTH plain " + token + b"\r\n") == ["235 2.0.0 OK Authenticated"]
    auth = [e for e in h.events if isinstance(e, ev.Auth)]
    assert auth == [ev.Auth("PLAIN", b"\0user\0secret")]
    assert h.conn.authenticated
    assert h.lines(b"AUTH PLAIN =\r\n") == ["503 5.5.0 Already Authenticated"]
    assert h.lines(b"MAIL FROM:<a@x> AUTH=user+40x\r\n") == ["250 2.1.0 <a@x>... Sender ok"]
    assert [e.params for e in h.events if isinstance(e, ev.MailFrom)][-1] == {"AUTH": "user@x"}


def test_auth_login_exchange_and_abort():
    replies = iter([Reply(334, None, "VXNlcm5hbWU6"), Reply(334, None, "UGFzc3dvcmQ6"),
                    R.auth_failed(), Reply(334, None, "VXNlcm5hbWU6")])
    h = Harness(auth_mechanisms=("LOGIN",), auth_requires_tls=False,
                answers={ev.Auth: lambda e: next(replies),
                         ev.AuthResponse: lambda e: next(replies)})
    h.feed(b"EHLO c\r\n")
    assert h.lines(b"AUTH LOGIN\r\n" + base64.b64encode(b"user") + b"\r\n") == [
        "334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6"]
    assert h.conn.phase == "AUTH"
    # in the exchange a line is a response, never a command
    assert h.lines(base64.b64encode(b"MAIL FROM:<x@y>") + b"\r\n") == [
        "535 5.7.0 authentication failed"]
    responses = [e.data for e in h.events if isinstance(e, ev.AuthResponse)]
    assert responses == [b"user", b"MAIL FROM:<x@y>"]
    assert not h.conn.authenticated and h.conn.phase == "COMMAND"
    assert h.lines(b"AUTH LOGIN\r\n*\r\nNOOP\r\n") == [
        "334 VXNlcm5hbWU6", "501 5.0.0 AUTH aborted", "250 2.0.0 OK"]


def test_auth_refusals():
    h = Harness(auth_mechanisms=("PLAIN",))                 # needs TLS by default
    assert not any(line.startswith("250-AUTH") for line in h.lines(b"EHLO c\r\n"))
    assert h.lines(b"AUTH PLAIN\r\n") == ["503 5.3.3 AUTH not available"]
    h2 = Harness(auth_mechanisms=("PLAIN",), auth_requires_tls=False)
    assert h2.lines(b"AUTH PLAIN\r\n") == ["503 5.0.0 Polite people say HELO first"]
    h2.feed(b"EHLO c\r\n")
    assert h2.lines(b"AUTH\r\nAUTH CRAM-MD5\r\nAUTH PLAIN !!!\r\n") == [
        "501 5.5.2 AUTH mechanism must be specified",
        "504 5.3.3 AUTH mechanism CRAM-MD5 not available",
        "501 5.5.4 cannot BASE64 decode '!!!'"]
    h2.feed(b"MAIL FROM:<a@x>\r\n")
    assert h2.lines(b"AUTH PLAIN\r\n") == [
        "503 5.5.0 AUTH not permitted during a mail transaction"]


# --- layering -------------------------------------------------------------------------------

def test_proto_modules_do_no_io():
    """pysendmail/proto imports its siblings, model/errors and binascii: no I/O modules."""
    proto = os.path.join(REPO, "pysendmail", "proto")
    checked = 0
    for name in sorted(os.listdir(proto)):
        if not (name.startswith("smtp_") and name.endswith(".py")):
            continue
        checked += 1
        for node in ast.walk(ast.parse(read(os.path.join(proto, name)))):
            if isinstance(node, ast.Import):
                assert [a.name for a in node.names] == ["binascii"], (name, ast.dump(node))
            elif isinstance(node, ast.ImportFrom):
                ok = node.level == 1 or (node.level == 2 and node.module in ("model", "errors"))
                assert ok, (name, ast.dump(node))
    assert checked >= 5


def test_strict_pipelining_reproduces_sendmail_on_a_piped_file():
    """08_bs_session.txt's first run: the session file piped at once, LF line ends.
    Debian's Sendmail (8.17.1.9-2+deb12u2) calls input sent before the EHLO reply a
    protocol error, then refuses all but NOOP/RSET/QUIT; strict_pipelining does the same."""
    text = read(os.path.join(REF, "08_bs_session.txt"))
    block = text[:text.index("[exit status")].splitlines()
    want = [line for line in block[2:] if line]
    h = Harness(strict_pipelining=True)
    got = h.lines(read(os.path.join(REF, "input_smtp_session.txt")).encode())
    assert block[1].startswith("220 ") and got == want
    assert len(got) == 16 and h.messages == []
    assert h.conn.phase == CLOSED


def test_strict_pipelining_allows_waiting_clients_and_mail_rcpt_batches():
    h = Harness(strict_pipelining=True)
    assert h.lines(b"EHLO c\r\n")[-1] == "250 HELP"
    assert h.lines(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")[-1].startswith("354")
    assert h.lines(b"x\r\n.\r\nQUIT\r\n")[0].startswith("250 2.0.0")


def test_invalid_utf8_is_not_echoed():
    h = Harness()
    assert h.lines(b"FOO \xff\xfe\r\n") == ['500 5.5.1 Command unrecognized: "FOO ??"']


def test_over_long_auth_response_ends_the_exchange():
    h = Harness(auth_mechanisms=("LOGIN",), auth_requires_tls=False,
                answers={ev.Auth: lambda e: Reply(334, None, "VXNlcm5hbWU6")})
    h.feed(b"EHLO c\r\n")
    assert h.lines(b"AUTH LOGIN\r\n") == ["334 VXNlcm5hbWU6"]
    assert h.feed(b"A" * 20000) == b""
    assert h.lines(b"A\r\nNOOP\r\n") == ["500 5.5.2 Line too long", "250 2.0.0 OK"]


def test_enhanced_status_codes_can_be_turned_off():
    h = Harness(enhancedstatuscodes=False)
    got = h.lines(b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT\r\n")
    assert "250-ENHANCEDSTATUSCODES" not in got
    assert got[-3:] == ["250 <a@x>... Sender ok", "250 <b@y>... Recipient ok",
                        '501 Syntax error in parameters scanning ""']


@pytest.mark.parametrize("text, code, enhanced, lines", [
    ("550 5.7.1 Command rejected", 550, "5.7.1", ["Command rejected"]),
    ("451-4.7.1 first\r\n451-4.7.1 second\r\n451 4.7.1 third", 451, "4.7.1",
     ["first", "second", "third"]),
    ("554 no enhanced code here", 554, None, ["no enhanced code here"]),
    ("550-5.7.1 one\n550 other words", 550, "5.7.1", ["one", "other words"]),
    ("421 9.9.9 not a status", 421, None, ["9.9.9 not a status"]),
])
def test_reply_parse(text, code, enhanced, lines):
    r = R.parse(text)
    assert (r.code, r.enhanced, r.lines) == (code, enhanced, lines)
    assert R.is_status("5.1.10") and not R.is_status("5.1") and not R.is_status("6.0.0")
