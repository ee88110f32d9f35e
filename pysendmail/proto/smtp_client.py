"""The sans-I/O SMTP / LMTP client core (RFC 5321, 2033, 2920, 3207, 3461, 4954), h11 style.

The driver owns sockets, TLS, time and the queue; after every call it writes
conn.data_to_send():

    conn = SMTPClientConnection("me.example.org", starttls="may")
    conn.receive_data(bytes_read)        # b"" = the peer closed
    ev = conn.next_event()               # an event, or NEED_DATA (read more)

SMTPClientConnection(helo_name, *, lmtp=False, esmtp=True, starttls="may" ("never",
"may", "must"), credentials=None ((user, password[, authzid])), auth_plaintext=False,
mechanisms=("PLAIN", "LOGIN"): the SASL mechanisms we may use, in our order of preference).
lmtp says LHLO (no HELO fallback) and reads one reply per accepted recipient after
the dot; esmtp=False says HELO at once; EHLO answered 5xx falls back to HELO.

Events (__slots__ classes, equal by value):
  Ready(extensions, tls, authenticated)  set-up done: call send_message() or quit()
      (again after each TransactionDone). extensions: dict KEYWORD -> parameter text.
  TlsUpgrade()  220 to STARTTLS: handshake, then tls_started() (EHLO again); on failure
      abort(). Bytes read before the handshake end the session (response injection).
  RcptReply(index, outcome)  the reply to RCPT for rcpts[index].
  SendBody()  354: send_body(chunk) (LF line ends, as queued) ..., then end_body().
  TransactionDone(outcomes)  one final Outcome per recipient of send_message(), in
      order; comes also when the connection is lost mid-transaction (before the next).
  ConnectionClosed(outcome, stage)  terminal (repeated by next_event): write
      data_to_send() (maybe a QUIT) and close. outcome: the reply to QUIT, a failed
      greeting/EHLO/STARTTLS/AUTH, a 421, end of input, a protocol error. stage:
      what was awaited: greeting ehlo helo starttls tls auth rset mail rcpt data body
      dot quit idle. A 4xx leaves untried messages queued.

Outcome(code, status, text, reply): basic code, RFC 3463 status (the peer's when it
has ENHANCEDSTATUSCODES, else 2.0.0/4.0.0/5.0.0), a log line, and the peer's Reply
(None when we decided: 552 5.3.4 over SIZE, 553 5.6.7 no SMTPUTF8, 451 4.5.0
protocol error, 421 4.4.2 lost, 451 4.7.0 TLS/AUTH impossible (the refusal stays in
reply), 553 5.1.3/5.1.7 CR/LF in an address). .diagnostic = "smtp; 550 5.1.1 text";
.ok / .transient / .permanent by code.

send_message(sender, rcpts, size=None, body_8bit=False, smtputf8=False, ret=None,
envid=None): rcpts = [(address, notify or None, orcpt "type;addr" or None)]. Before
it, needs_7bit(body_8bit) True means: convert to 7 bit, pass body_8bit=False. Other
calls: send_body, end_body, quit, tls_started, abort(text, code=421, status="4.4.2").
Attributes: state, extensions, esmtp, tls, authenticated, max_size, auth_mechanisms,
pipelining. Misuse raises smtp_events.LocalProtocolError.

With PIPELINING, [RSET] MAIL, all RCPTs and DATA go in one write; without, one at a
time, DATA only if a recipient was accepted. After MAIL was accepted and no final
reply came, the next send_message() starts with RSET. DSN parameters (xtext) only
if the peer said DSN, BODY=8BITMIME with 8BITMIME, SIZE= with SIZE. Credentials go
as PLAIN (else LOGIN) under TLS only unless auth_plaintext; unusable ones fail the
session (451 4.7.0), never sent in clear nor silently skipped. Replies: multi-line,
bare LF ok, MAX_LINE octets a line, MAX_LINES lines; else a protocol error.
BodyEncoder (usable alone): CRLF line ends (CRLF, LF, bare CR each end a line, so no
bare CR goes out: smuggling), dot-stuffing, any chunk split; no folding of long lines.
Pure code: imports only binascii and sibling proto modules.
"""
import binascii

