"""Property tests (hypothesis) of the sans-I/O SMTP server core's driver contract.

Two generators feed pysendmail.proto.smtp_server: raw byte streams, and
grammar-built sessions (valid and near-valid commands, DATA bodies, BDAT chunks),
both cut at random receive_data boundaries, under random ServerConfigs, with a
driver that accepts or refuses each command at random. The driver checks after
every step: no exception escapes; a reply is owed exactly once (next_event()
and a second send() refuse while/after it is owed); `phase` is one of the
defined phases; `in_transaction` follows MAIL/RSET/HELO/end of data; nothing
but ConnectionClosed comes after ConnectionClosed; DataChunk only inside a
message; the input buffer stays within the line limits; every session ends in
ConnectionClosed after end of input. For grammar sessions, each accepted DATA
message equals one generated body after dot-unstuffing, and each BDAT message
one run of generated chunks. Bounded so the file runs in a few seconds.
"""
import os

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import pytest

from pysendmail.proto import smtp_events as ev
from pysendmail.proto import smtp_server as S
from pysendmail.proto.smtp_events import LocalProtocolError, NEED_DATA
from pysendmail.proto.smtp_reply import Reply

PHASES = {S.GREETING, S.COMMAND, S.DATA, S.BDAT, S.AUTH, S.TLS_HANDSHAKE, S.REFUSED, S.CLOSED}
# SMTP_FUZZ_EXAMPLES=20000 for a longer hunt; the default keeps the file at a few seconds.
FUZZ = settings(max_examples=int(os.environ.get("SMTP_FUZZ_EXAMPLES", "400")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

configs = st.fixed_dictionaries({
    "max_size": st.sampled_from([0, 60, 5000]),
    "max_text_line": st.sampled_from([1000, 40, 0]),
    "max_rcpts": st.sampled_from([0, 2]),
    "starttls": st.booleans(),
    "auth_mechanisms": st.sampled_from([(), ("PLAIN", "LOGIN")]),
    "auth_requires_tls": st.booleans(),
    "helo_required": st.sampled_from([False, False, True]),
    "chunking": st.sampled_from([True, True, False]),
    "bare_lf_commands": st.booleans(),
    "strict_pipelining": st.sampled_from([False, False, False, True]),
    "novrfy": st.booleans(),
    "max_path": st.sampled_from([0, 256]),
    "max_local_part": st.sampled_from([0, 64]),
})


class FuzzDriver:
    """Answers every event with a plausible reply chosen by `rnd`, checking the
    contract as it goes. `rnd` is a random.Random from hypothesis."""

    def __init__(self, config, rnd):
        self.cfg = S.ServerConfig("mx.example", **config)
        self.conn = S.SMTPServerConnection(self.cfg)
        self.rnd = rnd
        self.events = []
        self.data = bytearray()
        self.messages = []           # (chunked, bytes) per accepted message
        self.closed = False
        self.mail_ok = False         # a MAIL accepted since the last reset
        self.data_open = False       # DATA answered 354 and not yet ended
        self.limit = max(self.cfg.max_command_line + S.PARAM_ALLOWANCE,
                         S.AUTH_LINE_MAX if self.cfg.auth_mechanisms else 0,
                         (self.cfg.max_text_line or 4096) + 1)

    def reply_for(self, e):
        r = self.rnd.random()
        kind = type(e)
        if kind is ev.Rejected:
            return e.reply
        if kind is ev.Greeting:
            return Reply(220, None, "mx ESMTP") if r < 0.95 else Reply(554, "5.3.2", "no")
        if kind is ev.DataStart:
            return Reply(354, None, "go") if r < 0.9 else Reply(451, "4.3.0", "later")
        if kind in (ev.Auth, ev.AuthResponse):
            return [Reply(334, None, "VXNlcm5hbWU6"), Reply(235, "2.0.0", "OK"),
                    Reply(535, "5.7.0", "failed")][int(r * 3)]
        if kind is ev.StartTls:
            return Reply(220, "2.0.0", "Ready") if r < 0.8 else Reply(454, "4.3.3", "no")
        if kind is ev.Quit:
            return Reply(221, "2.0.0", "bye")
        if r < 0.8:
            return Reply(250, "2.0.0", "ok %s" % kind.__name__)
        if r < 0.98:
            return Reply(550 if r < 0.9 else 451, "5.0.0", "refused")
        return Reply(421, "4.3.2", "shutting down")

    def check_state(self, settled=False):
        c = self.conn
        assert c.phase in PHASES
        if c.in_transaction:
            assert self.mail_ok
        if settled:       # all complete lines taken: at most one partial line is held
            assert len(c._buf) <= self.limit or c.phase in (S.GREETING, S.CLOSED)

    def pump(self):
        for _ in range(100000):
            before = self.conn.phase
            e = self.conn.next_event()
            if e is NEED_DATA:
                self.check_state(settled=True)
                return
            assert not self.closed or type(e) is ev.ConnectionClosed, e
            self.events.append(e)
            kind = type(e)
            if kind is ev.ConnectionClosed:
                self.closed = True
                self.data_open = False
                assert self.conn.phase == S.CLOSED
                assert type(self.conn.next_event()) is ev.ConnectionClosed
                return
            if kind is ev.DataChunk:
                assert self.conn.phase in (S.DATA, S.BDAT)
                assert self.data_open or self.conn.phase == S.BDAT
                assert self.conn.in_transaction and e.data
                self.data += e.data
                continue
            assert e.needs_reply
            with pytest.raises(LocalProtocolError):
                self.conn.next_event()            # a reply is owed first
            reply = self.reply_for(e)
            wire = self.conn.send(reply)
            assert wire == reply.to_bytes(self.cfg.enhancedstatuscodes)
            assert all(len(line) <= 510 for line in wire.split(b"\r\n"))
            with pytest.raises(LocalProtocolError):
                self.conn.send(reply)             # exactly one reply
            self.after(e, before, reply)
            self.check_state()
            if kind is ev.StartTls and reply.code == 220:
                assert self.conn.phase == S.TLS_HANDSHAKE
                self.conn.tls_started()           # the handshake, as the driver does it
                self.mail_ok = False
                assert not self.conn.in_transaction and self.conn.helo is None
        raise AssertionError("the core did not settle")

    def after(self, e, before, reply):
        kind, ok, c = type(e), reply.code < 300, self.conn
        if reply.code == 421:
            assert c.phase == S.CLOSED
            return
        if kind is ev.MailFrom and ok:
            assert c.in_transaction
            self.mail_ok = True
            self.data.clear()
        elif kind in (ev.Rset, ev.Helo) and ok:
            assert not c.in_transaction
            self.mail_ok = False
            self.data.clear()
        elif kind is ev.DataStart:
            self.data_open = reply.code == 354
            assert c.phase == (S.DATA if self.data_open else S.COMMAND)
            self.data.clear()
        elif kind is ev.MessageComplete:
            assert not c.in_transaction and c.phase == S.COMMAND
            if ok:
                self.messages.append((e.chunked, bytes(self.data)))
            assert e.size >= len(self.data)
            self.data.clear()
            self.mail_ok = self.data_open = False
        elif kind is ev.BdatChunk and not ok:
            assert not c.in_transaction
            self.mail_ok = False
            self.data.clear()
        elif kind is ev.Rejected:
            if before in (S.DATA, S.BDAT) or c.phase == S.CLOSED:
                assert not c.in_transaction or c.phase == S.CLOSED
                self.data.clear()
                self.data_open = False
                if c.phase != S.CLOSED:
                    self.mail_ok = False
            if not c.in_transaction:
                self.mail_ok = False
                self.data.clear()
        if c.phase == S.CLOSED:
            self.data_open = False

    def run(self, pieces):
        self.pump()
        for piece in pieces:
            if self.closed:
                break
            self.conn.receive_data(piece)
            self.pump()
            assert len(self.conn._buf) <= self.limit + len(piece) or self.conn.phase == S.CLOSED
        self.conn.receive_data(b"")
        self.pump()
        assert self.closed and self.conn.phase == S.CLOSED


def cut(wire, points):
    points = sorted({p % (len(wire) + 1) for p in points})
    out, last = [], 0
    for p in points + [len(wire)]:
        out.append(wire[last:p])
        last = p
    return [p for p in out if p]


# --- random bytes ------------------------------------------------------------------------

noise = st.lists(st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"\r\n.\r\n", b"\n.\n", b"\r.\r",
                     b"EHLO x\r\n", b"MAIL FROM:<a@b>\r\n", b"RCPT TO:<c@d>\r\n", b"DATA\r\n",
                     b"BDAT 5\r\n", b"BDAT 3 LAST\r\n", b"STARTTLS\r\n", b"AUTH PLAIN\r\n",
                     b"AUTH LOGIN dXNlcg==\r\n", b"RSET\r\n", b"QUIT\r\n", b"\x00\xff",
                     b"x" * 600, b"y" * 1500])), max_size=30)


