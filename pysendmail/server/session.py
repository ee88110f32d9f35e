"""One SMTP session of the daemon: the thin asyncio driver around the sans-I/O core.

`SMTPSession` is an asyncio.Protocol (callbacks, no coroutine per connection: an idle
session costs a few KiB). Bytes read go to `proto.smtp_server.SMTPServerConnection`;
each event it returns is answered here, in order, from the worker's shared pieces
(`worker.Worker`): the policy (check_relay / check_mail / check_rcpt), SASL
authentication, STARTTLS, and the message store (`receive.Incoming` at MAIL, fed
during DATA/BDAT, handed to the group committer at the end of data). While an answer
waits for something slow (the commit, the TLS handshake, the client's name) the
session stops reading, so replies always leave in command order (RFC 2920) and a
client that pipelines cannot make us buffer without bound.

Time is the driver's: each session has a deadline, checked by the worker's sweeper.
In the command phase it is set when a command has been answered, so a client that
drips a command one byte at a time gains nothing (Timeout.command, default 5m); in
DATA it moves on only when at least a block (1 KiB) or the end has arrived
(Timeout.datablock, default 3m). Past it: "421 4.4.2 ... timeout" and the session ends.
"""
import asyncio
import os
import time

from ..errors import MTAError
from ..proto import smtp_events as ev
from ..proto import smtp_reply as R
from ..proto.smtp_reply import Reply
from ..proto.smtp_server import BDAT, CLOSED, DATA, SMTPServerConnection
from .access import relay_field
from .receive import Incoming, SessionFacts
from .session_filters import FilterAnswers
from .session_security import SecurityExchanges

NEED_DATA = ev.NEED_DATA
DATA_BLOCK = 1024
READ_SIZE = 65536
WAIT_INPUT = 65536      # octets kept from the client while an answer waits; then reading stops


