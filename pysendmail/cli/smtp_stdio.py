"""`sendmail -bs`: an SMTP session on stdin/stdout, driving the sans-I/O core.

`run_stdio(backend, stdin_fd, stdout_fd, peer)` reads stdin in unbuffered
chunks, feeds `pysendmail.proto.smtp_server`, and writes the replies with CRLF,
flushing whenever it has consumed all input it holds (so a PIPELINING client
gets all replies of its batch at once). It ends at QUIT or end of input and
returns the exit status (0; EX_IOERR if stdout went away; EX_SOFTWARE on a bug).

The driver depends only on `SessionBackend` (below): the CLI subclasses it to
check addresses and to queue the message. Security stance: the session runs
as the invoking user with that user's rights, like the rest of the CLI; over
stdin there is no STARTTLS and no AUTH (the caller is already known). Message
data ends only at <CRLF>.<CRLF>; bare CR/LF in DATA end the session (see the
core's docstring).
"""
import os

from pysendmail import __version__, dates
from pysendmail.errors import EX_IOERR, EX_OK, EX_SOFTWARE, EX_TEMPFAIL, MTAError
from pysendmail.proto import smtp_events as ev
from pysendmail.proto import smtp_reply as R
from pysendmail.proto.smtp_reply import Reply
from pysendmail.proto.smtp_server import CLOSED, ServerConfig, SMTPServerConnection

PRODUCT = "pysendmail %s" % __version__
READ_SIZE = 65536

class SessionBackend:
    """What an SMTP session asks of the MTA. The CLI subclasses this; tests use
    an in-memory one. Only `accept_message` must be overridden.

    hostname              str: $j, shown in the banner, EHLO and QUIT replies
    banner_text           str: the 220 text, "HOST ESMTP pysendmail 0.1.0; DATE"
    max_message_size      int: SIZE limit in octets, 0 = none (optional)
    check_sender(addr, params) -> Reply | None       None: "250 2.1.0 <addr>... Sender ok"
    check_recipient(addr, params) -> Reply | None    None: "250 2.1.5 <addr>... Recipient ok"
    accept_message(sender, recipients, params, data) -> queue id
        recipients: list of (addr, params) accepted by RCPT; params: MAIL's;
        data: the message, LF line ends (CRLF from the wire turned into LF).
        May raise pysendmail.errors.MTAError: a temporary status (EX_TEMPFAIL or a
        4.x.x dsn) answers "451 4.3.0 message", anything else "554 5.x.x message".
    verify(arg) -> Reply   (VRFY; default 252 2.5.2 Cannot VRFY user ...)
    expand(arg) -> Reply   (EXPN; default 502 5.7.0 Sorry, we do not allow this operation)
    """

    hostname = "localhost"
    max_message_size = 0

    @property
    def banner_text(self):
        import time
        now = time.time()
        return "%s ESMTP %s; %s" % (self.hostname, PRODUCT, dates.rfc5322(now))

    def check_sender(self, addr, params):
        return None

    def check_recipient(self, addr, params):
        return None

    def accept_message(self, sender, recipients, params, data):
        raise NotImplementedError

    def verify(self, arg):
        return R.vrfy_cannot()

    def expand(self, arg):
        return R.expn_refused()


class Session:
    """Turns the core's events into replies using a SessionBackend. Kept apart
    from the I/O loop so the daemon can reuse the same answers."""

    def __init__(self, backend, peer, config=None):
        self.backend = backend
        self.peer = peer
        self.config = config or ServerConfig(
            backend.hostname, max_size=getattr(backend, "max_message_size", 0) or 0)
        self.conn = SMTPServerConnection(self.config)
        self._reset()

    def _reset(self):
        self.sender = None
        self.mail_params = {}
        self.recipients = []
        self.data = []

    def answer(self, event):
        """The Reply for an event that needs one."""
        b = self.backend
        kind = type(event)
        if kind is ev.Rejected:
            return event.reply
        if kind is ev.Greeting:
            return Reply(220, None, b.banner_text)
        if kind is ev.Helo:
            if event.esmtp:
                return R.ehlo_ok(b.hostname, self.peer, self.conn.ehlo_keywords())
            return R.helo_ok(b.hostname, self.peer)
        if kind is ev.MailFrom:
            return b.check_sender(event.addr, event.params) or R.sender_ok(event.raw)
        if kind is ev.RcptTo:
            return b.check_recipient(event.addr, event.params) or R.recipient_ok(event.raw)
        if kind is ev.DataStart:
            return R.start_data()
        if kind is ev.BdatChunk:
            return R.chunk_ok(event.size)
        if kind is ev.MessageComplete:
            return self._deliver()
        if kind is ev.Rset:
            return R.reset_ok()
        if kind is ev.Noop:
            return R.noop_ok()
        if kind is ev.Quit:
            return R.closing(b.hostname)
        if kind is ev.Vrfy:
            return b.verify(event.arg)
        if kind is ev.Expn:
            return b.expand(event.arg)
        if kind is ev.Help:
            return R.help_reply(event.topic, PRODUCT)
        if kind is ev.StartTls:
            return Reply(454, "4.3.3", "TLS not available right now")
        # Auth / AuthResponse: this driver offers no mechanism.
        return Reply(504, "5.3.3", "AUTH mechanism not available")

    def _deliver(self):
        data = b"".join(self.data).replace(b"\r\n", b"\n")
        try:
            qid = self.backend.accept_message(self.sender, list(self.recipients),
                                              dict(self.mail_params), data)
        except MTAError as exc:
            if exc.status == EX_TEMPFAIL or str(exc.dsn).startswith("4"):
                return Reply(451, "4.3.0", exc.message)
            dsn = exc.dsn if str(exc.dsn).startswith("5") else "5.0.0"
            return Reply(554, dsn, exc.message)
        return R.accepted(qid)

    def handle(self, event):
        """Process one event; returns bytes to write (b"" for none)."""
        kind = type(event)
        if kind is ev.DataChunk:
            self.data.append(event.data)
            return b""
        if not event.needs_reply:
            return b""
        reply = self.answer(event)
        out = self.conn.send(reply)
        if reply.code < 300:
            if kind is ev.MailFrom:
                self._reset()
                self.sender, self.mail_params = event.addr, event.params
            elif kind is ev.RcptTo:
                self.recipients.append((event.addr, event.params))
        if not self.conn.in_transaction:
            self._reset()
        return out


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def run_stdio(backend, stdin_fd, stdout_fd, peer="root@localhost"):
    """Run one SMTP session over two file descriptors; returns the exit status."""
    session = Session(backend, peer)
    conn = session.conn
    out = bytearray()
    try:
        while True:
            event = conn.next_event()
            if event is ev.NEED_DATA:
                if out:
                    _write_all(stdout_fd, out)
                    out.clear()
                conn.receive_data(os.read(stdin_fd, READ_SIZE))
                continue
            if type(event) is ev.ConnectionClosed:
                break
            out += session.handle(event)
            if conn.phase == CLOSED:
                break
        if out:
            _write_all(stdout_fd, out)
        return EX_OK
    except (BrokenPipeError, ConnectionResetError):
        return EX_IOERR
    except OSError:
        return EX_IOERR
    except Exception as exc:                  # a bug: say so, once
        try:
            _write_all(stdout_fd, bytes(out) + Reply(
                421, "4.3.0", "%s Internal error; closing connection"
                % backend.hostname).to_bytes())
        except OSError:
            pass
        os.write(2, ("pysendmail: internal error in SMTP session: %r\n" % (exc,)).encode())
        return EX_SOFTWARE
