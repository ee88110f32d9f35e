"""The sans-I/O ESMTP server core (RFC 5321 and its extensions), h11 style.

The driver (the `sendmail -bs` stdin loop, later the asyncio daemon) owns the
I/O; this module owns the protocol:

    conn = SMTPServerConnection(ServerConfig(hostname="mail.example.com"))
    ev = conn.next_event()                  # first a Greeting: send the 220 banner
    conn.receive_data(bytes_read)           # b"" means end of input
    ev = conn.next_event()                  # an event, or NEED_DATA
    out += conn.send(reply_for(ev))         # bytes to write; flush at NEED_DATA

Every event with `needs_reply` must be answered before the next next_event()
(so replies come out in command order, which is what PIPELINING needs). The
core answers syntax and sequence errors itself with a `Rejected` event whose
reply the driver sends unchanged.

The state lives in one place, `SMTPServerConnection` (phase + session +
transaction); the commands are a table (`COMMANDS`) with flags saying where
each is allowed. Security stance: message data ends only at <CRLF>.<CRLF>; a
bare LF or bare CR inside DATA ends the session with "554 5.5.2 Bare linefeed
(LF) not allowed" / "... carriage return (CR) ..." (SMTP smuggling,
CVE-2023-51764/5/6: nothing after it is trusted, so the connection closes).
Input buffered when STARTTLS is answered with 220 is discarded
(CVE-2011-0411). Command lines are limited to 512 octets (MAIL/RCPT get the
RFC 1870/3461/4954 allowance, AUTH responses 12288); text lines in DATA to
1000 octets (the message is refused at its end with "554 5.6.0 Line too long");
an over-long command line gets "500 5.5.2 Line too long" (Sendmail has no
words for these; ours). DATA/BDAT framing is in smtp_data, MAIL/RCPT
arguments in smtp_params, the reply texts in smtp_reply.

BDAT (RFC 3030) chunks are length-framed, so no octet inside one can end it or
start a command: their octets are opaque, bare CR and LF included (BINARYMIME
needs that, and Sendmail offers no CHUNKING to copy). Whoever re-sends such a
message with DATA must dot-stuff and make every line end CRLF first.

What the driver owns: time and I/O. The core never waits, so the driver
enforces RFC 5321 4.5.3.2 timeouts (e.g. 5 min for a command, 3 min per DATA
block, 10 min for the final dot; Sendmail's Timeout.command / datablock)
and, when one fires, writes lost_input()/"421 4.4.2 ... timeout" itself and
closes. The driver should call next_event() until NEED_DATA after each
receive_data(), read at most a bounded chunk at a time, and after answering
StartTls with 220 call tls_started() right after the handshake, before it
feeds any byte read over TLS. Memory: once NEED_DATA is returned the core
holds at most one partial line (max_command_line + PARAM_ALLOWANCE,
AUTH_LINE_MAX when AUTH is offered, max_text_line + 1 in DATA).
Pure code: imports nothing but its sibling proto modules and binascii.
"""
import binascii

from . import smtp_events as ev
from .smtp_data import MessageReader
from .smtp_events import LocalProtocolError, NEED_DATA
from .smtp_params import ReplyError, parse_mail_args, parse_rcpt_args
from .smtp_reply import Reply, show

# Phases of a connection.
GREETING = "GREETING"          # waiting for the driver's banner
COMMAND = "COMMAND"            # reading command lines
DATA = "DATA"                  # reading message text after 354
BDAT = "BDAT"                  # reading the octets of a BDAT chunk
AUTH = "AUTH"                  # reading a response to a 334 challenge
TLS_HANDSHAKE = "TLS_HANDSHAKE"  # after "220 Ready to start TLS", until tls_started()
REFUSED = "REFUSED"            # greeting was 554: only QUIT is served (RFC 5321 3.1)
CLOSED = "CLOSED"