class SMTPSession(SecurityExchanges, FilterAnswers, asyncio.Protocol):
    __slots__ = ("w", "listener", "transport", "conn", "client", "deadline", "incoming",
                 "sender", "mail_params", "rcpts", "discard", "waiting", "counted",
                 "sasl", "closing", "paused_writing", "tls_macros", "last_block",
                 "mail_raw", "discard_all", "_log_id", "tls_early", "milter")

    def __init__(self, worker, listener):
        self.w = worker
        self.listener = listener
        self.transport = None
        self.conn = None
        self.client = None
        self.deadline = 0.0
        self.incoming = None
        self.waiting = False
        self.counted = False
        self.sasl = None
        self.closing = False
        self.paused_writing = False
        self.tls_macros = {}
        self.last_block = 0
        self.discard_all = False
        self._log_id = None
        self.tls_early = None       # bytes that came over TLS before _handshake() resumed
        self.milter = None          # milters.SessionMilters when O InputMailFilters names some
        self._reset()

    def _reset(self):
        self.sender = None
        self.mail_raw = ""
        self.mail_params = {}
        self.rcpts = []
        self.discard = False

    # -- asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport):
        w = self.w
        self.transport = transport
        # asyncio reads up to 256 KiB at a time: a fresh mmap'd buffer per read. SMTP
        # commands are small and a DATA block of 64 KiB is plenty (heap-allocated).
        transport.max_size = READ_SIZE
        peer = transport.get_extra_info("peername") or ("0.0.0.0", 0)
        addr = peer[0]
        if addr.startswith("::ffff:"):
            addr = addr[7:]
        self.client = w.new_client(addr, peer[1], self.listener.name)
        w.sessions.add(self)
        self.deadline = time.monotonic() + w.timeout_command
        wait = 0.0
        if w.limits is not None:
            from .limits import Refusal
            try:
                wait = w.limits.open(addr)      # counted always; refused only by its options
                self.counted = True
            except Refusal as r:
                w.log.notice(None, "%s: %s" % (self.relay_text(), r.text))
                transport.write(Reply(r.code, r.enhanced, "%s %s" % (w.hostname, r.text))
                                .to_bytes())
                transport.close()
                return
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.tls_macros = w.tls_macros(ssl_object)
            self.client.tls = self.tls_macros
        self.conn = SMTPServerConnection(w.config_for(self.listener, addr, ssl_object is not None))
        if ssl_object is not None:
            self.conn.tls = True
        if w.milters:
            from .milters import SessionMilters
            self.milter = SessionMilters(w, self.client, transport.get_extra_info("sockname"))
        name = w.names.cached(addr)
        if name is not None and not wait:
            self.client.name = name
            self._process()
            return
        self.waiting = True
        asyncio.ensure_future(self._greet_later(addr, wait))

    async def _greet_later(self, addr, wait):
        if wait:
            await asyncio.sleep(wait)
        self.client.name = await self.w.names.lookup(addr)
        self._resume()

    def data_received(self, data):
        conn = self.conn
        if conn is None:
            return
        if self.tls_early is not None:
            # The handshake is done but _handshake() has not resumed yet: the client's
            # first command over TLS (decrypted, so never plaintext injected before the
            # handshake) waits for conn.tls_started().
            self.tls_early.append(data)
            return
        if conn.phase in (DATA, BDAT):
            self.last_block += len(data)
            if self.last_block >= DATA_BLOCK:
                self.last_block = 0
                self.deadline = time.monotonic() + self.w.timeout_datablock
        conn.receive_data(data)
        if not self.waiting:
            self._process()
        elif conn.pending_input > WAIT_INPUT:
            # An answer waits (a commit, a check, a name lookup): what a pipelining
            # client sends meanwhile is kept, up to a bound (_resume reads on).
            self.transport.pause_reading()

    def eof_received(self):
        if self.conn is not None:
            self.conn.receive_data(b"")
            if not self.waiting:
                self._process()
        return False

    def connection_lost(self, exc):
        w = self.w
        w.sessions.discard(self)
        if self.incoming is not None and self.incoming.fd is not None:
            self.incoming.abandon()
        self.incoming = None
        if self.counted:
            self.counted = False
            w.limits.close(self.client.addr)
        if self.milter is not None:
            asyncio.ensure_future(self.milter.quit())
            self.milter = None
        if self.conn is not None and self.conn.phase != CLOSED and self.client is not None \
                and not self.closing:
            w.log.info(None, "%s did not issue MAIL/EXPN/VRFY/ETRN during connection to %s"
                       % (self.relay_text(), self.listener.name)
                       if self.conn.helo is None else "lost input channel from %s to %s"
                       % (self.relay_text(), self.listener.name))
        self.conn = None

    def pause_writing(self):
        self.paused_writing = True
        self.transport.pause_reading()

    def resume_writing(self):
        self.paused_writing = False
        if not self.waiting and self.transport is not None:
            self.transport.resume_reading()

    # -- the event loop of one session -----------------------------------------------------------
    def relay_text(self):
        c = self.client
        if c is None:
            return "[unknown]"
        return relay_field(c.name, c.addr)

    @property
    def log_id(self):
        """The id log lines of this session carry before a message has its queue id (a
        Sendmail-style id, which fail2ban's sendmail filters expect after "sendmail[pid]: ")."""
        if self.incoming is not None:
            return self.incoming.qid
        if self._log_id is None:
            from ..queue.spool import make_qid
            self._log_id = make_qid(time.time(), os.getpid(),
                                    int.from_bytes(os.urandom(2), "big") % 3600)
        return self._log_id

    def _resume(self):
        self.waiting = False
        if self.transport is None or self.transport.is_closing():
            return
        if not self.paused_writing:
            self.transport.resume_reading()
        self._process()

    def _process(self):
        conn = self.conn
        out = bytearray()
        while conn is not None:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            kind = type(event)
            if kind is ev.DataChunk:
                if self.incoming is not None:
                    try:
                        self.incoming.feed(event.data)
                    except OSError as e:
                        self._store_failed(e)
                continue
            if kind is ev.ConnectionClosed:
                if out:
                    self.transport.write(out)
                    out = bytearray()
                self.transport.close()
                break
            reply = self._answer(event)
            if reply is None:                     # answered later (commit, TLS, ...)
                break
            out += conn.send(reply)
            self._after(event, reply)
            if self.closing and conn.phase != CLOSED and not conn.in_transaction:
                out += self._shutdown_reply()
            if conn.phase == CLOSED:
                break
            if self.waiting:
                break
        if out and self.transport is not None:
            self.transport.write(out)
        if conn is not None and conn.phase == CLOSED and self.transport is not None:
            self.transport.close()
        if conn is not None and conn.phase not in (DATA, BDAT):
            self.deadline = time.monotonic() + self.w.timeout_command

    def _shutdown_reply(self):
        conn = self.conn
        conn.phase = CLOSED
        return Reply(421, "4.3.2", "%s Shutting down; please try again later"
                     % self.w.hostname).to_bytes()

    def _after(self, event, reply):
        """Bookkeeping once a reply went out."""
        kind = type(event)
        if kind is ev.RcptTo and reply.code < 300:
            self.rcpts.append((event.addr, event.params))
        if self.incoming is not None and not self.conn.in_transaction:
            self.incoming.abandon()
            self.incoming = None
        if not self.conn.in_transaction:
            self._reset()

    def _store_failed(self, e):
        self.w.log.err(self.incoming.qid if self.incoming else None,
                       "SYSERR(%s): collect: cannot write data file: %s" % (self.w.user, e))
        if self.incoming is not None:
            self.incoming.abandon()
            self.incoming = None

    # -- answers ------------------------------------------------------------------------------
    def _answer(self, event):
        kind = type(event)
        w = self.w
        if kind is ev.Greeting:
            verdict = w.policy.check_connect(self.client)
            if verdict.discard:
                self.discard_all = True
            reply = verdict.reply
            if reply is not None and reply.code >= 400:
                self._log_reject("check_relay", self.client.name or "[%s]" % self.client.addr,
                                 reply)
                if reply.code >= 500:       # RFC 5321 3.1: 554 greeting, then only QUIT
                    reply = Reply(554, reply.enhanced, reply.text)
                return reply
            if self.milter is not None:
                return self._later(self.milter.connect(), self._milter_greeting, event)
            return w.greeting()
        if kind is ev.Helo:
            self.client.helo = event.name
            verdict = w.policy.check_helo(self.client, event.name)
            if verdict.reply is not None:
                return verdict.reply
            if self.milter is not None:
                return self._later(self.milter.helo(event.name),
                                   lambda v: self._milter_refusal(v) or self._helo_ok(event),
                                   event)
            return self._helo_ok(event)
        if kind is ev.MailFrom:
            return self._mail(event)
        if kind is ev.RcptTo:
            return self._rcpt(event)
        if kind is ev.DataStart:
            if self.milter is not None and not self.discard:
                return self._later(self.milter.data(), self._milter_data, event)
            self.last_block = 0
            self.deadline = time.monotonic() + w.timeout_datablock
            return R.start_data()
        if kind is ev.BdatChunk:
            return R.chunk_ok(event.size)
        if kind is ev.MessageComplete:
            return self._end_of_data(event)
        if kind is ev.Rejected:
            self.sasl = None             # a bad or cancelled AUTH response ends the exchange
            if event.unknown is not None and self.milter is not None:
                return self._later(self.milter.unknown(event.unknown),
                                   lambda v: self._milter_refusal(v) or event.reply, event)
            return event.reply
        if kind is ev.Rset:
            if self.milter is not None:
                return self._later(self.milter.abort(), lambda _: R.reset_ok(), event)
            return R.reset_ok()
        if kind is ev.Noop:
            return R.noop_ok()
        if kind is ev.Quit:
            self.closing = True
            if self.milter is not None:
                asyncio.ensure_future(self.milter.quit())
                self.milter = None
            return R.closing(w.hostname)
        if kind is ev.Vrfy:
            return R.vrfy_cannot()
        if kind is ev.Expn:
            return R.expn_refused()
        if kind is ev.Help:
            from .. import __version__
            return R.help_reply(event.topic, "pysendmail %s" % __version__)
        if kind is ev.StartTls:
            return self._starttls()
        if kind is ev.Auth or kind is ev.AuthResponse:
            return self._auth(event)
        return Reply(502, "5.5.1", "Command not implemented")

    def _log_reject(self, ruleset, arg, reply, qid=None):
        from .auth import reject_line
        text = "%d %s%s" % (reply.code, reply.enhanced + " " if reply.enhanced else "",
                            " ".join(reply.lines))
        self.w.log.notice(qid or self.log_id, reject_line(ruleset, arg, self.client.name, self.client.addr,
                                           text))

    def _mail(self, event):
        w = self.w
        sender = event.addr
        verdict = w.policy.check_mail(self.client, sender, event.params)
        if verdict.reply is not None and verdict.reply.code >= 400:
            self._log_reject("check_mail", "<%s>" % sender, verdict.reply)
            return verdict.reply
        try:
            self.incoming = Incoming(w.spool, w.max_headers)
        except (OSError, MTAError) as e:
            w.log.err(None, "SYSERR(%s): cannot create a queue file: %s" % (w.user, e))
            return Reply(452, "4.3.1", "Insufficient system storage")
        self.sender = sender
        self.mail_raw = event.raw
        self.mail_params = event.params
        self.discard = verdict.discard or self.discard_all
        reply = verdict.reply or R.sender_ok(event.raw)
        if self.milter is not None and not self.discard:
            return self._later(self.milter.mail(event, self.incoming.qid),
                               lambda v: self._milter_refusal(v) or reply, event)
        return reply

    def _rcpt(self, event):
        w = self.w
        verdict = w.policy.check_rcpt(self.client, self.sender, event.addr, event.params)
        refusal = verdict.reply
        if refusal is not None and refusal.code >= 400:
            self._log_reject("check_rcpt", "<%s>" % event.addr, refusal)
            if self.milter is not None and not self.discard and self.milter.wants_rejected():
                return self._later(self.milter.rcpt(event, refusal), lambda v: refusal, event)
            return refusal
        if verdict.discard:
            self.discard = True
        reply = refusal or R.recipient_ok(event.raw)
        if self.milter is not None and not self.discard:
            return self._later(self.milter.rcpt(event),
                               lambda v: self._milter_refusal(v) or reply, event)
        return reply

    def _facts(self):
        c = self.client
        conn = self.conn
        proto = "ESMTP" if conn.esmtp else "SMTP"
        if conn.esmtp:
            if conn.tls:
                proto += "S"
            if conn.authenticated:
                proto += "A"
        return SessionFacts(self.w.hostname, conn.helo, c.name, c.addr, proto,
                            self.tls_macros, c.auth_type, c.auth_authen, self.w.user)

    def _end_of_data(self, event):
        w = self.w
        inc = self.incoming
        if inc is None:
            return Reply(451, "4.3.0", "Error writing data file")
        facts = self._facts()
        try:
            env = inc.finish(self.sender, self.rcpts, self.mail_params, facts)
        except OSError as e:
            self._store_failed(e)
            return Reply(451, "4.3.0", "Error writing data file")
        if self.discard:
            w.log.info(inc.qid, "discarded")
            inc.abandon()
            self.incoming = None
            return R.accepted(inc.qid)
        checks = w.checks_for(self.listener)
        if checks:
            return self._later(self._run_checks(checks, inc), lambda outcome: self._checked(
                outcome, inc, env, facts, event), event)
        return self._filter_or_commit(inc, env, facts, event)

    def _commit(self, inc, env, facts, event):
        """The tf file written, then the group commit; the reply waits for it."""
        w = self.w
        try:
            tf = inc.write_control(env)
        except Exception as e:
            self._store_failed(e)
            return Reply(451, "4.3.0", "Error writing control file")
        fd, inc.fd = inc.fd, None
        self.incoming = None
        fut = w.committer.submit(inc.qid, fd, tf, held=bool(env.hold_reason))
        self.waiting = True
        fut.add_done_callback(lambda f: self._committed(f, env, facts, event))
        return None

    def _committed(self, fut, env, facts, event):
        w = self.w
        exc = fut.exception()
        if exc is None:
            reply = R.accepted(env.qid)
            w.log_received(env, facts, self.listener.name)
        else:
            w.log.err(env.qid, "SYSERR(%s): queueup: cannot commit: %s" % (w.user, exc))
            reply = Reply(451, "4.3.0", "Error committing the message; please try again later")
        self._reply_late(event, reply)

    def _reply_late(self, event, reply):
        """Send the answer to `event` that waited (the commit, a check, a milter, a
        password hash), then read on; nothing when the client has gone meanwhile."""
        conn = self.conn
        if conn is None or self.transport is None or self.transport.is_closing():
            return
        out = conn.send(reply)
        self._after(event, reply)
        if self.closing and conn.phase != CLOSED and not conn.in_transaction:
            out += self._shutdown_reply()
        self.transport.write(out)
        if conn.phase == CLOSED:
            self.transport.close()
            return
        self._resume()

    def _helo_ok(self, event):
        peer = "%s [%s]" % (self.client.name or event.name, self.client.addr)
        if event.esmtp:
            return R.ehlo_ok(self.w.hostname, peer, self.conn.ehlo_keywords())
        return R.helo_ok(self.w.hostname, peer)

    # -- the sweeper's side ---------------------------------------------------------------------
    def timed_out(self, now):
        """Called by the worker's sweeper; ends a session past its deadline."""
        if self.transport is None or self.waiting or now < self.deadline:
            return False
        w = self.w
        what = "data" if self.conn is not None and self.conn.phase in (DATA, BDAT) else \
            "command"
        w.log.notice(None, "timeout waiting for input from %s during server %s read"
                     % (self.relay_text(), what))
        try:
            self.transport.write(Reply(421, "4.4.2", "%s Timeout waiting for input; closing "
                                       "connection" % w.hostname).to_bytes())
        except Exception:
            pass
        self.closing = True
        if self.conn is not None:
            self.conn.phase = CLOSED
        self.transport.close()
        return True

    def shut_down(self):
        """SIGTERM: an idle session is told 421 now; one in a transaction finishes it first."""
        self.closing = True
        conn = self.conn
        if conn is None or self.transport is None:
            return
        if not self.waiting and not conn.in_transaction and conn.phase not in (DATA, BDAT):
            self.transport.write(self._shutdown_reply())
            self.transport.close()