@FUZZ
@given(configs, noise, st.lists(st.integers(0, 100000), max_size=12), st.randoms())
def test_random_byte_streams_keep_the_contract(config, parts, points, rnd):
    wire = b"".join(parts)
    FuzzDriver(config, rnd).run(cut(wire, points))


# --- grammar-built sessions ---------------------------------------------------------------------

addr = st.sampled_from(["<a@x.example>", "<>", "<b@y>", "plain@z", "<@r.example:u@d>",
                        "<" + "l" * 70 + "@x>", "<bad<x>", "<\"q u\"@y>", "<j\u00f6rg@x>",
                        "<u@" + "d" * 260 + ">"])
mail_param = st.sampled_from(["", " SIZE=10", " SIZE=999999", " BODY=8BITMIME", " BODY=7BIT",
                              " SMTPUTF8", " RET=HDRS", " ENVID=a+2Bb", " ENVID=bad=x",
                              " AUTH=<>", " FOO=1", " SIZE=1 SIZE=2"])
rcpt_param = st.sampled_from(["", " NOTIFY=NEVER", " NOTIFY=SUCCESS,DELAY", " NOTIFY=NEVER,DELAY",
                              " ORCPT=rfc822;a+40b", " ORCPT=utf-8;\\x{E9}@b",
                              " ORCPT=utf-8;\\x{FFFFFF}", " ORCPT=x"])