from .smtp_events import NEED_DATA, LocalProtocolError
from .smtp_reply import Reply

MAX_LINE = 4096          # octets of one reply line, line end not counted
MAX_LINES = 100          # lines of one reply
PIPE_KINDS = ("rset", "mail", "rcpt", "data")

GREETING, SETUP, TLS_WAIT, READY, TXN, BODY, QUITTING, CLOSED = (
    "GREETING", "SETUP", "TLS_WAIT", "READY", "TXN", "BODY", "QUITTING", "CLOSED")


class Event:
    __slots__ = ()

    def __init__(self, *values):
        for name, value in zip(self.__slots__, values, strict=True):
            setattr(self, name, value)

    def _fields(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __eq__(self, other):
        return type(self) is type(other) and self._fields() == other._fields()

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__,
                           ", ".join("%s=%r" % kv for kv in self._fields().items()))


def _event(name, fields):
    return type(name, (Event,), {"__slots__": fields})


Ready = _event("Ready", ("extensions", "tls", "authenticated"))
TlsUpgrade = _event("TlsUpgrade", ())
RcptReply = _event("RcptReply", ("index", "outcome"))
SendBody = _event("SendBody", ())
TransactionDone = _event("TransactionDone", ("outcomes",))
ConnectionClosed = _event("ConnectionClosed", ("outcome", "stage"))


class Outcome(Event):
    """A result: basic code, RFC 3463 status, a text line, and the peer's Reply if any."""
    __slots__ = ("code", "status", "text", "reply")

    def __init__(self, code, status, text, reply=None):
        Event.__init__(self, code, status, text, reply)

    @classmethod
    def from_reply(cls, reply):
        status = reply.enhanced or "%d.0.0" % (reply.code // 100)
        return cls(reply.code, status, " ".join(reply.lines), reply)

    ok = property(lambda self: self.code < 400)
    transient = property(lambda self: 400 <= self.code < 500)
    permanent = property(lambda self: self.code >= 500)

    @property
    def diagnostic(self):
        """The DSN Diagnostic-Code value for a peer's reply: "smtp; 550 5.1.1 text"."""
        r = self.reply
        if r is not None:
            words = ["smtp;", str(r.code), r.enhanced, " ".join(r.lines)]
            return " ".join(w for w in words if w)


class BodyEncoder:
    """LF-ended message bytes -> CRLF line ends and dot-stuffing, chunk by chunk."""
    __slots__ = ("_bol", "_cr")

    def __init__(self):
        self._bol = True        # the next octet starts a line
        self._cr = False        # the last chunk ended in CR (already sent as CRLF)

    def encode(self, chunk):
        data = bytes(chunk)
        if not data:
            return b""
        if self._cr and data[:1] == b"\n":
            data = data[1:]
        self._cr = data.endswith(b"\r")
        if not data:
            return b""
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out = data.replace(b"\n.", b"\n..").replace(b"\n", b"\r\n")
        if self._bol and data[:1] == b".":
            out = b"." + out
        self._bol = data.endswith(b"\n")
        return out

    def terminator(self):
        """The end of data: CRLF first when the body did not end with a line end."""
        return b".\r\n" if self._bol else b"\r\n.\r\n"


def xtext(value):
    """RFC 3461 xtext of a str (UTF-8 octets outside "!".."~", "+" and "=" as +HH)."""
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b not in (0x2B, 0x3D) else "+%02X" % b
                   for b in value.encode("utf-8", "surrogateescape"))


def orcpt_param(orcpt):
    """ORCPT= for "type;address"; utf-8 addresses as RFC 6533 utf-8-addr-xtext."""
    kind, _, addr = orcpt.partition(";")
    if kind.strip().lower() == "utf-8":
        return "ORCPT=utf-8;" + "".join(c if "!" <= c <= "~" and c not in "+=\\"
                                        else "\\x{%X}" % ord(c) for c in addr)
    return "ORCPT=%s;%s" % (xtext(kind.strip()), xtext(addr))


def _is_status(tok, cls):
    parts = tok.split(".")
    return (len(parts) == 3 and parts[0] == cls and all(
        p.isascii() and p.isdigit() and 1 <= len(p) <= 3 for p in parts))


def _bad_text(s):
    return any(c in s for c in "\r\n\0")