# Command flags.
PRE_HELO = 1       # allowed before HELO/EHLO even when helo_required
PRE_TLS = 2        # allowed before STARTTLS when tls_required
PRE_AUTH = 4       # allowed before AUTH when auth_required
IN_TXN = 8         # allowed inside a mail transaction
SYNC = 16          # must end a pipelined group (RFC 2920 3.1)
WAIT = 32          # with strict_pipelining: the client must wait for this one's reply

#            name        handler          flags
COMMANDS = {
    "HELO": ("_cmd_helo", PRE_HELO | PRE_TLS | PRE_AUTH | IN_TXN | SYNC | WAIT),
    "EHLO": ("_cmd_helo", PRE_HELO | PRE_TLS | PRE_AUTH | IN_TXN | SYNC | WAIT),
    "MAIL": ("_cmd_mail", 0),
    "RCPT": ("_cmd_rcpt", IN_TXN),
    "DATA": ("_cmd_data", IN_TXN | SYNC | WAIT),
    "BDAT": ("_cmd_bdat", IN_TXN),
    "RSET": ("_cmd_rset", PRE_HELO | PRE_TLS | PRE_AUTH | IN_TXN),
    "NOOP": ("_cmd_noop", PRE_HELO | PRE_TLS | PRE_AUTH | IN_TXN | SYNC),
    "QUIT": ("_cmd_quit", PRE_HELO | PRE_TLS | PRE_AUTH | IN_TXN | SYNC),
    "VRFY": ("_cmd_vrfy", PRE_HELO | PRE_AUTH | IN_TXN | SYNC),
    "EXPN": ("_cmd_expn", PRE_HELO | PRE_AUTH | IN_TXN | SYNC),
    "HELP": ("_cmd_help", PRE_HELO | PRE_TLS | PRE_AUTH | IN_TXN | SYNC),
    "STARTTLS": ("_cmd_starttls", PRE_TLS | PRE_AUTH | SYNC),
    "AUTH": ("_cmd_auth", PRE_AUTH | SYNC),
}

PARAM_ALLOWANCE = 1024   # MAIL/RCPT line growth from SIZE, DSN, AUTH=, SMTPUTF8
AUTH_LINE_MAX = 12288    # RFC 4954 section 4


class ServerConfig:
    """What the server offers and enforces. Attribute names double as the
    extension switches smtp_params reads (max_size, eightbitmime, ...)."""

    def __init__(self, hostname="localhost", *, max_size=0, pipelining=True,
                 eightbitmime=True, smtputf8=True, dsn=True, chunking=True,
                 enhancedstatuscodes=True, help=True, expn=False, novrfy=False,
                 noexpn=False, starttls=False,
                 tls_required=False, auth_mechanisms=(), auth_requires_tls=True,
                 auth_required=False, helo_required=False, max_rcpts=0,
                 max_command_line=512, max_text_line=1000, bare_lf_commands=True,
                 strict_pipelining=False, max_path=0, max_local_part=0, max_domain=255):
        self.hostname = hostname
        self.max_size = max_size
        self.pipelining = pipelining
        self.eightbitmime = eightbitmime
        self.smtputf8 = smtputf8
        self.dsn = dsn
        self.chunking = chunking
        self.enhancedstatuscodes = enhancedstatuscodes
        self.help = help
        # `expn` only says whether EHLO lists EXPN. Vrfy/Expn events go to the
        # driver (whose answers default to 252 / 502, see smtp_reply); with
        # Sendmail's PrivacyOptions novrfy / noexpn the core answers them itself:
        # "252 2.5.2 Cannot VRFY user; ..." / "502 5.7.0 Sorry, we do not allow
        # this operation", and the driver never sees the argument.
        self.expn = expn and not noexpn
        self.novrfy = novrfy
        self.noexpn = noexpn
        self.starttls = starttls
        self.tls_required = tls_required
        self.auth_mechanisms = tuple(m.upper() for m in auth_mechanisms)
        self.auth_requires_tls = auth_requires_tls
        self.auth_required = auth_required
        self.helo_required = helo_required
        self.max_rcpts = max_rcpts
        self.max_command_line = max_command_line
        self.max_text_line = max_text_line
        self.bare_lf_commands = bare_lf_commands
        # RFC 5321 4.5.3.1 path limits in octets, 0 = none (see smtp_params).
        self.max_path = max_path
        self.max_local_part = max_local_part
        self.max_domain = max_domain
        # Sendmail 8.18 / Debian's 8.17.1.9-2+deb12u2: input sent before the reply to
        # HELO/EHLO/DATA is an "SMTP protocol error"; the session then refuses
        # everything but NOOP, RSET and QUIT ("550 5.0.0 Command rejected").
        self.strict_pipelining = strict_pipelining

    @property
    def auth_param(self):
        """Is MAIL's AUTH= parameter accepted (RFC 4954 section 5)?"""
        return bool(self.auth_mechanisms)