simple = st.sampled_from(["EHLO client.example", "HELO client.example", "ehlo  c", "HELO",
                          "RSET", "NOOP", "VRFY root", "EXPN list", "HELP", "HELP mail",
                          "STARTTLS", "AUTH PLAIN AHUAcA==", "AUTH LOGIN", "dXNlcg==", "*",
                          "MAIL FROM <a@x>", "RCPT TO:", "FOO bar", "", " NOOP", "DATA x",
                          "BDAT", "BDAT -1", "BDAT 2 MORE", "QUIT", "NOOP " + "n" * 600])
body_line = st.text(alphabet="ab .:-\t", max_size=50)


@st.composite
def items(draw):
    kind = draw(st.sampled_from(["simple", "mail", "rcpt", "rcpt", "data", "bdat", "bdat",
                                 "txn", "txn", "txn"]))
    if kind == "txn":     # a whole valid transaction, so that messages get through often
        lead = b"MAIL FROM:<s@x.example>\r\nRCPT TO:<r@y.example>\r\n"
        kind = draw(st.sampled_from(["data", "bdat"]))
    else:
        lead = b""
    if kind == "simple":
        return ("line", draw(simple).encode() + draw(st.sampled_from([b"\r\n", b"\n"])))
    if kind == "mail":
        return ("line", ("MAIL FROM:%s%s\r\n" % (draw(addr), draw(mail_param))).encode())
    if kind == "rcpt":
        return ("line", ("RCPT TO:%s%s\r\n" % (draw(addr), draw(rcpt_param))).encode())
    if kind == "data":
        lines = [line.encode() for line in draw(st.lists(body_line, max_size=8))]
        body = b"".join(line + b"\r\n" for line in lines)
        stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                           for line in lines)
        return ("data", body, lead + b"DATA\r\n" + stuffed + b".\r\n")
    content = draw(st.binary(max_size=30))
    last = bool(lead) or draw(st.booleans())
    head = lead + b"BDAT %d%s\r\n" % (len(content), b" LAST" if last else b"")
    return ("bdat", content, head + content, last)


@FUZZ
@given(configs, st.lists(items(), max_size=25), st.lists(st.integers(0, 100000), max_size=15),
       st.randoms())
def test_grammar_sessions_keep_the_contract_and_the_message(config, session, points, rnd):
    # number the DATA bodies so each accepted message names its own
    bodies, chunks, wire = [], [], bytearray(b"EHLO client.example\r\n" if points else b"")
    for n, item in enumerate(session):
        if item[0] == "data":
            tag = b"n%d\r\n" % n
            bodies.append(tag + item[1])
            at = item[2].index(b"DATA\r\n") + 6
            wire += item[2][:at] + tag + item[2][at:]
        elif item[0] == "bdat":
            chunks.append((item[1], item[3]))
            wire += item[2]
        else:
            wire += item[1]
    d = FuzzDriver(config, rnd)
    d.run(cut(bytes(wire), points))
    event("DATA messages: %d, BDAT messages: %d" % (
        sum(not c for c, _ in d.messages), sum(c for c, _ in d.messages)))
    data_msgs = [m for chunked, m in d.messages if not chunked]
    it = iter(bodies)
    assert all(any(m == b for b in it) for m in data_msgs), (data_msgs, bodies)
    for chunked, m in d.messages:
        if chunked:
            assert any(b"".join(c for c, _ in chunks[j:k + 1]) == m
                       for k in range(len(chunks)) if chunks[k][1]
                       for j in range(k + 1)), (m, chunks)


def test_valid_pipelined_session_delivers_every_body():
    """The same driver, every command accepted: each body arrives whole, at any cut."""
    import random
    body = b"Subject: t\r\n\r\n.leading dot\r\n..two\r\nend\r\n"
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    wire = (b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n" + stuffed + b".\r\n"
            b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 4\r\nabcdBDAT 2 LAST\r\nefQUIT\r\n")

    class Yes(random.Random):
        def random(self):
            return 0.0

    for i in range(1, len(wire)):
        d = FuzzDriver({}, Yes())
        d.run([wire[:i], wire[i:]])
        assert d.messages == [(False, body), (True, b"abcdef")]