class SMTPClientConnection:
    """One outbound SMTP or LMTP session. See the module docstring."""

    def __init__(self, helo_name, *, lmtp=False, esmtp=True, starttls="may",
                 credentials=None, auth_plaintext=False, mechanisms=("PLAIN", "LOGIN")):
        if starttls not in ("never", "may", "must"):
            raise ValueError("starttls must be never, may or must")
        if _bad_text(helo_name) or not helo_name:
            raise ValueError("bad HELO name")
        self.helo_name, self.lmtp, self.starttls_policy = helo_name, lmtp, starttls
        self._credentials, self.auth_plaintext = credentials, auth_plaintext
        self._mechanisms = [m for m in mechanisms or ("PLAIN", "LOGIN") if m in ("PLAIN", "LOGIN")]
        self._want_esmtp = esmtp or lmtp
        self.state, self.tls, self.authenticated = GREETING, False, False
        self._in, self._out, self._events, self._queue = bytearray(), bytearray(), [], []
        self._expect = [("greeting", None)]     # (kind, arg) of replies still owed
        self._eof = self._injected = self._dirty = self._tls_refused = False
        self._closed = self._auth_mech = self._encoder = None
        self._auth_step = 0
        self._reset_session()
        self._txn_clear()

    def _reset_session(self):
        self.esmtp = self._enhanced = False
        self.extensions, self.max_size, self.auth_mechanisms = {}, 0, ()

    def _txn_clear(self):
        self._outcomes, self._accepted, self._mail_ok, self._rcpt_left = None, [], False, 0

    @property
    def pipelining(self):
        return "PIPELINING" in self.extensions

    # --- driver API ---------------------------------------------------------
    def receive_data(self, data):
        """Feed bytes read from the peer; b"" marks end of input."""
        if not data:
            self._eof = True
        elif self.state == TLS_WAIT:
            self._injected = True
        elif self.state != CLOSED:
            self._in += data

    def data_to_send(self):
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self):
        while not self._events:
            if self.state == CLOSED:
                return self._closed
            if self.state == TLS_WAIT and self._injected:
                self._protocol_error("data received before the TLS handshake")
                continue
            reply = None if self.state == TLS_WAIT else self._read_reply()
            if reply is not None:
                self._dispatch(reply)
            elif self.state != CLOSED:
                if not self._eof:
                    return NEED_DATA
                self._close(Outcome(221, "2.0.0", "connection closed after QUIT")
                            if self.state == QUITTING else
                            Outcome(421, "4.4.2", "connection closed by the peer"))
        return self._events.pop(0)

    def tls_started(self):
        """The TLS handshake after STARTTLS succeeded: start over with EHLO (RFC 3207 4.2)."""
        if self.state != TLS_WAIT:
            raise LocalProtocolError("tls_started() without a TlsUpgrade")
        if self._injected or self._in:
            self._protocol_error("data received before the TLS handshake")
            return
        self.tls, self.state = True, SETUP
        self._reset_session()
        self._say_hello()

    def abort(self, text, code=421, status="4.4.2"):
        """The driver gives up (timeout, TLS handshake failure): close, no QUIT."""
        if self.state != CLOSED:
            self._close(Outcome(code, status, text))

    def needs_7bit(self, body_8bit):
        """Must the driver convert an 8-bit body to 7 bit before sending it here?"""
        return bool(body_8bit) and "8BITMIME" not in self.extensions

    def send_message(self, sender, rcpts, size=None, body_8bit=False, smtputf8=False,
                     ret=None, envid=None):
        if self.state != READY:
            raise LocalProtocolError("send_message() in state %s" % self.state)
        if not rcpts:
            raise LocalProtocolError("send_message() without recipients")
        if self.needs_7bit(body_8bit):
            raise LocalProtocolError("8-bit body but the peer has no 8BITMIME")
        rcpts = [tuple(r) for r in rcpts]
        n = len(rcpts)
        smtputf8 = smtputf8 or not (sender.isascii() and all(r[0].isascii() for r in rcpts))
        self._txn_clear()
        self._outcomes = [None] * n
        self.state = TXN
        fail = None
        if smtputf8 and "SMTPUTF8" not in self.extensions:
            fail = Outcome(553, "5.6.7", "the peer does not support SMTPUTF8")
        elif size and self.max_size and size > self.max_size:
            fail = Outcome(552, "5.3.4", "message size %d exceeds the peer's limit %d"
                           % (size, self.max_size))
        elif _bad_text(sender + (ret or "") + (envid or "")):
            fail = Outcome(553, "5.1.7", "bad sender or envelope parameter")
        if fail is not None:
            self._outcomes = [fail] * n
            self._finish_txn()
            return
        dsn = "DSN" in self.extensions
        has_size = size is not None and "SIZE" in self.extensions
        params = [p for p, on in (("SIZE=%s" % size, has_size),
                                  ("BODY=8BITMIME", body_8bit), ("SMTPUTF8", smtputf8),
                                  ("RET=%s" % (ret or "").upper(), dsn and ret),
                                  ("ENVID=" + xtext(envid or ""), dsn and envid)) if on]
        if self._dirty:
            self._queue.append((b"RSET\r\n", "rset", None))
        self._queue.append((self._line("MAIL FROM:<%s>" % sender, params), "mail", None))
        for i, (addr, notify, orcpt) in enumerate(rcpts):
            if _bad_text(addr + (notify or "") + (orcpt or "")):
                self._outcomes[i] = Outcome(553, "5.1.3", "bad recipient address")
                continue
            params = ([] if not (dsn and notify) else ["NOTIFY=" + notify.upper()]) + (
                [] if not (dsn and orcpt) else [orcpt_param(orcpt)])
            self._queue.append((self._line("RCPT TO:<%s>" % addr, params), "rcpt", i))
            self._rcpt_left += 1
        if not self._rcpt_left:
            self._queue.clear()
            self._finish_txn()
            return
        if self.pipelining:
            self._queue.append((b"DATA\r\n", "data", None))
        self._flush()

    def send_body(self, chunk):
        """Message bytes after SendBody (LF line ends); encoded into data_to_send()."""
        if self._body_ok("send_body()"):
            self._out += self._encoder.encode(chunk)

    def end_body(self):
        """The end of the message: write the final dot, await the reply (LMTP: replies)."""
        if not self._body_ok("end_body()"):
            return
        self._out += self._encoder.terminator()
        self._encoder = None
        self.state = TXN
        if self.lmtp:
            self._expect.extend(("dot", i) for i in self._accepted)
        else:
            self._expect.append(("dot", None))

    def _body_ok(self, what):
        if self.state not in (BODY, CLOSED):
            raise LocalProtocolError(what + " outside the message body")
        return self.state == BODY      # CLOSED: the peer went away, ConnectionClosed tells

    def quit(self):
        if self.state == CLOSED:
            return
        if self.state != READY:
            raise LocalProtocolError("quit() in state %s" % self.state)
        self.state = QUITTING
        self._send(b"QUIT\r\n", "quit", None)

    def _line(self, cmd, params):
        return (" ".join([cmd] + params) + "\r\n").encode("utf-8", "surrogateescape")

    def _send(self, line, kind, arg):
        self._out += line
        self._expect.append((kind, arg))

    def _flush(self):
        while self._queue:
            line, kind, arg = self._queue[0]
            if self._expect and not (self.pipelining and kind in PIPE_KINDS
                                     and self._expect[-1][0] in PIPE_KINDS[:3]):
                return
            self._queue.pop(0)
            self._send(line, kind, arg)

    def _say_hello(self, verb=None):
        verb = verb or ("LHLO" if self.lmtp else "EHLO" if self._want_esmtp else "HELO")
        self._send(self._line(verb + " " + self.helo_name, []),
                   "helo" if verb == "HELO" else "ehlo", None)

    # --- input --------------------------------------------------------------
    def _read_reply(self):
        buf, pos, lines, code = self._in, 0, [], None
        while True:
            nl = buf.find(b"\n", pos)
            if (nl if nl >= 0 else len(buf)) - pos > MAX_LINE + 1:
                self._protocol_error("reply line over %d octets" % MAX_LINE)
            if nl < 0 or self.state == CLOSED:
                return None
            line = bytes(buf[pos:nl]).removesuffix(b"\r")
            pos = nl + 1
            head, sep = line[:3], line[3:4]
            if not (len(head) == 3 and head.isdigit() and head[:1] in b"2345"
                    and sep in (b"", b" ", b"-")) or (code is not None and head != code):
                self._protocol_error("bad reply line %r" % line[:80].decode("ascii", "replace"))
                return None
            code = head
            lines.append(line[4:].decode("utf-8", "replace"))
            if len(lines) > MAX_LINES:
                self._protocol_error("reply over %d lines" % MAX_LINES)
                return None
            if sep != b"-":
                break
        del buf[:pos]
        enhanced = None
        if self._enhanced:
            tok = lines[0].split(" ", 1)[0]
            if _is_status(tok, chr(code[0])):
                enhanced = tok
                lines = [ln[len(tok):].lstrip(" ") if ln.split(" ", 1)[0] == tok else ln
                         for ln in lines]
        return Reply(int(code), enhanced, lines if len(lines) > 1 else lines[0])

    def _dispatch(self, reply):
        if not self._expect:
            if reply.code == 421 or self.state == BODY:
                self._close(Outcome.from_reply(reply))
            else:
                self._protocol_error("unexpected reply %d" % reply.code)
            return
        kind, arg = self._expect.pop(0)
        if reply.code == 421 and kind != "quit":
            self._close(Outcome.from_reply(reply), kind)
            return
        getattr(self, "_on_" + kind)(reply, arg)
        if self.state == CLOSED:
            return
        self._flush()
        if self.state == TXN and not self._expect and not self._queue:
            self._finish_txn()

    # --- session set-up -----------------------------------------------------
    def _on_greeting(self, reply, _):
        if reply.code == 220:
            self.state = SETUP
            self._say_hello()
        elif reply.code < 400:
            self._protocol_error("greeting %d" % reply.code)
        else:
            self._fail(Outcome.from_reply(reply), "greeting")

    def _on_ehlo(self, reply, _):
        if 200 <= reply.code < 300:
            self.esmtp = True
            self._parse_keywords(reply.lines[1:])
            self._setup()
        elif reply.permanent and not self.lmtp:
            self._say_hello("HELO")
        else:
            self._fail(Outcome.from_reply(reply), "ehlo")

    def _on_helo(self, reply, _):
        if 200 <= reply.code < 300:
            self._setup()
        else:
            self._fail(Outcome.from_reply(reply), "helo")

    def _parse_keywords(self, lines):
        ext, mechs = {}, []
        for line in lines:
            kw, _, params = line.strip().partition(" ")
            kw = kw.upper()
            if kw.startswith("AUTH="):
                mechs += (kw[5:] + " " + params).upper().split()
                ext.setdefault("AUTH", "")
                continue
            if not kw or not all(c.isascii() and (c.isalnum() or c == "-") for c in kw):
                continue
            ext[kw] = params.strip()
            if kw == "AUTH":
                mechs += params.upper().split()
        self.extensions = ext
        if mechs:
            ext["AUTH"] = " ".join(dict.fromkeys(mechs))
        self.auth_mechanisms = tuple(dict.fromkeys(mechs))
        size = ext.get("SIZE", "")
        self.max_size = int(size) if size.isascii() and size.isdigit() else 0
        self._enhanced = "ENHANCEDSTATUSCODES" in ext

    def _setup(self):
        if not self.tls and self.starttls_policy != "never" and not self._tls_refused \
                and "STARTTLS" in self.extensions:
            self._send(b"STARTTLS\r\n", "starttls", None)
            return
        mechs = [m for m in self._mechanisms if m in self.auth_mechanisms]
        problem = None
        if not self.tls and self.starttls_policy == "must":
            problem = ("starttls", "TLS required but not offered by the peer")
        elif self._credentials and not self.authenticated:
            if not self.tls and not self.auth_plaintext:
                problem = ("auth", "refusing to send credentials without TLS")
            elif not mechs:
                problem = ("auth", "the peer offers no usable AUTH mechanism")
        if problem:
            self._fail(Outcome(451, "4.7.0", problem[1]), problem[0])
            return
        if self._credentials and not self.authenticated:
            self._auth_mech, self._auth_step = mechs[0], 0
            if mechs[0] == "PLAIN":
                user, password, authzid = (tuple(self._credentials) + ("",))[:3]
                token = "%s\0%s\0%s" % (authzid, user, password)
                self._send(b"AUTH PLAIN " + self._b64(token) + b"\r\n", "auth", None)
            else:
                self._send(b"AUTH LOGIN\r\n", "auth", None)
            return
        self.state = READY
        self._events.append(Ready(dict(self.extensions), self.tls, self.authenticated))

    @staticmethod
    def _b64(text):
        return binascii.b2a_base64(text.encode("utf-8"), newline=False)

    def _on_starttls(self, reply, _):
        if reply.code == 220:
            self.state = TLS_WAIT
            if self._in:
                self._protocol_error("data received after the STARTTLS reply")
                return
            self._events.append(TlsUpgrade())
        elif self.starttls_policy == "must":
            self._fail(Outcome(451, "4.7.0", "TLS required but STARTTLS refused: "
                               + Outcome.from_reply(reply).text, reply), "starttls")
        else:
            self._tls_refused = True
            self._setup()

    def _on_auth(self, reply, _):
        if reply.code == 235:
            self.authenticated = True
            self._setup()
        elif reply.code == 334:
            step, self._auth_step = self._auth_step, self._auth_step + 1
            if self._auth_mech == "LOGIN" and step < 2:
                self._send(self._b64(self._credentials[step]) + b"\r\n", "auth", None)
            else:
                self._send(b"*\r\n", "auth", None)           # cancel (RFC 4954 4)
        else:
            self._fail(Outcome.from_reply(reply), "auth")

    # --- transactions -------------------------------------------------------
    def _on_rset(self, reply, _):
        self._dirty = False

    def _on_mail(self, reply, _):
        o = Outcome.from_reply(reply)
        if reply.code == 250:
            self._mail_ok = self._dirty = True
            return
        self._outcomes = [x or o for x in self._outcomes]
        self._queue = [q for q in self._queue if q[1] not in ("rcpt", "data")]

    def _on_rcpt(self, reply, i):
        self._rcpt_left -= 1
        if not self._mail_ok:
            return
        o = Outcome.from_reply(reply)
        self._events.append(RcptReply(i, o))
        if o.ok:
            self._accepted.append(i)
        else:
            self._outcomes[i] = o
        if not self._rcpt_left and not self.pipelining and self._accepted:
            self._queue.append((b"DATA\r\n", "data", None))

    def _on_data(self, reply, _):
        if reply.code == 354 and self._mail_ok and self._accepted:
            self.state, self._encoder = BODY, BodyEncoder()
            self._events.append(SendBody())
        elif reply.code == 354:
            self._send(b".\r\n", "dot", "discard")            # nobody to send it to
        else:
            o = Outcome.from_reply(reply)
            for i in self._accepted:
                self._outcomes[i] = o

    def _on_dot(self, reply, i):
        if i == "discard":
            return
        o = Outcome.from_reply(reply)
        for j in (self._accepted if i is None else [i]):
            self._outcomes[j] = o
        if not self._expect:
            self._dirty = False

    def _on_quit(self, reply, _):
        self._close(Outcome.from_reply(reply), "quit")

    def _finish_txn(self):
        self._events.append(TransactionDone(list(self._outcomes)))
        self._txn_clear()
        self.state = READY

    def _protocol_error(self, text):
        self._close(Outcome(451, "4.5.0", "protocol error: " + text))

    def _fail(self, outcome, stage):
        # The session cannot go on but is in step: say QUIT and close.
        self._out += b"QUIT\r\n"
        self._close(outcome, stage)

    def _close(self, outcome, stage=None):
        if self.state in (TXN, BODY) and self._outcomes is not None:
            self._outcomes = [x or outcome for x in self._outcomes]
            self._events.append(TransactionDone(list(self._outcomes)))
            self._txn_clear()
        stage = stage or (self._expect[0][0] if self._expect
                          else {TLS_WAIT: "tls", BODY: "body"}.get(self.state, "idle"))
        self._closed = ConnectionClosed(outcome, stage)
        self._events.append(self._closed)
        self.state = CLOSED
        self._expect, self._queue = [], []
        self._in.clear()
        self._encoder = None