def _r(code, enhanced, text):
    return ReplyError(Reply(code, enhanced, text))


class SMTPServerConnection:
    """One SMTP server session. See the module docstring for the protocol."""

    def __init__(self, config):
        self.config = config
        self.phase = GREETING
        self._buf = bytearray()
        self._eof = False
        self._pending = None
        # session
        self.helo = None            # the name given in HELO/EHLO
        self.esmtp = False
        self.tls = False
        self.authenticated = False
        self.discarded_bytes = 0    # input thrown away at STARTTLS (for the log)
        self.rejecting = False      # after a strict_pipelining violation
        # long-line handling in COMMAND/AUTH phases
        self._skipping = False
        self._reset_transaction()

    # --- the transaction ----------------------------------------------------
    def _reset_transaction(self):
        self.mail = None            # the accepted MailFrom event
        self.rcpt_count = 0
        self.reader = MessageReader(self.config.max_size, self.config.max_text_line)

    @property
    def pending_input(self):
        """Octets received and not yet turned into events."""
        return len(self._buf)

    @property
    def in_transaction(self):
        return self.mail is not None

    # --- input --------------------------------------------------------------
    def receive_data(self, data):
        """Feed bytes read from the client; b"" marks end of input."""
        if not data:
            self._eof = True
            return
        if self.phase == TLS_HANDSHAKE:
            self.discarded_bytes += len(data)
            return
        if self.phase == CLOSED:
            return
        self._buf += data

    def tls_started(self):
        """The TLS handshake succeeded: the session starts over (RFC 3207 4.2)."""
        if self.phase != TLS_HANDSHAKE:
            raise LocalProtocolError("tls_started() outside a STARTTLS handshake")
        self.discarded_bytes += len(self._buf)
        self._buf.clear()
        self.tls = True
        self.helo = None
        self.esmtp = False
        self._reset_transaction()
        self.phase = COMMAND

    def ehlo_keywords(self):
        """The EHLO extension lines as they stand now (Sendmail's order)."""
        c = self.config
        out = []
        if c.enhancedstatuscodes:
            out.append("ENHANCEDSTATUSCODES")
        if c.pipelining:
            out.append("PIPELINING")
        if c.expn:
            out.append("EXPN")
        if c.eightbitmime:
            out.append("8BITMIME")
        out.append("SIZE %d" % c.max_size if c.max_size else "SIZE")
        if c.dsn:
            out.append("DSN")
        if c.smtputf8:
            out.append("SMTPUTF8")
        if c.chunking:
            out.append("CHUNKING")
        if self._auth_available():
            out.append("AUTH " + " ".join(c.auth_mechanisms))
        if c.starttls and not self.tls:
            out.append("STARTTLS")
        if c.help:
            out.append("HELP")
        return out

    def _auth_available(self):
        c = self.config
        return bool(c.auth_mechanisms) and (self.tls or not c.auth_requires_tls)

    # --- events -------------------------------------------------------------
    def next_event(self):
        if self._pending is not None:
            raise LocalProtocolError("reply owed to %r" % (self._pending,))
        if self.phase == CLOSED:
            self._buf.clear()             # what came after QUIT/421/554 is never read
            return ev.ConnectionClosed()
        if self.phase == TLS_HANDSHAKE:
            return NEED_DATA
        if self.phase == GREETING:
            self._pending = ev.Greeting()
            return self._pending
        if self.phase == DATA:
            event = self._content_event(self.reader.read_data(self._buf))
        elif self.phase == BDAT:
            event = self._content_event(self.reader.read_chunk(self._buf))
        else:
            event = self._line_event()
        if event is NEED_DATA and self._eof:
            self.phase = CLOSED
            self._buf.clear()
            return ev.ConnectionClosed()
        if event is not NEED_DATA and event.needs_reply:
            self._pending = event
        return event

    def send(self, reply):
        """Answer the pending event; returns the bytes to write."""
        event = self._pending
        if event is None:
            raise LocalProtocolError("no command is waiting for a reply")
        if not isinstance(reply, Reply):
            raise LocalProtocolError("send() takes a Reply")
        allowed_3xx = {ev.DataStart: 354, ev.Auth: 334, ev.AuthResponse: 334}.get(type(event))
        if reply.intermediate and reply.code != allowed_3xx:
            raise LocalProtocolError("%d is no answer to %r" % (reply.code, event))
        self._pending = None
        self._after_reply(event, reply)
        return reply.to_bytes(self.config.enhancedstatuscodes)

    def _after_reply(self, event, reply):
        kind = type(event)
        ok = reply.code < 300
        if reply.code == 421:
            self.phase = CLOSED
        elif kind is ev.Greeting:
            self.phase = COMMAND if ok else REFUSED if reply.code == 554 else CLOSED
        elif kind is ev.Helo and ok:
            self.helo, self.esmtp = event.name, event.esmtp
            self._reset_transaction()
        elif kind is ev.MailFrom and ok:
            self._reset_transaction()
            self.mail = event
        elif kind is ev.RcptTo and ok:
            self.rcpt_count += 1
        elif kind is ev.DataStart and reply.code == 354:
            self.phase = DATA
        elif kind is ev.MessageComplete:
            self._reset_transaction()
        elif kind is ev.BdatChunk and not ok:
            self._reset_transaction()
        elif kind is ev.Rset and ok:
            self._reset_transaction()
        elif kind is ev.Quit and reply.code == 221:
            self.phase = CLOSED
        elif kind is ev.StartTls and reply.code == 220:
            # CVE-2011-0411: whatever came with or after STARTTLS is not trusted.
            self.discarded_bytes += len(self._buf)
            self._buf.clear()
            self.phase = TLS_HANDSHAKE
        elif kind in (ev.Auth, ev.AuthResponse):
            if reply.code == 334:
                self.phase = AUTH
            else:
                self.phase = COMMAND
                self.authenticated = reply.code == 235
        elif kind is ev.Rejected and event.close:
            self.phase = CLOSED

    # --- command lines --------------------------------------------------------
    def _line_event(self):
        limit = self.config.max_command_line + PARAM_ALLOWANCE
        if self.phase == AUTH or self._auth_available():
            limit = max(limit, AUTH_LINE_MAX)
        nl = self._buf.find(b"\n")
        if nl < 0:
            if len(self._buf) > limit:
                # Drop what we hold of an over-long line; answer once its end comes.
                self._skipping = True
                keep = self._buf[-1:] if self._buf.endswith(b"\r") else b""
                self._buf[:] = keep
            return NEED_DATA
        line = bytes(self._buf[:nl + 1])
        del self._buf[:nl + 1]
        if self._skipping:
            self._skipping = False
            if self.phase == AUTH:
                self.phase = COMMAND      # an over-long response ends the exchange
            return self._reject(500, "5.5.2", "Line too long")
        if line.endswith(b"\r\n"):
            line = line[:-2]
        elif self.config.bare_lf_commands:
            line = line[:-1]
        else:
            return self._reject(500, "5.5.2", "Bare linefeed (LF) not allowed")
        if self.phase == AUTH:
            return self._auth_line(line, len(line) + 2)
        return self._command(line)

    def _reject(self, code, enhanced, text, close=False):
        return ev.Rejected(Reply(code, enhanced, text), close)

    def _command(self, raw):
        text = raw.decode("utf-8", "surrogateescape")
        body = text.lstrip(" \t")
        end = 0
        while end < len(body) and body[end] not in " \t":
            end += 1
        verb, arg = body[:end].upper(), body[end + 1:]
        entry = COMMANDS.get(verb)
        if self.phase == REFUSED and verb != "QUIT":
            return self._reject(503, "5.5.0", "No service")
        if entry is None or (verb == "BDAT" and not self.config.chunking):
            refusal = self._reject(500, "5.5.1", "Command unrecognized: \"%s\"" % show(text))
            refusal.unknown = text          # what milters get (SMFIC_UNKNOWN)
            return refusal
        limit = self.config.max_command_line
        if verb in ("MAIL", "RCPT"):
            limit += PARAM_ALLOWANCE
        elif verb == "AUTH":
            limit = AUTH_LINE_MAX
        if len(raw) + 2 > limit:
            return self._reject(500, "5.5.2", "Line too long")
        handler, flags = entry
        c = self.config
        if self.rejecting and verb not in ("NOOP", "RSET", "QUIT"):
            return self._reject(550, "5.0.0", "Command rejected")
        if c.strict_pipelining and flags & WAIT and self._buf:
            self.rejecting = True
            return self._reject(554, "5.5.0", "SMTP protocol error")
        try:
            if c.tls_required and not self.tls and not flags & PRE_TLS:
                raise _r(530, "5.7.0", "Must issue a STARTTLS command first")
            if c.helo_required and self.helo is None and not flags & PRE_HELO:
                raise _r(503, "5.0.0", "Polite people say HELO first")
            if c.auth_required and not self.authenticated and not flags & PRE_AUTH:
                raise _r(530, "5.7.0", "Authentication required")
            if self.in_transaction and not flags & IN_TXN:
                if verb == "MAIL":
                    raise _r(503, "5.5.0", "Sender already specified")
                what = "TLS" if verb == "STARTTLS" else verb
                raise _r(503, "5.5.0", "%s not permitted during a mail transaction" % what)
            return getattr(self, handler)(verb, arg.strip(" \t") if verb != "MAIL"
                                          and verb != "RCPT" else arg)
        except ReplyError as exc:
            return ev.Rejected(exc.reply)

    def _cmd_helo(self, verb, arg):
        if not arg:
            raise _r(501, "5.0.0", "%s requires domain address" % verb)
        name = arg.split()[0]
        if len(arg.split()) > 1 or len(name) > 255 or not all(
                c.isascii() and (c.isalnum() or c in "[].-_#:") for c in name):
            raise _r(501, "5.0.0", "Invalid domain name")
        return ev.Helo(name, verb == "EHLO")

    def _cmd_mail(self, verb, arg):
        raw, addr, params = parse_mail_args(arg, self.config)
        return ev.MailFrom(addr, params, raw)

    def _cmd_rcpt(self, verb, arg):
        if self.mail is None:
            raise _r(503, "5.0.0", "Need MAIL before RCPT")
        if self.config.max_rcpts and self.rcpt_count >= self.config.max_rcpts:
            raise _r(452, "4.5.3", "Too many recipients")
        raw, addr, params = parse_rcpt_args(arg, self.config,
                                            bool(self.mail.params.get("SMTPUTF8")))
        return ev.RcptTo(addr, params, raw)

    def _check_ready_for_data(self):
        if self.mail is None:
            raise _r(503, "5.0.0", "Need MAIL command")
        if self.rcpt_count <= 0:
            raise _r(503, "5.0.0", "Need RCPT (recipient)")

    def _cmd_data(self, verb, arg):
        self._check_ready_for_data()
        if self.reader.chunked:
            raise _r(503, "5.5.1", "DATA not allowed after BDAT")
        self.reader.start_data()
        return ev.DataStart()

    def _cmd_bdat(self, verb, arg):
        words = arg.split()
        if not 1 <= len(words) <= 2 or not words[0].isdigit() or not words[0].isascii() \
                or (len(words) == 2 and words[1].upper() != "LAST"):
            raise _r(501, "5.5.4", "Syntax error in parameters scanning \"BDAT\"")
        refusal = None
        try:
            self._check_ready_for_data()
        except ReplyError as exc:
            refusal = exc.reply           # the octets are read, then refused
        self.reader.start_chunk(int(words[0]), len(words) == 2, refusal)
        self.phase = BDAT
        return self._content_event(self.reader.read_chunk(self._buf))

    def _cmd_rset(self, verb, arg):
        return ev.Rset()

    def _cmd_noop(self, verb, arg):
        return ev.Noop()

    def _cmd_quit(self, verb, arg):
        return ev.Quit()

    def _cmd_vrfy(self, verb, arg):
        if not arg:
            raise _r(501, "5.5.2", "Argument required")
        if self.config.novrfy:
            raise _r(252, "2.5.2", "Cannot VRFY user; try RCPT to attempt delivery "
                     "(or try finger)")
        return ev.Vrfy(arg)

    def _cmd_expn(self, verb, arg):
        if not arg:
            raise _r(501, "5.5.2", "Argument required")
        if self.config.noexpn:
            raise _r(502, "5.7.0", "Sorry, we do not allow this operation")
        return ev.Expn(arg)

    def _cmd_help(self, verb, arg):
        return ev.Help(arg)

    def _cmd_starttls(self, verb, arg):
        if not self.config.starttls or self.tls:
            raise _r(503, "5.5.0", "TLS not available")
        if arg:
            raise _r(501, "5.5.2", "Syntax error (no parameters allowed)")
        return ev.StartTls()

    def _cmd_auth(self, verb, arg):
        if not self._auth_available():
            raise _r(503, "5.3.3", "AUTH not available")
        if self.authenticated:
            raise _r(503, "5.5.0", "Already Authenticated")
        if not self.esmtp:
            raise _r(503, "5.0.0", "Polite people say HELO first")
        words = arg.split()
        if not words:
            raise _r(501, "5.5.2", "AUTH mechanism must be specified")
        mech = words[0].upper()
        if mech not in self.config.auth_mechanisms or len(words) > 2:
            raise _r(504, "5.3.3", "AUTH mechanism %.32s not available" % show(words[0]))
        initial = None
        if len(words) == 2:
            initial = b"" if words[1] == "=" else _b64(words[1])
        return ev.Auth(mech, initial)

    def _auth_line(self, line, length):
        self.phase = COMMAND          # back to COMMAND unless the reply is 334 again
        if line == b"*":
            return self._reject(501, "5.0.0", "AUTH aborted")
        try:
            return ev.AuthResponse(_b64(line.decode("ascii", "replace")))
        except ReplyError as exc:
            return ev.Rejected(exc.reply)

    # --- message content (framing lives in smtp_data) ------------------------------
    def _content_event(self, event):
        if event is NEED_DATA or type(event) is ev.DataChunk:
            return event
        self.phase = COMMAND
        if type(event) is ev.Rejected:
            self._reset_transaction()
        return event


def _b64(text):
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise _r(501, "5.5.4", "cannot BASE64 decode '%s'" % show(text)) from None
