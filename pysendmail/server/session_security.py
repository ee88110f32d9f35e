"""STARTTLS and AUTH for the daemon's SMTP sessions: the two exchanges that change a
session's security state.

A mixin of `server.session.SMTPSession` (it uses the session's worker `w`, `conn`,
`transport`, `client` and its pause/resume protocol): STARTTLS answers 220 and upgrades
the transport with asyncio's start_tls, keeping whatever the client sent after the
handshake (never what it sent before: CVE-2011-0411) for the core once TLS is up; AUTH
runs the SASL exchange of `server.auth` and checks the password in a thread (a modern
hash costs ~0.1 s of CPU), with the per-address failure throttle.
"""
import asyncio
import time

from ..proto import smtp_events as ev
from ..proto import smtp_reply as R
from ..proto.smtp_reply import Reply


class SecurityExchanges:
    __slots__ = ()

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
            job.add_done_callback(lambda f: self._auth_checked(f, sasl, step.authcid, event))
            return None
        auth.throttle.failed(addr)
        w.log.warning(self.log_id, auth.failure_line(mech, getattr(step, "user", None) or "",
                                              self.client.name, addr,
                                              reason=getattr(step, "reason", None),
                                              detail=getattr(step, "detail", None)))
        return step.reply

    def _auth_checked(self, job, sasl, user, event):
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
        self._reply_late(event, reply)

