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

NEED_DATA = ev.NEED_DATA
DATA_BLOCK = 1024
READ_SIZE = 65536


class SMTPSession(asyncio.Protocol):
    __slots__ = ("w", "listener", "transport", "conn", "client", "deadline", "incoming",
                 "sender", "mail_params", "rcpts", "discard", "waiting", "counted",
                 "sasl", "closing", "paused_writing", "tls_macros", "last_block",
                 "mail_raw", "discard_all", "_log_id", "tls_early")

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
        name = w.names.cached(addr)
        if name is not None and not wait:
            self.client.name = name
            self._process()
            return
        self.waiting = True
        transport.pause_reading()
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
            return w.greeting()
        if kind is ev.Helo:
            self.client.helo = event.name
            verdict = w.policy.check_helo(self.client, event.name)
            if verdict.reply is not None:
                return verdict.reply
            peer = "%s [%s]" % (self.client.name or event.name, self.client.addr)
            if event.esmtp:
                return R.ehlo_ok(w.hostname, peer, self.conn.ehlo_keywords())
            return R.helo_ok(w.hostname, peer)
        if kind is ev.MailFrom:
            return self._mail(event)
        if kind is ev.RcptTo:
            return self._rcpt(event)
        if kind is ev.DataStart:
            self.last_block = 0
            self.deadline = time.monotonic() + w.timeout_datablock
            return R.start_data()
        if kind is ev.BdatChunk:
            return R.chunk_ok(event.size)
        if kind is ev.MessageComplete:
            return self._end_of_data(event)
        if kind is ev.Rejected:
            self.sasl = None             # a bad or cancelled AUTH response ends the exchange
            return event.reply
        if kind is ev.Rset:
            return R.reset_ok()
        if kind is ev.Noop:
            return R.noop_ok()
        if kind is ev.Quit:
            self.closing = True
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
        return verdict.reply or R.sender_ok(event.raw)

    def _rcpt(self, event):
        w = self.w
        verdict = w.policy.check_rcpt(self.client, self.sender, event.addr, event.params)
        if verdict.reply is not None and verdict.reply.code >= 400:
            self._log_reject("check_rcpt", "<%s>" % event.addr, verdict.reply)
            return verdict.reply
        if verdict.discard:
            self.discard = True
        return verdict.reply or R.recipient_ok(event.raw)

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
        try:
            tf = inc.write_control(env)
        except Exception as e:
            self._store_failed(e)
            return Reply(451, "4.3.0", "Error writing control file")
        fd, inc.fd = inc.fd, None
        self.incoming = None
        fut = w.committer.submit(inc.qid, fd, tf)
        self.waiting = True
        self.transport.pause_reading()
        fut.add_done_callback(lambda f: self._committed(f, env, facts))
        return None

    def _committed(self, fut, env, facts):
        w = self.w
        exc = fut.exception()
        if exc is None:
            reply = R.accepted(env.qid)
            w.log_received(env, facts, self.listener.name)
        else:
            w.log.err(env.qid, "SYSERR(%s): queueup: cannot commit: %s" % (w.user, exc))
            reply = Reply(451, "4.3.0", "Error committing the message; please try again later")
        if self.conn is None or self.transport is None or self.transport.is_closing():
            return
        out = self.conn.send(reply)
        self._reset()
        if self.closing:
            out += self._shutdown_reply()
        self.transport.write(out)
        if self.conn.phase == CLOSED:
            self.transport.close()
            return
        self._resume()

    # -- STARTTLS and AUTH ---------------------------------------------------------------------
    def _starttls(self):
        w = self.w
        if w.tls_context is None:
            return Reply(454, "4.3.3", "TLS not available right now")
        out = self.conn.send(R.tls_ready())
        self.transport.write(out)
        self.transport.pause_reading()
        self.waiting = True
        self.tls_early = []
        asyncio.ensure_future(self._handshake())
        return None

    async def _handshake(self):
        w = self.w
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(self.transport, self, w.tls_context,
                                             server_side=True,
                                             ssl_handshake_timeout=w.timeout_starttls)
        except (OSError, ConnectionError, asyncio.TimeoutError, Exception) as e:
            w.log.info(None, "STARTTLS=server, relay=%s, error: accept failed=%s"
                       % (self.relay_text(), type(e).__name__))
            if self.transport is not None:
                self.transport.abort()
            return
        if transport is None:
            return
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        self.tls_macros = w.tls_macros(ssl_object) if ssl_object is not None else {}
        self.client.tls = self.tls_macros
        m = self.tls_macros
        w.log.info(None, "STARTTLS=server, relay=%s, version=%s, verify=%s, cipher=%s, bits=%s"
                   % (self.relay_text(), m.get("tls_version", ""), m.get("verify", "NO"),
                      m.get("cipher", ""), m.get("cipher_bits", "")))
        self.conn.tls_started()
        early, self.tls_early = self.tls_early, None
        for data in early:
            self.conn.receive_data(data)
        self.deadline = time.monotonic() + w.timeout_command
        self._resume()

    def _auth(self, event):
        w = self.w
        auth = w.auth
        addr = self.client.addr
        if type(event) is ev.Auth:
            if auth is None:
                return Reply(504, "5.3.3", "AUTH mechanism not available")
            if not auth.throttle.allowed(addr):
                self.closing = True
                return Reply(421, "4.7.0", "%s Too many AUTH failures; closing connection"
                             % w.hostname)
            self.sasl = auth.exchange(event.mechanism, event.initial)
            step = self.sasl.step(None)
        else:
            if self.sasl is None:
                return Reply(503, "5.5.1", "No AUTH in progress")
            step = self.sasl.step(event.data)
        kind = type(step).__name__
        if kind == "Challenge":
            return step.reply
        sasl, self.sasl = self.sasl, None
        mech = sasl.mechanism
        if kind == "Credentials":
            # Checking a modern hash takes ~0.1 s of CPU: not on the event loop.
            self.waiting = True
            self.transport.pause_reading()
            job = asyncio.get_running_loop().run_in_executor(
                w.auth_executor, auth.check, step.authcid, step.password)
            job.add_done_callback(lambda f: self._auth_checked(f, sasl, step.authcid))
            return None
        auth.throttle.failed(addr)
        w.log.warning(self.log_id, auth.failure_line(mech, getattr(step, "user", None) or "",
                                              self.client.name, addr,
                                              reason=getattr(step, "reason", None),
                                              detail=getattr(step, "detail", None)))
        return step.reply

    def _auth_checked(self, job, sasl, user):
        w = self.w
        auth = w.auth
        addr = self.client.addr
        mech = sasl.mechanism
        exc = job.exception()
        if exc is not None:
            w.log.err("", "AUTH: %s" % (getattr(exc, "message", None) or exc))
            from ..proto.smtp_sasl import temp_failure
            reply = temp_failure()
        else:
            ok = job.result()
            if ok:
                auth.throttle.succeeded(addr)
                self.client.auth_type = mech
                self.client.auth_authen = user
                w.log.info("", auth.success_line(mech, user, self.client.name, addr))
            else:
                auth.throttle.failed(addr)
                w.log.warning(self.log_id, auth.failure_line(mech, user, self.client.name, addr))
            reply = sasl.finish(ok)
        if self.conn is None or self.transport is None or self.transport.is_closing():
            return
        self.transport.write(self.conn.send(reply))
        self._resume()

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


def _b64(data):
    import binascii
    return binascii.b2a_base64(data, newline=False).decode("ascii")
